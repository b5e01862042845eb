"""One sequencer and no rollback, in process: the data-dir lock, the compare-and-swap commit,
the remembered checkpoint, and the start-up refusals (0-byte, truncated, old backup)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import leaf_hash, verify_consistency
from tests.pgsupport import OldCopy, open_store
from tlog.backend import open_backend
from tlog.integrity import CheckpointFile, DataDirLock, LockHeld, RollbackDetected, preflight
from tlog.log import Log, LogHalted
from tlog.server import build_app
from tlog.storage import CommitConflict, StorageError, u64

from ..support import serve_config
from .conftest import ORIGIN, make_signer


def _log(path: Path, remembered: Path | None = None, database: str | None = None) -> Log:
    """The log in the LMDB store at ``path``, or in ``database``."""
    signer = make_signer()
    cf = None if remembered is None else CheckpointFile(remembered, signer.verifier, ORIGIN)
    store = open_store(database, path)
    if cf is not None:
        store.on_close.append(cf.close)  # as build_app does: closing the store closes it
    return Log(store, signer, cf)


def _grow(log_: Log, n: int, tag: str) -> None:
    for i in range(n):
        log_.integrate([f"{tag}-{i}".encode()])


# -- the lock --------------------------------------------------------------------------------


@pytest.mark.lmdb_only(
    "the data directory's lock file (PostgreSQL serialises writers itself: test_pg_frontends.py)"
)
def test_second_writer_is_refused_with_the_holder(tmp_path: Path, database: str | None) -> None:
    _, log_, _ = build_app(serve_config(tmp_path, database), make_signer(), scim=False)
    try:
        with pytest.raises(LockHeld) as e:
            build_app(serve_config(tmp_path, database), make_signer(), scim=False)
        msg = str(e.value)
        assert f"PID {os.getpid()} on host {socket.gethostname()}" in msg
        assert "Stop the other process first" in msg
    finally:
        log_.storage.close()  # releases the data-directory lock too
    # Released: the next one gets it (a kernel flock never outlives its holder).
    with DataDirLock(tmp_path / "db"):
        pass


# -- compare-and-swap ------------------------------------------------------------------------


def test_stale_writer_commits_nothing_and_catches_up(tmp_path: Path, database: str | None) -> None:
    """Two writers on one store: the one that built on an old state gets CommitConflict,
    writes nothing, reloads, and its next batch extends the other's tree."""
    storage = open_store(database, tmp_path)
    # PostgreSQL: B has its own connections, as another frontend would.
    other = storage if database is None else open_store(database, tmp_path)
    a = Log(storage, make_signer())
    b = Log(other, make_signer())  # same store, same starting state (size 0)
    ra = a.integrate([b"a0", b"a1"])
    with pytest.raises(CommitConflict, match="tree size is 2, this writer built on 0"):
        b.integrate([b"b0"])
    with storage.read() as rv:
        assert rv.tree_size() == 2
        assert rv.index_of(leaf_hash(b"b0")) is None
        assert rv.entry(2) is None
    assert b.latest == ra.checkpoint  # reloaded from the store
    rb = b.integrate([b"b0"])
    assert rb.indices == [2]
    v = make_signer().verifier
    c2, _ = open_checkpoint(ra.checkpoint.note, [v])
    c3, _ = open_checkpoint(rb.checkpoint.note, [v])
    assert (c2.size, c3.size) == (2, 3)
    # The stale writer continued the same tree.
    verify_consistency(2, 3, c2.root_hash, c3.root_hash, b.consistency_proof(2, 3))
    with pytest.raises(CommitConflict):
        a.integrate([b"a2"])  # and now a is the stale one
    assert a.integrate([b"a2"]).indices == [3]
    storage.close()
    other.close()


def test_same_size_other_checkpoint_is_a_conflict(tmp_path: Path, database: str | None) -> None:
    """The compare covers the checkpoint bytes, not only the size."""
    storage = open_store(database, tmp_path)
    a = Log(storage, make_signer())
    a.integrate([b"x"])
    note = a.latest.note
    sig_char = note[-2]
    # What the writer builds on (its head) differs from the store in the signature only.
    a._head = a.latest._replace(note=note[:-2] + ("A" if sig_char != "A" else "B") + "\n")
    with pytest.raises(CommitConflict, match="latest checkpoint is not the one"):
        a.integrate([b"y"])
    with storage.read() as rv:
        assert rv.tree_size() == 1
        assert rv.index_of(leaf_hash(b"y")) is None
    assert a.latest.note == note  # reloaded from the store
    assert a.integrate([b"y"]).indices == [1]
    storage.close()


