"""Evidence recorded while a push is between its checks and its commit freezes it too.

The witness checked for split-view evidence once, before verifying a push, and committed
without looking again: evidence recorded in between (by gossip, polling, or a concurrent
conflicting push, in another thread or process on the same state) did not stop that push
from being cosigned. Now the compare-and-swap refuses when the origin has evidence, in the
same transaction, and the push gets 422 like any other after the freeze.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.witness.core import Frozen
from tests.witness.helpers import FakeLog, events, make_witness


def test_evidence_between_checks_and_commit_is_honoured(tmp_path: Path) -> None:
    log = FakeLog(events(20))
    db = tmp_path / "w.db"
    other = make_witness(db, [log.witnessed_log()])  # e.g. the monitor, same state
    other.add_checkpoint(log.body(0, 5))
    fired: list[bool] = []

    def clock() -> float:  # called between the checks and the compare-and-swap
        if not fired:
            fired.append(True)
            other.record_evidence(log.origin, "peer w2", "test", "ours\n", "theirs\n", {})
        return 1_700_000_000

    w = make_witness(db, [log.witnessed_log()], clock=clock)
    with pytest.raises(Frozen):
        w.add_checkpoint(log.body(5, 10))
    latest = w.latest(log.origin)
    assert latest is not None and latest.size == 5
