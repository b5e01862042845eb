"""Red team 22: a ``logs/v0`` list entry whose ``qpd`` is a number of thousands of digits
(the list is fetched from a source the witness does not control; 5,000 digits sit well
inside its size bound). ``int()`` refuses more than 4,300 digits with a ValueError, which
``parse_log_list`` (promising a FormatError only for a bad header or framing, every bad
entry skipped) let out: the witness's periodic pull failed its whole round, the lists after
the hostile one never pulled, and ``tlog-witness pull-logs`` died with a traceback. Now such
a ``qpd`` (and one of 2**63 or more, which the state's SQLite INTEGER cannot hold:
an OverflowError alike) is read as one that is no number: left out, the entry kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.witness.loglist import parse_log_list
from client.witness.monitor import Monitor
from tests.witness.helpers import FakeLog, make_witness


@pytest.mark.parametrize("huge", ["9" * 5000, str(1 << 63), "9" * 20])
def test_redteam22_a_qpd_of_thousands_of_digits_is_no_qpd(tmp_path: Path, huge: str) -> None:
    a = FakeLog([], origin="a.example/log", seed=b"\2" * 32)
    b = FakeLog([], origin="b.example/log", seed=b"\3" * 32)
    hostile = f"logs/v0\nvkey {a.signer.vkey()}\nqpd {huge}\n"
    assert [(e.origin, e.qpd) for e in parse_log_list(hostile)] == [("a.example/log", None)]
    (tmp_path / "hostile.txt").write_text(hostile)
    (tmp_path / "good.txt").write_text(f"logs/v0\nvkey {b.signer.vkey()}\nqpd 1440\n")
    w = make_witness(tmp_path / "w.db", [])
    m = Monitor(w, log_lists=[str(tmp_path / "hostile.txt"), str(tmp_path / "good.txt")])
    try:
        report = m.pull_lists_once()  # before: ValueError (the round failed, good.txt unread)
    finally:
        m.close()
    assert report.added == ["a.example/log", "b.example/log"]
    listed = w.store.listed_log("b.example/log")
    assert listed is not None and listed.qpd == 1440
