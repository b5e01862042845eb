"""Red team 31, attack 2 (the witness): the wall clock steps back (an NTP correction, a VM
restored from a snapshot) between two cosignatures. A cosignature's timestamp says when the
witness saw the checkpoint; a newer, larger checkpoint cosigned with an older time than the
one before it would tell a verifier that picks the freshest cosigned checkpoint the wrong
one (and prove the smaller tree fresher than it was). Expected: a cosignature is never
older than this witness's previous cosignature of the same log, whatever the clock says.
Found: it took the clock as it was (a year back); fixed (``Witness.add_checkpoint`` signs
with the later of the clock and its stored cosignature's time)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from client.formats.note import parse_note

from .helpers import FakeClock, FakeLog, events, make_witness

YEAR = 365 * 24 * 3600


def _cosig_time(lines: str) -> int:
    sig = parse_note("x\n\n" + lines).signatures[0]
    return int(struct.unpack(">Q", sig.raw[:8])[0])


def test_a_cosignature_after_the_clock_stepped_back_is_not_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = FakeLog(events(50))
    clock = FakeClock()
    w = make_witness(tmp_path / "state.db", [log.witnessed_log()], clock=clock)
    first = _cosig_time(w.add_checkpoint(log.body(0, 20)))
    assert first == int(clock.now)
    clock.now -= YEAR  # the clock steps back a year
    with caplog.at_level(logging.ERROR, logger="client.witness"):
        second = _cosig_time(w.add_checkpoint(log.body(20, 50)))
    assert second >= first, (first, second)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("behind this witness's previous cosignature" in m for m in said), said
    clock.now += 2 * YEAR  # and later forward again: the clock's time is used once ahead
    log2 = FakeLog(events(60))
    third = _cosig_time(w.add_checkpoint(log2.body(50, 60)))
    assert third == int(clock.now), (first, third)
