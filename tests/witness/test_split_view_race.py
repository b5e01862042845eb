"""Two frontends of a forked log push two checkpoints of one size at the same moment, each
with a valid proof from the witness's size: exactly one is cosigned, the other is refused
with 422 and recorded as split-view evidence, and the origin is frozen. Through two
``Witness`` objects on one state database (two processes of one witness)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from client.witness.core import AddCheckpointError, Witness
from tests.witness.helpers import FakeLog, events, make_witness


def _status(w: Witness, body: bytes) -> int:
    try:
        w.add_checkpoint(body)
    except AddCheckpointError as exc:
        return exc.status
    return 200


@pytest.mark.parametrize("round_", range(6))
def test_same_size_forks_pushed_at_once_are_never_both_cosigned(
    tmp_path: Path, round_: int
) -> None:
    a = FakeLog(events(20))
    b = FakeLog([*events(10), *events(10, f"fork{round_}-")])
    ws = [make_witness(tmp_path / "w.db", [a.witnessed_log()]) for _ in range(2)]
    ws[0].add_checkpoint(a.body(0, 10))  # both branches extend size 10
    bodies = [a.body(10, 20), b.body(10, 20)]
    barrier = threading.Barrier(2)
    status: dict[int, int] = {}

    def push(i: int) -> None:
        barrier.wait()
        status[i] = _status(ws[i], bodies[i])

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(status.values()) == [200, 422], status
    won = 0 if status[0] == 200 else 1
    latest = ws[0].latest(a.origin)
    assert latest is not None and latest.root_hash == (a, b)[won].root(20)
    (ev,) = ws[1].evidence()
    assert "different root" in ev.reason
    assert _status(ws[won], bodies[won]) == 422  # frozen: not even the winner again
    for w in ws:
        w.store.close()