@pytest.mark.lmdb_only("a flipped bit in an LMDB key")
def test_an_entry_that_cannot_be_stored_is_not_acknowledged(
    tmp_path: Path, database: str | None
) -> None:
    """A flipped bit made the last key of ``entries`` larger than the tree: appending below
    it fails, so the batch is refused (503) instead of acknowledged and lost."""
    app, log_, tokens = build_app(
        serve_config(tmp_path, database, batch_age_ms=0.0), make_signer(), scim=False
    )
    token, _ = tokens.create("submitter", tenant="t1")
    h = {"Authorization": f"Bearer {token}"}
    st = log_.storage
    with TestClient(app) as client:
        for i in range(3):
            assert client.post("/v1/entries", content=b"e%d" % i, headers=h).status_code == 200
        with st.env.begin(write=True) as txn:
            v = txn.pop(u64(2), db=st.db_entries)
            txn.put(u64(2 | 1 << 40), v, db=st.db_entries)
        r = client.post("/v1/entries", content=b"lost?", headers=h)
        assert r.status_code == 503
        assert "nothing of the batch was acknowledged" in r.json()["error"]
        assert "could not all be added" in r.json()["error"]
        with st.read() as rv:
            assert rv.tree_size() == 3
            assert rv.index_of(leaf_hash(b"lost?")) is None
        assert client.get("/checkpoint").text.split("\n")[1] == "3"
    st.close()  # and with it the data-directory lock


# -- the remembered checkpoint and start-up refusals ---------------------------------------


def _remembered(path: Path) -> str | None:
    m = CheckpointFile(path, make_signer().verifier, ORIGIN).read()
    return None if m is None else m.note


def test_remembered_checkpoint_follows_every_batch(tmp_path: Path) -> None:
    mem = tmp_path / "last-checkpoint"
    log_ = _log(tmp_path / "db", mem)
    assert _remembered(mem) == log_.latest.note  # size 0, written at creation
    r = log_.integrate([b"one", b"two"])
    assert _remembered(mem) == r.checkpoint.note
    r = log_.integrate([b"three"])
    assert _remembered(mem) == r.checkpoint.note
    assert mem.stat().st_mode & 0o777 == 0o600
    assert mem.stat().st_size == 8192  # fixed: a write never changes file metadata
    log_.storage.close()


def test_a_torn_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """A crash in the middle of a write damages one slot; the other holds the one before."""
    mem = tmp_path / "last-checkpoint"
    log_ = _log(tmp_path / "db", mem)
    before = log_.integrate([b"a"]).checkpoint.note
    log_.integrate([b"b"])
    raw = bytearray(mem.read_bytes())
    newest = 0 if raw[8:16] > raw[4096 + 8 : 4096 + 16] else 4096
    raw[newest + 100] ^= 0xFF  # the slot being written when the power went
    mem.write_bytes(bytes(raw))
    assert _remembered(mem) == before
    raw[(4096 - newest) + 50] ^= 0xFF  # and the other one too: say so, never guess
    mem.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="is damaged"):
        _remembered(mem)
    log_.storage.close()


def _published_store(
    tmp_path: Path,
    n: int = 5,
    database: str | None = None,
    backup: OldCopy | None = None,
) -> tuple[Path, Path, Path]:
    """A data dir whose store (LMDB in ``<data>/db``, or ``database``) and remembered
    checkpoint are at size n, and a backup taken at size 2 (into ``backup``, or an LMDB copy
    in ``tmp_path/backup``)."""
    data = tmp_path / "data"
    data.mkdir()
    log_ = _log(data / "db", data / "last-checkpoint", database)
    _grow(log_, 2, "e")
    if backup is None and database is None:
        backup = OldCopy(None, None, tmp_path / "backup")
    if backup is not None:
        backup.take(log_.storage)  # mdb_copy, or pg_dump
    for i in range(2, n, 7):
        log_.integrate([f"e-{j}".encode() for j in range(i, min(i + 7, n))])
    log_.storage.close()
    return data, data / "db", tmp_path / "backup" if backup is None else backup.dest


