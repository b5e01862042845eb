"""One sequencer and no rollback, against real ``tlog serve`` processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.note import Ed25519Verifier
from tests.pgsupport import OldCopy, empty_store
from tests.support import checkpoints_by_size, serve_args, start_server, tlog_cli
from tlog.storage import Storage

from .conftest import ORIGIN
from .writers import Writers

pytestmark = pytest.mark.slow

LOCK_FILE_ONLY = pytest.mark.lmdb_only(
    "the data directory's lock file (tests/server/test_pg_frontends.py runs two frontends "
    "on PostgreSQL)"
)


@LOCK_FILE_ONLY
def test_second_server_is_refused_and_says_who_holds_the_store(
    tmp_path: Path, database: str | None
) -> None:
    data = tmp_path / "d"
    srv = start_server(data, database=database)
    try:
        r = tlog_cli("serve", "--data", str(data), "--port", "1", "--origin", ORIGIN)
        assert r.returncode == 1
        assert f"is in use by PID {srv.proc.pid} on host" in r.stderr
        assert "Stop the other process first" in r.stderr
        # The refused process wrote nothing, and the first one still serves.
        assert httpx.get(srv.url + "/checkpoint").status_code == 200
    finally:
        srv.stop()


@LOCK_FILE_ONLY
def test_two_servers_with_the_lock_bypassed_never_fork_nor_lose(
    tmp_path: Path, database: str | None
) -> None:
    """A rolling deploy gone wrong, and the lock file deleted by hand: two sequencers on one
    store. The compare-and-swap commit alone keeps one history: never two roots signed at a
    size, never an acknowledged entry missing."""
    data = tmp_path / "d"
    a = start_server(data, database=database)
    (data / "db" / "tlog.lock").unlink()  # the bypass: B locks a new file
    (data / "scim-master.key.lock").unlink()  # and the key file's lock (tlog/scim/keys.py)
    b = start_server(data, database=database)
    token = (data / "demo-submitter.token").read_text().strip()
    verifier = Ed25519Verifier.from_vkey(httpx.get(a.url + "/v1/log").json()["vkey"])
    w = Writers(token)
    try:
        h = {"Authorization": f"Bearer {token}"}
        # Deterministic first: B built on size 0, A moves the store to 1, B's commit fails.
        assert httpx.post(a.url + "/v1/entries", content=b"x", headers=h).json()["index"] == 0
        r = httpx.post(b.url + "/v1/entries", content=b"y", headers=h)
        assert r.status_code == 503
        assert "tree size is 1, this writer built on 0" in r.json()["error"]
        r = httpx.post(b.url + "/v1/entries", content=b"y", headers=h)  # B reloaded
        assert r.status_code == 200 and r.json()["index"] == 1
        w.acked.extend([(0, b"x"), (1, b"y")])
        w.run([a.url, b.url], 60, join=120)
    finally:
        a.stop()
        b.stop()
    assert set(w.statuses) <= {200, 503}, w.statuses  # a lost race is a refusal, never a 500
    assert w.statuses.count(200) > 20
    by_size = checkpoints_by_size(w.notes, verifier, ORIGIN)
    st = Storage(data / "db", readonly=True)
    try:
        with st.read() as rv:
            for index, entry in w.acked:
                assert rv.entry(index) == entry
            for size, cp in by_size.items():
                stored = rv.checkpoint(size)
                assert stored is not None
                got, _ = open_checkpoint(stored, [verifier], origin=ORIGIN)
                assert got.root_hash == cp.root_hash
    finally:
        st.close()
    fs = tlog_cli("fsck", "--data", str(data))
    assert fs.returncode == 0, fs.stdout + fs.stderr


def test_restored_backup_is_refused_by_serve(
    tmp_path: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    request: pytest.FixtureRequest,
) -> None:
    """The documented backup (LMDB: a live copy of the store, as mdb_copy makes; PostgreSQL:
    a pg_dump taken while serving, restored with pg_restore) put back after the log grew:
    serve exits non-zero and says what happened and what to do. Then the store emptied (a
    0-byte data.mdb; a schema restored from nothing)."""
    data = tmp_path / "d"
    srv = start_server(data, database=database)
    token = (data / "demo-submitter.token").read_text().strip()
    h = {"Authorization": f"Bearer {token}"}
    backup = old_copy("backup")
    try:
        assert httpx.post(srv.url + "/v1/entries", content=b"one", headers=h).status_code == 200
        backup.take_from(data)  # while the server runs
        for e in (b"two", b"three"):
            assert httpx.post(srv.url + "/v1/entries", content=e, headers=h).status_code == 200
    finally:
        srv.stop()
    backup.restore(data)
    serve = ("serve", "--data", str(data), *serve_args(database), "--port", "1")
    r = tlog_cli(*serve, "--origin", ORIGIN)
    assert r.returncode == 1
    assert "the store is behind the log: it ends at tree size 1" in r.stderr
    assert "already signed and published tree size 3" in r.stderr
    assert "tlog recover --from" in r.stderr
    assert "Traceback" not in r.stderr
    says = empty_store(data, database, lambda: request.getfixturevalue("pg_cluster"))
    r = tlog_cli(*serve, "--origin", ORIGIN)
    assert r.returncode == 1 and says in r.stderr
