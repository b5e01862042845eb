"""The batch commit as the PostgreSQL backend does it: the dedup lookup folded into the
commit (``dedup_on_commit``), the right edge served from memory between batches. The same
behaviour is asserted on LMDB, which looks leaf hashes up before the commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import leaf_hash, verify_inclusion
from tests.pgsupport import open_store
from tlog.backend import CommitConflict
from tlog.log import Log

from .conftest import make_signer


def _root(log_: Log) -> tuple[int, bytes]:
    cp, _ = open_checkpoint(log_.latest.note, [make_signer().verifier])
    return cp.size, cp.root_hash


def test_entries_already_in_the_log_keep_their_index(tmp_path: Path, database: str | None) -> None:
    """A batch mixing stored entries, new ones and repeats: stored ones keep their index,
    each new one gets one index, and the tree holds every new entry exactly once."""
    store = open_store(database, tmp_path)
    log_ = Log(store, make_signer())
    first = log_.integrate([b"a", b"b"])
    assert first.indices == [0, 1]
    r = log_.integrate([b"c", b"a", b"d", b"c", b"b"])
    assert r.indices == [2, 0, 3, 2, 1]
    assert r.duplicates == [False, True, False, True, True]
    size, root = _root(log_)
    assert size == 4
    with store.read() as rv:
        assert rv.tree_size() == 4
        assert rv.entries(0, 10) == [b"a", b"b", b"c", b"d"]
        assert rv.index_of(leaf_hash(b"d")) == 3
    for i, e in enumerate([b"a", b"b", b"c", b"d"]):
        verify_inclusion(i, size, leaf_hash(e), log_.inclusion_proof(i, size), root)
    # Only stored entries: nothing new to sign, the same checkpoint.
    again = log_.integrate([b"d", b"a"])
    assert again.indices == [3, 0]
    assert again.checkpoint == r.checkpoint
    # And the writer goes on from the rebuilt edge.
    assert log_.integrate([b"e"]).indices == [4]
    store.close()


def test_a_stored_entry_in_a_stale_batch_is_a_conflict(
    tmp_path: Path, database: str | None
) -> None:
    """Writer B built on size 0 submits what A already stored: the store moved, so this is
    the compare-and-swap's refusal (reload), not a duplicate to rebuild around."""
    store = open_store(database, tmp_path)
    other = store if database is None else open_store(database, tmp_path)
    a, b = Log(store, make_signer()), Log(other, make_signer())
    a.integrate([b"x0", b"x1"])
    with pytest.raises(CommitConflict, match="tree size is 2, this writer built on 0"):
        b.integrate([b"x1", b"y"])
    with store.read() as rv:
        assert rv.tree_size() == 2
        assert rv.index_of(leaf_hash(b"y")) is None
    r = b.integrate([b"x1", b"y"])  # reloaded: x1 is found where A put it
    assert r.indices == [1, 2]
    assert r.duplicates == [True, False]
    assert _root(b)[0] == 3
    store.close()
    if other is not store:
        other.close()