def test_restored_old_backup_is_refused(
    tmp_path: Path, database: str | None, old_copy: Callable[[str], OldCopy]
) -> None:
    """The store put back from a backup taken at size 2 (LMDB: the copied environment;
    PostgreSQL: a pg_dump restored with pg_restore) while the log has published size 5."""
    backup = old_copy("backup")
    data, _, _ = _published_store(tmp_path, 5, database, backup)
    backup.restore(data)
    with pytest.raises(RollbackDetected) as e:
        build_app(serve_config(data, database), make_signer(), scim=False)
    msg = str(e.value)
    assert "ends at tree size 2" in msg and "already signed and published tree size 5" in msg
    assert "tlog recover --from" in msg
    # The refusal wrote nothing: the store is still the backup.
    st = open_backend(database, data, readonly=True)
    with st.read() as rv:
        assert rv.tree_size() == 2
        assert rv.entry(2) is None
    st.close()


@pytest.mark.lmdb_only("an empty data.mdb")
def test_zero_byte_store_is_refused(tmp_path: Path, database: str | None) -> None:
    data, db, _ = _published_store(tmp_path)
    (db / "data.mdb").write_bytes(b"")
    with pytest.raises(RollbackDetected, match=r"data.mdb is empty \(0 bytes\)"):
        build_app(serve_config(data, database), make_signer(), scim=False)
    assert (db / "data.mdb").stat().st_size == 0  # LMDB never got to re-initialise it


@pytest.mark.lmdb_only("an empty data.mdb")
def test_zero_byte_store_is_refused_without_a_remembered_checkpoint(
    tmp_path: Path, database: str | None
) -> None:
    data, db, _ = _published_store(tmp_path)
    (data / "last-checkpoint").unlink()
    (db / "data.mdb").write_bytes(b"")
    with pytest.raises(RollbackDetected, match="empty"):
        build_app(serve_config(data, database), make_signer(), scim=False)


@pytest.mark.lmdb_only("a truncated data.mdb")
def test_truncated_store_is_refused(tmp_path: Path, database: str | None) -> None:
    data, db, _ = _published_store(tmp_path, 300)
    f = db / "data.mdb"
    size = f.stat().st_size
    os.truncate(f, size // 2)
    with pytest.raises(RollbackDetected, match="is truncated"):
        build_app(serve_config(data, database), make_signer(), scim=False)
    with pytest.raises(RollbackDetected):
        preflight(db)


def test_a_store_with_another_history_is_refused(
    tmp_path: Path, database: str | None, new_database: Callable[[], str | None]
) -> None:
    """Same size as remembered, other root: a different store (or a fork) under this key
    (LMDB: another store swapped in under the data directory; PostgreSQL: the frontend
    pointed at another database holding another log)."""
    data, db, _ = _published_store(tmp_path, 3, database)
    other_db = new_database()
    if other_db is None:
        shutil.rmtree(db)
    other = _log(db, database=other_db)
    _grow(other, 3, "other")
    other.storage.close()
    with pytest.raises(RollbackDetected, match="differs from the checkpoint this log signed"):
        build_app(serve_config(data, other_db), make_signer(), scim=False)


def test_store_ahead_of_the_remembered_checkpoint_starts(
    tmp_path: Path, database: str | None
) -> None:
    """A crash between the store's commit and the file update leaves the file one batch
    behind: that is not a rollback, and the file catches up at start."""
    data, db, _ = _published_store(tmp_path, 3, database)
    old = (data / "last-checkpoint").read_bytes()
    log_ = _log(db, database=database)  # no remembered file: as if it died before writing it
    log_.integrate([b"more"])
    log_.storage.close()
    (data / "last-checkpoint").write_bytes(old)
    _, log2, _ = build_app(serve_config(data, database), make_signer(), scim=False)
    assert log2.latest.size == 4
    assert _remembered(data / "last-checkpoint") == log2.latest.note
    log2.storage.close()  # and with it LMDB's data-directory lock


def test_remembered_checkpoint_must_be_signed_by_the_log(
    tmp_path: Path, database: str | None
) -> None:
    data, _, _ = _published_store(tmp_path, 2, database)
    f = data / "last-checkpoint"
    note = _remembered(f)
    assert note is not None
    f.write_text(note.replace("\n2\n", "\n1\n"))  # a hand-edited plain-text note
    with pytest.raises(Exception, match="not a checkpoint signed by this log's key"):
        build_app(serve_config(data, database), make_signer(), scim=False)


def test_halted_log_signs_nothing(tmp_path: Path) -> None:
    log_ = _log(tmp_path)
    log_.integrate([b"a"])
    log_.halt("witness w cosigned tree size 9, but this log is at 1")
    with pytest.raises(LogHalted, match="cosigned tree size 9"):
        log_.integrate([b"b"])
    assert log_.integrate([b"a"]).indices == [0]  # a duplicate needs no signature
    log_.storage.close()
