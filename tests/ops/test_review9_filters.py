"""Review 9: the auditor's time filters read back exactly what the commands print.

``iso_ms`` prints a log time (``search``'s lines, ``show``) and its docstring promises that
``parse_when`` reads it back; an auditor pastes a printed time into ``--since``/``--until``.
Reading it through a float (``timestamp() * 1000``) lost a millisecond for about one time in
170, so ``--until <an event's time>`` could leave out the event one millisecond before it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from client.tools.filters import iso_ms, parse_when

_MAX_ISO_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@settings(max_examples=3000)
@given(st.integers(0, _MAX_ISO_MS))
def test_a_printed_time_reads_back_to_the_same_millisecond(ms: int) -> None:
    assert parse_when(iso_ms(ms)) == ms


def test_the_times_a_float_got_wrong() -> None:
    for ms in (1_095_954_883_735, 2_148_931_970_140, 1_086_603_211_949):
        assert parse_when(iso_ms(ms)) == ms
        assert parse_when(iso_ms(ms).replace("Z", "+00:00")) == ms
    # an offset and sub-millisecond digits: the millisecond it falls in
    assert parse_when("2004-09-23T17:54:43.735999+02:00") == 1_095_954_883_735


def test_digits_other_than_ascii_are_no_milliseconds() -> None:
    import pytest

    with pytest.raises(ValueError, match="is not a time"):
        parse_when("²")
