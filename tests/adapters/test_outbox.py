"""The SQLite outbox: durable adds, group commit, idempotency, limits, restart recovery."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from client.adapters.outbox import Outbox, OutboxError, OutboxRecord, Receipt


def rec(i: int, size: int = 10) -> OutboxRecord:
    return OutboxRecord(f"eid-{i:05d}", f"req-{i // 2}", '{"x":"' + "a" * size + '"}')


def receipt(eid: str, index: int) -> Receipt:
    return Receipt(eid=eid, index=index, leaf_hash="AAAA", tree_size=index + 1, checkpoint="cp\n")


def test_add_is_durable_and_ordered(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob.put([rec(i) for i in range(5)])
    assert [p.eid for p in ob.pending()] == [f"eid-{i:05d}" for i in range(5)]
    # WAL with synchronous=FULL on the writer connection.
    conn = sqlite3.connect(tmp_path / "o.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    for f in ("o.sqlite", "o.sqlite-wal"):  # plaintext events: owner only
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o600
    ob.close()
    # A new process (a new Outbox on the same file) sees everything that was acknowledged.
    ob2 = Outbox(tmp_path / "o.sqlite")
    assert ob2.counts() == {"pending": 5, "delivered": 0, "rejected": 0}
    ob2.close()


def test_same_eid_twice_is_one_row(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put([rec(1)])
        ob.put([rec(1), rec(2)])
        assert [p.eid for p in ob.pending()] == ["eid-00001", "eid-00002"]


def test_group_commit_from_many_threads(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:

        def work(t: int) -> None:
            for i in range(50):
                ob.put([rec(t * 1000 + i)])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ob.counts()["pending"] == 400
        assert len({p.eid for p in ob.pending(1000)}) == 400


def test_delivered_and_rejected_leave_the_queue(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", keep_delivered=0) as ob:
        ob.put([rec(i) for i in range(4)])
        ob.mark_delivered([receipt("eid-00000", 7), receipt("eid-00001", 8)]).result()
        ob.note_failure(["eid-00002"], "log answered 503").result()
        ob.note_failure(["eid-00003"], "malformed", reject=True).result()
        assert [p.eid for p in ob.pending()] == ["eid-00002"]
        assert ob.pending()[0].attempts == 1
        assert ob.counts() == {"pending": 1, "delivered": 2, "rejected": 1}
        assert ob.receipt("eid-00001") == receipt("eid-00001", 8)
        assert ob.receipt("eid-00002") is None
        assert ob.events_for_request("req-0") == [("eid-00000", 1), ("eid-00001", 1)]
        # A late delivery of a rejected event does not resurrect or change it.
        ob.note_failure(["eid-00003"], "again").result()
        assert ob.counts()["rejected"] == 1
        assert ob.prune().result() == 2
        assert ob.counts() == {"pending": 1, "delivered": 0, "rejected": 1}


def test_pending_respects_byte_budget(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put([rec(i, size=1000) for i in range(10)])
        # 3 events fit, but the third's write (req-1: events 2 and 3) is not cut: it goes
        # whole into the next batch (intent19)
        got = ob.pending(limit=1000, max_bytes=3500)
        assert [p.eid for p in got] == ["eid-00000", "eid-00001"]
        assert len(ob.pending(limit=1000, max_bytes=4500)) == 4
        assert len(ob.pending(limit=3)) == 2  # the count limit alike
        # always at least one: a write alone over the limits is cut
        assert len(ob.pending(limit=1000, max_bytes=10)) == 1
        assert len(ob.pending(limit=1)) == 1


def test_full_outbox_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024, keep_delivered=0) as ob:
        n = 0
        with pytest.raises(OutboxError):
            for n in range(1000):
                ob.put([rec(n, size=4000)])
        assert 5 < n < 100
        # What was acknowledged is there; the failed add is not.
        assert ob.counts()["pending"] == n
        with pytest.raises(OutboxError):
            ob.probe().result()
        # Delivering and pruning makes room again.
        ob.mark_delivered([receipt(p.eid, i) for i, p in enumerate(ob.pending())]).result()
        ob.prune().result()
        ob.probe().result()
        ob.put([rec(5000, size=4000)])


def test_closed_outbox_refuses(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob.close()
    with pytest.raises(OutboxError):
        ob.put([rec(1)])
    ob.close()  # idempotent


# --- adds from an event loop (the middleware's path) -------------------------------------


def _committed(path: Path) -> set[str]:
    """The eids another connection sees: what is committed, not what is queued."""
    conn = sqlite3.connect(path)
    try:
        return {str(r[0]) for r in conn.execute("SELECT eid FROM events")}
    finally:
        conn.close()


def test_adds_of_one_loop_iteration_are_one_hand_over_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as ob:
        puts: list[object] = []
        real_hand_over = ob._hand_over

        def counting_hand_over(group: Any) -> None:
            puts.append(group)
            real_hand_over(group)

        ob._hand_over = counting_hand_over  # type: ignore[method-assign]

        async def add(i: int) -> set[str]:
            await ob.add_async([rec(i), rec(i + 100)])
            return _committed(path)  # read as soon as the add returned

        async def burst() -> list[set[str]]:
            return await asyncio.gather(*(add(i) for i in range(20)))

        seen = asyncio.run(burst())
        assert len(puts) == 1  # 20 concurrent adds: one hand-over to the writer thread
        for i, committed in enumerate(seen):  # each add returned only once committed
            assert {f"eid-{i:05d}", f"eid-{i + 100:05d}"} <= committed
        assert ob.counts()["pending"] == 40


def test_a_refused_add_in_a_loop_group_fails_alone(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=16 * 1024) as ob:

        async def burst() -> list[BaseException | None]:
            adds = [ob.add_async([rec(i, size=1000)]) for i in range(3)]
            adds.insert(1, ob.add_async([rec(99, size=20_000)]))  # over the quota alone
            return await asyncio.gather(*adds, return_exceptions=True)

        got = asyncio.run(burst())
        assert [type(g) for g in got] == [type(None), OutboxError, type(None), type(None)]
        assert {p.eid for p in ob.pending()} == {"eid-00000", "eid-00001", "eid-00002"}


def test_a_loop_add_never_succeeds_without_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Outbox(tmp_path / "o.sqlite") as ob:

        def broken(*_: object) -> None:
            raise RuntimeError("writer bug")

        monkeypatch.setattr(ob, "_commit_live", broken)

        async def burst() -> list[BaseException | None]:
            return await asyncio.gather(
                *(ob.add_async([rec(i)]) for i in range(3)), return_exceptions=True
            )

        got = asyncio.run(burst())
        assert all(isinstance(g, OutboxError) for g in got)
        monkeypatch.undo()
        asyncio.run(ob.add_async([rec(7)]))  # the writer thread survived
        assert [p.eid for p in ob.pending()] == ["eid-00007"]


def test_closed_outbox_refuses_loop_adds(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob.close()
    with pytest.raises(OutboxError):
        asyncio.run(ob.add_async([rec(1)]))
