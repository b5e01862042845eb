"""Red team 19: the outbox's marks committed with ``synchronous = NORMAL`` (no fsync), the
adds with FULL. Against the promise: nothing acknowledged is lost, a mark lost only resends.

* an add that shares its group with marks, right after a marks-only group (the writer's
  connection still NORMAL), is fsynced (``strace``): the group is FULL;
* the disk filling up (a real 1 MiB tmpfs) under interleaved adds and marks: every add
  acknowledged is found after a restart, every event marked is one that was added, and
  once space is back the adds are fsynced and acknowledged again;
* the process killed right after marks and adds: every acknowledged add and every mark is
  there (NORMAL survives the process's crash; only a machine crash takes marks back, the
  crash-cut test of ``test_outbox_marks_unsynced.py``).

Each held: kept as guards of that promise."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxError, OutboxRecord, Receipt

from .helpers import put_until_full, said_then_killed, strace_syncs, tmpfs


def _rec(i: int, size: int = 10) -> OutboxRecord:
    return OutboxRecord(f"eid-{i:05d}", f"req-{i}", '{"x":"' + "a" * size + '"}')


def _receipt(eid: str, i: int) -> Receipt:
    return Receipt(eid, i, "AA==", i + 1, "cp")


# A marks-only group held open in the writer (its rows a generator waiting on an event),
# a mark and an add queued behind it (one group: the writer takes what is queued), then
# released. Markers on stderr cut the trace into stretches.
_MIXED = textwrap.dedent(
    """
    import os, sys, threading, time
    from pathlib import Path
    from client.adapters.outbox import Outbox, OutboxRecord, Receipt, _MarkJob

    o = Outbox(Path(sys.argv[1]))
    recs = [OutboxRecord(f"e{i}", f"r{i}", "{}") for i in range(4)]
    o.put(recs[:3])
    o.mark_delivered([Receipt("e0", 0, "AA==", 1, "cp")]).result()  # NORMAL from here
    go, inside = threading.Event(), threading.Event()

    def rows():
        inside.set()
        go.wait()
        yield (1, "{}", "e1")

    held = o._submit(_MarkJob(rows()))
    inside.wait()
    mark = o.mark_delivered([Receipt("e2", 2, "AA==", 3, "cp")])
    add = o.add([recs[3]])
    time.sleep(0.2)  # (only so that both are queued: the test holds either way)
    os.write(2, b"=====mixed\\n")
    go.set()
    held.result(); mark.result(); add.result()
    os.write(2, b"=====end\\n")
    assert o.counts() == {"pending": 1, "delivered": 3, "rejected": 0}, o.counts()
    o.close()
    """
)


def test_an_add_grouped_with_marks_after_marks_alone_is_fsynced(tmp_path: Path) -> None:
    syncs = strace_syncs(tmp_path, _MIXED, str(tmp_path / "o.sqlite"))
    assert syncs.get("mixed", 0) >= 1, syncs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "small", lazy=True)


def test_a_full_disk_under_adds_and_marks_loses_no_acknowledged_add(small_disk: Path) -> None:
    path = small_disk / "outbox.sqlite"
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(128 << 10))  # taken away once the disk is full
    ob = Outbox(path)
    acked: list[str] = []
    marked: set[str] = set()

    def then_mark(r: OutboxRecord) -> None:
        acked.append(r.eid)
        if len(acked) % 2:  # every other one delivered at once: a marks-only group
            try:
                ob.mark_delivered([_receipt(r.eid, len(acked))]).result(10)
                marked.add(r.eid)
            except OutboxError:
                pass  # a mark refused: the event stays pending (sent again)

    try:
        refused = put_until_full(ob, (_rec(i, 1500) for i in range(600)), then_mark)
        assert len(acked) > 10 and refused  # the disk did fill up
        # Space back: adds are acknowledged again, after a marks-only group (NORMAL).
        filler.unlink()
        for i in range(3):
            r = _rec(10_000 + i)
            ob.mark_delivered([_receipt(acked[1], 1)]).result(10)
            ob.put([r], timeout=10)
            acked.append(r.eid)
        marked.add(acked[1])
    finally:
        ob.close()
    with Outbox(path) as again:
        pending = {p.eid for p in again.pending(10_000)}
        delivered = {e for e in acked if again.receipt(e) is not None}
    assert set(acked) == pending | delivered  # every acknowledged add is there
    assert delivered <= marked  # a mark only ever for an event marked
    assert not pending & delivered


_KILLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from client.adapters.outbox import Outbox, OutboxRecord, Receipt

    o = Outbox(Path(sys.argv[1]))
    for i in range(30):
        o.put([OutboxRecord(f"e{i:02d}", f"r{i}", "{}")])
        if i % 3 == 0:
            o.mark_delivered([Receipt(f"e{i:02d}", i, "AA==", i + 1, "cp")]).result()
    for i in range(30, 33):
        o.mark_delivered([Receipt(f"e{i - 29:02d}", i, "AA==", i + 1, "cp")]).result()
    print("done", flush=True)
    time.sleep(60)
    """
)


def test_a_process_killed_after_marks_and_adds_keeps_both(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    said = said_then_killed(_KILLED, str(path))
    assert said.strip() == "done", said
    marked = {f"e{i:02d}" for i in range(0, 30, 3)} | {f"e{i:02d}" for i in (1, 2, 3)}
    with Outbox(path) as again:
        assert {p.eid for p in again.pending()} == {f"e{i:02d}" for i in range(30)} - marked
        assert all(again.receipt(e) is not None for e in marked)
