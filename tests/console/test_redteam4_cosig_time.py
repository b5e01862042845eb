"""Red team 4: a witness's cosignature timestamp is the witness's clock, up to 2^63 - 1
seconds (c2sp.org/tlog-cosignature), and the log keeps every cosignature that verifies. The
console's summary turns them into ``cosigned_time`` / ``checkpoint_time`` (ms) for the page,
whose ``new Date(ms).toISOString()`` throws a RangeError beyond 8.64e15 ms (JavaScript's
Date range, about year 275760), and JSON numbers beyond 2^53 lose precision in the browser:
one witness with a clock far ahead (or a hostile one in the policy) breaks the overview.

Such a time is left out of the summary (its witness shows no time)."""

from __future__ import annotations

import pytest

from client.formats.cosignature import MAX_TIMESTAMP, CosignatureSigner
from tlog.ui import _cosig_times

JS_DATE_MAX_MS = 8_640_000_000_000_000


@pytest.mark.parametrize("ts", [MAX_TIMESTAMP, 10**13])
def test_a_witness_clock_far_ahead_gives_the_page_no_time_it_cannot_show(ts: int) -> None:
    w = CosignatureSigner.generate("witness.example/w1")
    line = w.cosign("example.org/log\n1\nAAAA\n", ts).line().encode()
    got = _cosig_times(line)
    assert all(0 <= v <= JS_DATE_MAX_MS for v in got.values()), got


def test_a_witness_clock_in_range_is_kept() -> None:
    w = CosignatureSigner.generate("witness.example/w1")
    line = w.cosign("example.org/log\n1\nAAAA\n", 1_717_200_000).line().encode()
    assert list(_cosig_times(line).values()) == [1_717_200_000_000]
