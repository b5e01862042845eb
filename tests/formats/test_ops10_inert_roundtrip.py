"""Inert text is unambiguous: every text is recovered exactly from its escaped line.

Before, a backslash was printable and left as it was, so a literal backslash followed by
``n`` and a line break both became ``\\n``: two different texts, one line, and a reader
could not tell a forged "escape" from a real control character. The backslash is now
doubled, so every backslash of a line starts an escape; :func:`uninert` (written here, from
the escapes ``one_line`` documents, not from its code) reads the escapes back."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.formats.text import inert, one_line

_ESCAPE = re.compile(r"\\(?:(\\)|([tnr])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def uninert(line: str) -> str:
    """The text ``one_line`` escaped into ``line``. Raises ValueError for a backslash that
    starts no known escape (no line ``one_line`` writes has one)."""
    out: list[str] = []
    pos = 0
    while True:
        i = line.find("\\", pos)
        if i < 0:
            out.append(line[pos:])
            return "".join(out)
        out.append(line[pos:i])
        m = _ESCAPE.match(line, i)
        if m is None:
            raise ValueError(f"a bare backslash at {i} in {line!r}")
        bs, ctl, x, u, big = m.groups()
        if bs:
            out.append("\\")
        elif ctl:
            out.append({"t": "\t", "n": "\n", "r": "\r"}[ctl])
        else:
            out.append(chr(int(x or u or big, 16)))
        pos = m.end()


# Any code point, surrogates included (a str may hold them: surrogateescape'd bytes),
# weighted towards the characters that matter here.
_chars = st.one_of(
    st.characters(codec=None, categories=None),
    st.sampled_from(["\\", "n", "x", "u", "U", "0", "1", "b", "\n", "\r", "\t", "\x1b", "\x9b"]),
    st.sampled_from(["\u202e", "\u2028", "\u2066", "\x7f", "\x85", "\ud800", "\U000f0000"]),
)
_texts = st.text(alphabet=_chars, max_size=60)


@settings(max_examples=2000, deadline=None)
@given(_texts)
def test_every_text_is_recovered_from_its_line(text: str) -> None:
    line = one_line(text)
    assert line.isprintable(), repr(line)
    assert uninert(line) == text


@settings(max_examples=1000, deadline=None)
@given(_texts, _texts)
def test_two_texts_never_give_the_same_line(a: str, b: str) -> None:
    if a != b:
        assert one_line(a) != one_line(b)


@settings(max_examples=1000, deadline=None)
@given(_texts, st.integers(min_value=0, max_value=70))
def test_inert_is_one_line_of_the_text_or_of_its_cut(text: str, limit: int) -> None:
    line = inert(text, limit)
    assert line.isprintable()
    if len(text) <= limit:
        assert uninert(line) == text
    else:
        assert line.endswith("...") and uninert(line[:-3]) == text[:limit]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a\nb", "a\\nb"),
        ("a\\nb", "a\\\\nb"),  # the collision of before: now told apart
        ("\x1b[2J", "\\x1b[2J"),
        ("\\x1b[2J", "\\\\x1b[2J"),
        ("\x9b", "\\x9b"),
        ("\u202e", "\\u202e"),
        ("\U000f0000", "\\U000f0000"),
        ("C:\\dir", "C:\\\\dir"),
        ("plain text, any script: é ü 日本", "plain text, any script: é ü 日本"),
    ],
)
def test_current_escapes_stay_as_they_read(text: str, line: str) -> None:
    assert one_line(text) == line


def test_a_line_with_a_bare_backslash_was_not_written_by_one_line() -> None:
    with pytest.raises(ValueError):
        uninert("a\\qb")
