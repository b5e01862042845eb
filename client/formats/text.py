"""Untrusted text made inert for one line of a log, a message or a terminal.

The one place that decides how text from elsewhere (a peer's or witness's answer, a request
path or header, a configuration value, an exception message from a parser of hostile input)
is shown: :func:`one_line` escapes every character that is not printable, so the text can
neither break the line nor drive a terminal. Used by the log formats
(:mod:`client.runtime.logs`), the network clients' error texts (:mod:`client.net.core`) and
the command-line programs' one-line errors.
"""

from __future__ import annotations

import json

__all__ = ["inert", "json_line", "one_line"]


def one_line(text: str) -> str:
    """``text`` with every character that is not printable shown as its Python escape:
    control characters (C0 such as CR ``\\r``, LF ``\\n``, ESC ``\\x1b``; DEL; C1), format
    characters (bidirectional overrides and isolates U+202A-202E, U+2066-2069, ...), the line
    and paragraph separators U+2028/2029, unassigned and private-use code points, lone
    surrogates. Printable text (spaces, any script) is unchanged, except the backslash, which
    is doubled (``\\\\``): every backslash of the result then starts an escape, so two
    different texts never give the same line (a literal backslash-n and a line break did,
    both ``\\n``) and the text is recovered exactly from its line by reading the escapes
    (``\\\\``, ``\\t``, ``\\n``, ``\\r``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``) back."""
    if text.isprintable() and "\\" not in text:  # the common case, in C
        return text
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def inert(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks a cut), then :func:`one_line`:
    a hostile server's text is one inert line wherever it is printed or logged."""
    cut = one_line(text[:limit])
    return cut + "..." if len(text) > limit else cut


def json_line(line: str) -> str:
    """A ``json.dumps(..., ensure_ascii=False)`` line made inert: its remaining
    non-printable characters (json escapes C0 itself, not DEL, C1, format characters or
    U+2028/2029) written as ``\\uXXXX`` escapes (a surrogate pair beyond the BMP). Outside
    strings a JSON text is printable ASCII, so the decoded value is unchanged."""
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in line)
