"""Untrusted text made inert for one line of a log, a message or a terminal.

The one place that decides how text from elsewhere (a peer's or witness's answer, a request
path or header, a configuration value, an exception message from a parser of hostile input)
is shown: :func:`one_line` escapes every character that is not printable, so the text can
neither break the line nor drive a terminal. Used by the log formats
(:mod:`client.runtime.logs`), the network clients' error texts (:mod:`client.net.core`) and
the command-line programs' one-line errors.
"""

from __future__ import annotations

__all__ = ["inert", "one_line"]


def one_line(text: str) -> str:
    """``text`` with every character that is not printable shown as its Python escape:
    control characters (C0 such as CR ``\\r``, LF ``\\n``, ESC ``\\x1b``; DEL; C1), format
    characters (bidirectional overrides and isolates U+202A-202E, U+2066-2069, ...), the line
    and paragraph separators U+2028/2029, unassigned and private-use code points. Printable
    text (spaces, any script) is unchanged. A backslash is printable and stays as it is."""
    if text.isprintable():  # the common case, in C
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def inert(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks a cut), then :func:`one_line`:
    a hostile server's text is one inert line wherever it is printed or logged."""
    cut = one_line(text[:limit])
    return cut + "..." if len(text) > limit else cut