def test_postgresql_batches_need_no_lookup_and_no_blob_read(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After start-up the writer reads nothing before a commit: no dedup lookup (the
    commit's INSERT is the lookup) and no tile blob (its right edge and the blobs it
    committed are in memory; tiles beyond the tree are known to be empty)."""
    from tlog.pg import PgReadView

    store = open_store(pg_url, tmp_path)
    log_ = Log(store, make_signer())
    log_.integrate([b"warm-%d" % i for i in range(300)])  # past the first full tile

    def refused(*args: object) -> None:
        raise AssertionError("the writer read the store before committing")

    monkeypatch.setattr(PgReadView, "indices_of", refused)
    monkeypatch.setattr(PgReadView, "blob", refused)
    for k in range(4):  # crosses level-0 tile boundaries (256 leaves each)
        r = log_.integrate([b"b%d-%d" % (k, i) for i in range(200)])
        assert r.indices[0] == 300 + 200 * k
    monkeypatch.undo()
    size, root = _root(log_)
    assert size == 1100
    for i in (0, 255, 256, 299, 300, 777, 1099):
        e = b"warm-%d" % i if i < 300 else b"b%d-%d" % ((i - 300) // 200, (i - 300) % 200)
        verify_inclusion(i, size, leaf_hash(e), log_.inclusion_proof(i, size), root)
    # A fresh writer, rebuilt from the store alone, holds the same tree.
    again = Log(store, make_signer())
    assert _root(again) == (size, root)
    assert again.integrate([b"b1-5", b"new"]).indices == [505, 1100]
    store.close()


def test_catch_up_extends_the_edge_with_what_another_writer_committed(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer B adopts A's commits by hashing A's new entries onto its own right edge (no
    reload: no blob read, no remembered-file round), then commits on top of them; the tree
    is the one a fresh writer rebuilds from the store. ``publish=False`` leaves what B hands
    out alone (its next batch's checkpoint covers it)."""
    from tlog.pg import PgReadView

    store, other = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    a, b = Log(store, make_signer()), Log(other, make_signer())
    try:
        a.integrate([b"a-%d" % i for i in range(300)])
        assert b.catch_up() is True  # from 0: crosses a full tile
        assert _root(b) == _root(a)

        def refused(*args: object) -> None:
            raise AssertionError("an incremental catch-up reloaded")

        for k in range(3):  # alternate, as two frontends taking turns do
            a.integrate([b"a%d-%d" % (k, i) for i in range(100 + k)])
            before = b.latest
            monkeypatch.setattr(Log, "reload", refused)
            monkeypatch.setattr(PgReadView, "blob", refused)
            assert b.catch_up(publish=False) is True
            monkeypatch.undo()
            assert b.latest == before  # adopted, not handed out
            r = b.integrate([b"b%d" % k])
            assert r.indices == [a.latest.size]
            a.catch_up()
            assert _root(a) == _root(b)
        assert b.catch_up() is False  # nothing new: one read of the tree size
        fresh = Log(store, make_signer())
        assert _root(fresh) == _root(b)
    finally:
        store.close()
        other.close()


def test_catch_up_reloads_when_the_store_does_not_extend_the_edge(
    tmp_path: Path, pg_url: str
) -> None:
    """The store's newest checkpoint, properly signed, is not the root of B's edge extended
    by the new entries (a forged or forked tree under the log's key): B does not adopt it,
    and the full reload's checks refuse the store, as at start-up."""
    import hashlib

    import psycopg

    from client.formats.checkpoint import Checkpoint
    from client.formats.note import Ed25519Signer, sign_note
    from tlog.backend import StorageError

    from .conftest import ORIGIN

    store, other = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    a, b = Log(store, make_signer()), Log(other, make_signer())
    try:
        a.integrate([b"x", b"y"])
        b.catch_up()
        a.integrate([b"z"])
        forged = sign_note(
            Checkpoint(ORIGIN, 3, hashlib.sha256(b"another tree").digest()).text(),
            [Ed25519Signer(ORIGIN, bytes(range(32)))],
        )
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE tlog_checkpoints SET note = %s WHERE size = 3", (forged.encode(),))
            conn.execute("UPDATE tlog_state SET checkpoint = %s", (forged.encode(),))
        with pytest.raises(StorageError, match="stored tree does not match"):
            b.catch_up()
        assert _root(b)[0] == 2  # nothing of it was handed out
    finally:
        store.close()
        other.close()


def test_a_write_turn_held_elsewhere_is_a_clear_refusal(tmp_path: Path, pg_url: str) -> None:
    """Another session holds this log's write turn (a frontend stuck inside its commit):
    the wait is bounded, the submission is refused at once with the reason (no retry that
    would wait again), and nothing is written. Once the turn is free, the log goes on."""
    import asyncio

    import psycopg

    from tlog.pg import PgStorage
    from tlog.sequencer import Sequencer, SequencerStopped

    store = open_store(pg_url, tmp_path)
    assert isinstance(store, PgStorage)
    store.turn_timeout = 0.3
    seq = Sequencer(
        Log(store, make_signer()), max_batch_entries=100, max_batch_age=0.001, max_backlog=1000
    )
    seq.start()
    key = "hashtextextended(current_schema() || '/tlog write turn', 0)"
    try:
        with psycopg.connect(pg_url, autocommit=True) as holder:
            holder.execute(f"SELECT pg_advisory_lock({key})")
            with pytest.raises(
                SequencerStopped, match=r"held this log.s write turn for over 0\.3 s"
            ):
                asyncio.run(seq.submit([b"blocked"]))
            with store.read() as rv:
                assert rv.tree_size() == 0
        assert asyncio.run(seq.submit([b"free"])).indices == [0]
    finally:
        seq.stop()
        store.close()


def test_a_held_turn_is_the_processs_until_its_last_hold_is_given_back(
    tmp_path: Path, pg_url: str
) -> None:
    """``hold_turn`` takes the write turn for this process: its own ``write_turn`` enters
    at once meanwhile (another thread of the same frontend), another frontend's waits and
    times out, and the turn is free only once every hold is given back (a second call of
    one release gives nothing back twice)."""
    from tlog.backend import TurnTimeout
    from tlog.pg import PgStorage

    mine, other = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    assert isinstance(mine, PgStorage) and isinstance(other, PgStorage)
    other.turn_timeout = 0.3
    try:
        first = mine.hold_turn()
        second = mine.hold_turn()
        with mine.write_turn():
            pass
        first()
        first()  # given back once only: ``second`` still holds the turn
        with pytest.raises(TurnTimeout), other.write_turn():
            pass
        second()
        with other.write_turn():
            pass
        release = other.hold_turn()
        mine.turn_timeout = 0.3
        with pytest.raises(TurnTimeout), mine.write_turn():
            pass
        release()
        with mine.write_turn():
            pass
    finally:
        mine.close()
        other.close()


def test_a_fenced_batch_leaves_the_writer_on_its_base_without_a_reload(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose SCIM records were staged under a fence another frontend has taken is
    refused whole after its compare-and-swap passed: the store is still where the writer
    built, so the writer only rewinds its edge (no full reload, which re-reads and re-checks
    the tree) and its next batch takes the same indices."""
    from tlog.backend import AuxFenced

    store, other = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    log_ = Log(store, make_signer())
    try:
        log_.integrate([b"p-%d" % i for i in range(300)])
        before = _root(log_)
        stale = store.claim_aux_writer()
        other.claim_aux_writer()

        def refused(*args: object) -> None:
            raise AssertionError("the writer reloaded")

        monkeypatch.setattr(Log, "reload", refused)
        with pytest.raises(AuxFenced):
            log_.integrate([b"fenced"], aux=[(b"\xfftest-fenced", b"1")], aux_fence=stale)
        with store.read() as rv:
            assert rv.tree_size() == 300 and rv.aux(b"\xfftest-fenced") is None
        assert _root(log_) == before
        r = log_.integrate([b"next-%d" % i for i in range(3)])
        monkeypatch.undo()
        assert r.indices == [300, 301, 302]
        assert _root(Log(store, make_signer())) == _root(log_)
    finally:
        store.close()
        other.close()


def test_a_write_turn_connection_killed_while_idle_is_replaced(tmp_path: Path, pg_url: str) -> None:
    """The write turn's own connection was ended while idle (a database restart,
    ``pg_terminate_backend``): nothing was locked or written on it, so the next batch takes
    its turn on a new connection instead of failing."""
    import asyncio

    import psycopg

    from tlog.pg import PgStorage
    from tlog.sequencer import Sequencer

    store = open_store(pg_url, tmp_path)
    assert isinstance(store, PgStorage)
    seq = Sequencer(
        Log(store, make_signer()), max_batch_entries=100, max_batch_age=0.001, max_backlog=1000
    )
    seq.start()
    try:
        assert asyncio.run(seq.submit([b"first"])).indices == [0]
        with store.write_turn(), psycopg.connect(pg_url, autocommit=True) as admin:
            key = admin.execute(
                "SELECT hashtextextended(current_schema() || '/tlog write turn', 0)"
            ).fetchone()
            assert key is not None
            rows = [
                pid
                for pid, hi, lo in admin.execute(
                    "SELECT pid, classid::int8, objid::int8 FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted"
                ).fetchall()
                if (hi << 32 | lo) == key[0] & (1 << 64) - 1
            ]
        assert len(rows) == 1  # the turn's session, found by this log's lock it held
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (rows[0],))
        assert asyncio.run(seq.submit([b"after"])).indices == [1]
    finally:
        seq.stop()
        store.close()
