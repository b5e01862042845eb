"""Durable state: the compare-and-swap under concurrency, and no rollback across restarts."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from client.witness.core import AddCheckpointError, Conflict, Witness
from client.witness.store import WitnessStore
from tests.support import open_fds
from tests.witness.helpers import ORIGIN, FakeLog, events, make_witness


def test_sqlite_settings(tmp_path: Path) -> None:
    store = WitnessStore(tmp_path / "w.db")
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 2  # FULL


def test_close_closes_every_threads_connection(tmp_path: Path) -> None:
    """Each thread keeps its own SQLite connection; close() closes all of them, not the GC."""
    db = tmp_path / "w.db"

    def db_fds() -> int:
        return sum(1 for target in open_fds().values() if target == str(db))

    before = db_fds()
    store = WitnessStore(db)
    threads = [threading.Thread(target=store.all_latest) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert db_fds() - before == 4  # the opening thread's and the three others'
    with store:
        pass
    assert db_fds() == before
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.latest(ORIGIN)
    errors: list[BaseException] = []

    def use() -> None:  # a thread that never used the store cannot open a connection either
        try:
            store.all_latest()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=use)
    t.start()
    t.join(timeout=10)
    assert len(errors) == 1 and "closed" in str(errors[0])
    assert db_fds() == before


def test_store_cas_refuses_stale_expectation_and_rollback(tmp_path: Path) -> None:
    store = WitnessStore(tmp_path / "w.db")
    r1, r2 = b"\x01" * 32, b"\x02" * 32
    assert store.compare_and_swap(ORIGIN, None, 5, r1, "n5")
    assert not store.compare_and_swap(ORIGIN, None, 6, r2, "n6")  # someone got there first
    assert not store.compare_and_swap(ORIGIN, (5, r2), 6, r2, "n6")  # root differs
    with pytest.raises(ValueError):
        store.compare_and_swap(ORIGIN, (5, r1), 4, r2, "n4")
    assert store.compare_and_swap(ORIGIN, (5, r1), 6, r2, "n6")
    latest = store.latest(ORIGIN)
    assert latest is not None and (latest.size, latest.root_hash, latest.note) == (6, r2, "n6")


def test_racing_pushes_of_the_same_old_size_have_one_winner(tmp_path: Path) -> None:
    log = FakeLog(events(64))
    db = tmp_path / "w.db"
    witnesses = [make_witness(db, [log.witnessed_log()]) for _ in range(2)]
    witnesses[0].add_checkpoint(log.body(0, 1))
    n = 12
    bodies = [log.body(1, 2 + i * 4) for i in range(n)]
    barrier = threading.Barrier(n)
    results: list[int] = []
    lock = threading.Lock()

    def push(i: int) -> None:
        barrier.wait()
        try:
            witnesses[i % 2].add_checkpoint(bodies[i])
            s = 200
        except AddCheckpointError as exc:
            s = exc.status
        with lock:
            results.append(s)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 1
    assert results.count(409) == n - 1


def test_concurrent_clients_never_roll_back(tmp_path: Path) -> None:
    """Threads push random sizes (following 409s like a real client) through two Witness
    objects on one database; a watcher checks that the stored size only ever grows."""
    log = FakeLog(events(200))
    db = tmp_path / "w.db"
    witnesses: list[Witness] = [make_witness(db, [log.witnessed_log()]) for _ in range(2)]
    rng = random.Random(1)
    targets = [rng.randrange(1, 201) for _ in range(24)]
    accepted: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    observed: list[int] = []

    def watch() -> None:
        store = WitnessStore(db)
        while not done.is_set():
            latest = store.latest(ORIGIN)
            observed.append(0 if latest is None else latest.size)

    def client(i: int, target: int) -> None:
        w = witnesses[i % 2]
        old = 0
        for _ in range(50):
            try:
                w.add_checkpoint(log.body(old, target))
            except Conflict as exc:
                if exc.size >= target:
                    return  # superseded: the witness is already past us
                old = exc.size
                continue
            with lock:
                accepted.append(target)
            return
        raise AssertionError("client never settled")

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()

    latest = witnesses[0].latest(ORIGIN)
    assert latest is not None and latest.size == max(targets)
    assert observed == sorted(observed), "the stored size went backwards"
    assert max(targets) in accepted


def test_restart_refuses_to_roll_back(tmp_path: Path, log300: FakeLog) -> None:
    db = tmp_path / "w.db"
    w = make_witness(db, [log300.witnessed_log()])
    w.add_checkpoint(log300.body(0, 100))
    w.add_checkpoint(log300.body(100, 300))
    del w

    w2 = make_witness(db, [log300.witnessed_log()])  # "after a restart"
    stored = w2.latest(ORIGIN)
    assert stored is not None and stored.size == 300
    # A smaller checkpoint cannot be presented as progress ...
    with pytest.raises(AddCheckpointError) as info:
        w2.add_checkpoint(log300.body(100, 200))
    assert info.value.status == 409 and info.value.body() == "300\n"
    with pytest.raises(AddCheckpointError) as info:
        w2.add_checkpoint(log300.body(0, 100))
    assert info.value.status == 409
    # ... nor can a fork at or beyond the cosigned size.
    fork = FakeLog([*events(250), *events(60, "evil-")])
    for size in (300, 310):
        with pytest.raises(AddCheckpointError) as info:
            w2.add_checkpoint(fork.body(300, size))
        assert info.value.status == 422
    stored = w2.latest(ORIGIN)
    assert stored is not None and stored.size == 300
    assert stored.root_hash == log300.root(300)


def test_state_changing_between_check_and_commit_is_caught(tmp_path: Path) -> None:
    """Force the interleaving: another writer commits after our checks, before our CAS."""
    log = FakeLog(events(64))
    db = tmp_path / "w.db"
    other = make_witness(db, [log.witnessed_log()])
    other.add_checkpoint(log.body(0, 1))
    fired = []

    def clock() -> float:  # called between the checks and the compare-and-swap
        if not fired:
            fired.append(True)
            other.add_checkpoint(log.body(1, 10))
        return 1_700_000_000

    w = make_witness(db, [log.witnessed_log()], clock=clock)
    with pytest.raises(Conflict) as info:
        w.add_checkpoint(log.body(1, 20))
    assert info.value.size == 10
    latest = w.latest(ORIGIN)
    assert latest is not None and latest.size == 10
    assert latest.note.count("\u2014 ") == 2  # log + the winner's cosignature only
