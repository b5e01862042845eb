"""One SCIM master key file belongs to one store (docs/operations.md, "SCIM keys"): the file
is bound to its store (a ``store`` line naming the store id, keys.store_id_of) and
``tlog serve`` holds ``<file>.lock`` for its life (exclusive for an LMDB store, shared by
the frontends of one PostgreSQL store). A second store pointed at a store's file is refused
at start, with nothing written to the file or to the second store's SCIM keys; two copies of
one store served at once on one file are refused too (real processes). What must keep
working: old, unbound files (bound at first use), rotations (the binding is kept), a crash
while binding or while creating the file (real processes killed at that point), and
legacy pairs of stores an older version sealed under one key (refused, with a way out)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from harness.net import free_port
from harness.pg import PgCluster
from tests.support import ORIGIN, ROOT, serve_config, start_server, tlog_cli
from tlog.backend import StorageError, open_backend
from tlog.scim import keys as keys_module
from tlog.scim import store
from tlog.scim.keys import (
    MASTER_KEY_FILE,
    KeyFileLock,
    KeyRing,
    MasterKey,
    load_key_file,
    read_key_file,
    write_key_file_in_place,
)
from tlog.server import build_app

from ..pgsupport import clone_store, url_schema
from .conftest import make_signer, open_harness, user_event

V1_HEADER = "tlog-scim-master-key-v1 "
V2_BODY = 130


def _serve(data: Path, database: str | None = None, **settings: object) -> KeyRing:
    """Open ``data``'s store as ``tlog serve`` does, then close it: its key ring."""
    app, log_, _ = build_app(
        serve_config(data, database, scim_expiry_interval=0, **settings), make_signer()
    )
    ring: KeyRing = app.state.scim.keys
    log_.storage.close()
    return ring


def _scim_check(data: Path, database: str | None = None) -> bytes | None:
    st = open_backend(database, data)
    try:
        with st.read() as rv:
            return rv.aux(store.check_key())
    finally:
        st.close()


def _unbound(path: Path, v1: bool = False) -> None:
    """Rewrite ``path`` as an older version wrote it: the same keys, no store line."""
    cur, nxt = read_key_file(path)
    if v1:
        assert nxt is None
        text = V1_HEADER + base64.b64encode(cur).decode() + "\n"
        path.write_text(text)
    else:
        path.write_bytes(keys_module._key_file_text(cur, nxt))
    assert load_key_file(path).store is None


def test_a_second_store_on_a_bound_key_file_is_refused(
    tmp_path: Path, database: str | None
) -> None:
    """Store A (LMDB) made its key file; store B (LMDB or PostgreSQL), new, is pointed at it:
    refused, naming the file; the file is byte for byte as it was and B holds no SCIM keys.
    Before the binding B took the file's key, and A's next erasure sealed B's keys under a
    key no file holds."""
    a = tmp_path / "a"
    ring = _serve(a)
    path = a / MASTER_KEY_FILE
    assert load_key_file(path).store == ring.store_id
    before = path.read_bytes()
    with pytest.raises(StorageError) as err:
        _serve(tmp_path / "b", database, scim_master_key=path)
    msg = str(err.value)
    assert f"the SCIM master key file {path} belongs to another store" in msg
    assert "this store holds no SCIM keys yet" in msg and "\n" not in msg
    assert path.read_bytes() == before
    assert _scim_check(tmp_path / "b", database) is None
    assert not (a / (MASTER_KEY_FILE + ".new")).exists()
    # A still opens it (nothing of the refusal stuck), and B with a file of its own works.
    assert _serve(a).store_id == ring.store_id
    other = _serve(tmp_path / "b", database, scim_master_key=tmp_path / "b.key")
    assert other.store_id != ring.store_id
    assert load_key_file(tmp_path / "b.key").store == other.store_id


def _serve_cli(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``tlog serve`` expected to refuse at start (a server that starts instead fails the
    test at the timeout)."""
    return tlog_cli(
        "serve",
        "--data",
        str(data),
        "--port",
        str(free_port()),
        "--origin",
        ORIGIN,
        "--log-level",
        "warning",
        *extra,
        timeout=60,
    )


def _one_line_refusal(r: subprocess.CompletedProcess[str], path: Path, what: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("tlog: ") and str(path) in lines[0] and what in lines[0]


@pytest.mark.slow
def test_tlog_serve_refuses_a_second_store_on_one_key_file(tmp_path: Path) -> None:
    """Real processes: while A serves, ``tlog serve`` of a new store B with
    ``--scim-master-key`` A's file exits 1 with one line (the file is in use); once A has
    stopped, the same (the file belongs to another store). Neither writes the file."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    path = a_dir / MASTER_KEY_FILE
    a = start_server(a_dir)
    try:
        before = path.read_bytes()
        r = _serve_cli(b_dir, "--scim-master-key", str(path))
        _one_line_refusal(r, path, "is in use by another store's tlog serve")
        assert f"PID {a.proc.pid} on host" in r.stderr
    finally:
        a.stop()
    r = _serve_cli(b_dir, "--scim-master-key", str(path))
    _one_line_refusal(r, path, "belongs to another store")
    assert path.read_bytes() == before
    assert _scim_check(b_dir) is None


@pytest.mark.slow
def test_two_copies_of_one_store_are_not_served_at_once_on_one_key_file(tmp_path: Path) -> None:
    """``cp -a data data2``: the copy has the same store id, so the binding accepts it on
    the original's file; the lock refuses it while the original serves, and only then. A
    SIGKILLed holder leaves no stale lock (the kernel releases a flock)."""
    a_dir, copy_dir = tmp_path / "data", tmp_path / "data2"
    start_server(a_dir).stop()
    subprocess.run(["cp", "-a", str(a_dir), str(copy_dir)], check=True)
    path = a_dir / MASTER_KEY_FILE
    a = start_server(a_dir)
    try:
        r = _serve_cli(copy_dir, "--scim-master-key", str(path))
        _one_line_refusal(r, path, "is in use by another store's tlog serve")
        assert f"PID {a.proc.pid} on host" in r.stderr
    finally:
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
    # The holder is gone: the copy (the same store) may serve on the file now.
    b = start_server(copy_dir, None, "--scim-master-key", str(path))
    b.stop()
    # Copies of the key file are not refused by the lock (each copy has its own .lock): an
    # LMDB copy with a copy of the file is a store of its own from now on.
    assert load_key_file(copy_dir / MASTER_KEY_FILE).store == load_key_file(path).store


def test_an_lmdb_store_and_a_postgresql_store_do_not_share_a_key_file(
    tmp_path: Path, pg_url: str
) -> None:
    """LMDB holds its file exclusively, PostgreSQL frontends shared: a PostgreSQL store on a
    file an LMDB store is serving with is refused by the lock (and the other way round)."""
    app, log_, _ = build_app(serve_config(tmp_path / "a", scim_expiry_interval=0), make_signer())
    path = tmp_path / "a" / MASTER_KEY_FILE
    try:
        with pytest.raises(StorageError, match="is in use by another store's tlog serve"):
            _serve(tmp_path / "b", pg_url, scim_master_key=path)
    finally:
        log_.storage.close()
    shared = tmp_path / "shared.key"
    app, log_, _ = build_app(
        serve_config(tmp_path / "c", pg_url, scim_expiry_interval=0, scim_master_key=shared),
        make_signer(),
    )
    try:
        # A second frontend of the same database shares it.
        assert _serve(tmp_path / "d", pg_url, scim_master_key=shared).store_id == (
            app.state.scim.keys.store_id
        )
        with pytest.raises(StorageError, match="the frontends of a PostgreSQL store"):
            _serve(tmp_path / "e", scim_master_key=shared)
    finally:
        log_.storage.close()


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
def test_an_older_unbound_key_file_is_bound_at_first_use(tmp_path: Path, v1: bool) -> None:
    """A file of an older version (v1 or v2, no store line) whose key opens the store is
    bound to it at start, keys untouched; then it refuses another store."""
    ring = _serve(tmp_path / "a")
    path = tmp_path / "a" / MASTER_KEY_FILE
    cur, _ = read_key_file(path)
    _unbound(path, v1)
    assert _serve(tmp_path / "a").store_id == ring.store_id
    kf = load_key_file(path)
    assert kf.store == ring.store_id and kf.current == cur and kf.next is None
    with pytest.raises(StorageError, match="belongs to another store"):
        _serve(tmp_path / "b", scim_master_key=path)


def test_an_interrupted_rotation_in_an_unbound_file_is_finished_and_bound(
    tmp_path: Path,
) -> None:
    """An older version's file left with two keys by a crash mid-rotation: start-up keeps
    the live one and binds the file."""
    ring = _serve(tmp_path / "a")
    path = tmp_path / "a" / MASTER_KEY_FILE
    cur, _ = read_key_file(path)
    other = MasterKey.fresh(None).raw()
    for slots in ((cur, other), (other, cur)):
        path.write_bytes(keys_module._key_file_text(*slots))
        assert _serve(tmp_path / "a").store_id == ring.store_id
        kf = load_key_file(path)
        assert (kf.current, kf.next, kf.store) == (cur, None, ring.store_id)


def test_a_rotation_keeps_the_binding(tmp_path: Path) -> None:
    """An erasure rotates the master key: the file holds the new key and is still bound."""
    path = tmp_path / MASTER_KEY_FILE
    with open_harness(tmp_path, scim_expiry_interval=0) as h:
        assert h.post_event(user_event("u-alice")).status_code == 200
        store_id = h.service.keys.store_id
        old = read_key_file(path)[0]
        r = h.request_erasure("u-alice")
        assert r.status_code == 201, r.text
        a = h.client.post(f"/v1/scim/erasures/{r.json()['id']}/approve", headers=h.h("po_b"))
        assert a.status_code == 200, a.text
        kf = load_key_file(path)
        assert kf.current != old and kf.next is None and kf.store == store_id
        assert len(path.read_bytes()) == V2_BODY + 41
    # An older version's write (no store line) mid-life: the next start binds it again.
    write_key_file_in_place(path, kf.current, None)
    assert load_key_file(path).store == store_id  # an in-place write keeps the line
    path.write_bytes(keys_module._key_file_text(kf.current, None))
    assert _serve(tmp_path).store_id == store_id
    assert load_key_file(path).store == store_id


def test_a_torn_bind_leaves_the_keys_and_binds_again(tmp_path: Path) -> None:
    """What a crash while binding can leave (the line's bytes never written: NULs in their
    place, or the old length): the keys read as before, the file is unbound and the next
    start binds it."""
    ring = _serve(tmp_path / "a")
    path = tmp_path / "a" / MASTER_KEY_FILE
    cur, _ = read_key_file(path)
    for v1 in (False, True):
        _unbound(path, v1)
        body = path.read_bytes()
        for torn in (body + b"\0" * 41, body + b"\0" * 7, body, body + b"store   0a\0\0"):
            path.write_bytes(torn)
            kf = load_key_file(path)
            assert kf.current == cur and kf.store is None
            _serve(tmp_path / "a")
            assert load_key_file(path).store == ring.store_id
    # Anything else after the keys is not a key file.
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(StorageError, match="not a tlog SCIM master key file"):
        load_key_file(path)


_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.scim_service.conftest import make_signer
from tests.support import serve_config
from tlog.scim import keys
from tlog.server import build_app

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

{patch}
build_app(serve_config(Path({data!r}), scim_expiry_interval=0), make_signer())
raise SystemExit("not killed")
"""


def _killed_at(data: Path, patch: str) -> None:
    """Run ``build_app`` on ``data`` in a child process that SIGKILLs itself where
    ``patch`` says."""
    code = _CHILD.format(root=str(ROOT), data=str(data), patch=textwrap.dedent(patch))
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr


@pytest.mark.slow
def test_a_process_killed_while_binding(tmp_path: Path) -> None:
    """A real start killed in the middle of binding an old file (its store line half
    written, before the fsync): the next start opens the store and binds the file."""
    ring = _serve(tmp_path)
    path = tmp_path / MASTER_KEY_FILE
    cur, _ = read_key_file(path)
    for cut in (3, 20, 0):
        _unbound(path)
        _killed_at(
            tmp_path,
            f"""
            def bind(path, store):
                kf = keys.load_key_file(path)
                fd = os.open(path, os.O_WRONLY)
                os.pwrite(fd, (b"store   " + store.hex().encode() + b"\\n")[:{cut}], kf.body_len)
                die()
            keys.bind_key_file = bind
            """,
        )
        assert load_key_file(path).current == cur
        assert _serve(tmp_path).store_id == ring.store_id
        assert load_key_file(path).store == ring.store_id


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before the store's keys", "before the rename"])
def test_a_process_killed_while_creating_the_key_file(tmp_path: Path, where: str) -> None:
    """A new store's first start killed while it makes the key file: before the store holds
    keys (the next start makes a new key) or after (the next start finds the key in
    ``<file>.new`` and renames it into place). Either way the next start serves, the file
    is bound and no ``.new`` is left; a key the store's keys are sealed under is never
    lost or replaced."""
    path = tmp_path / MASTER_KEY_FILE
    new = tmp_path / (MASTER_KEY_FILE + ".new")
    if where == "before the rename":
        _killed_at(tmp_path, "keys.rename_durably = die")
        assert not path.exists() and new.exists()
        assert _scim_check(tmp_path) is not None
        pending = load_key_file(new).current
    else:
        _killed_at(tmp_path, "keys.KeyRing.__init__ = die")
        assert not path.exists() and new.exists()
        assert _scim_check(tmp_path) is None
        pending = None
    ring = _serve(tmp_path)
    kf = load_key_file(path)
    assert kf.store == ring.store_id and not new.exists()
    if pending is not None:
        assert kf.current == pending
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_missing_file_is_not_replaced_by_a_stale_new_one(tmp_path: Path) -> None:
    """The store holds keys, its key file is gone, and ``<file>.new`` holds a key that does
    not open them: refused as before (restore the file), nothing renamed."""
    _serve(tmp_path)
    path = tmp_path / MASTER_KEY_FILE
    new = tmp_path / (MASTER_KEY_FILE + ".new")
    path.rename(tmp_path / "saved.key")
    MasterKey.create(new)
    with pytest.raises(StorageError, match="is missing but the store holds SCIM keys"):
        _serve(tmp_path)
    assert not path.exists() and new.exists()
    (tmp_path / "saved.key").rename(path)
    _serve(tmp_path)


def test_two_stores_an_older_version_sealed_under_one_key(tmp_path: Path) -> None:
    """An older version let store B take store A's file: both are sealed under one key.
    Once A's file is bound to A, B is refused (the message says how this came about and
    what to do); B with a copy of the file without its store line serves, and that copy
    is bound to B."""
    ring_a = _serve(tmp_path / "a")
    path = tmp_path / "a" / MASTER_KEY_FILE
    cur, _ = read_key_file(path)
    b_dir = tmp_path / "b"
    _, log_, _ = build_app(serve_config(b_dir), make_signer(), scim=False)  # B's log alone
    try:
        KeyRing(log_.storage, MasterKey(cur, None))  # B's SCIM keys, under A's key
    finally:
        log_.storage.close()
    with pytest.raises(StorageError) as err:
        _serve(b_dir, scim_master_key=path)
    assert "older version created both stores on it" in str(err.value)
    assert load_key_file(path).store == ring_a.store_id
    copy = tmp_path / "b.key"
    text = path.read_text().splitlines(keepends=True)
    assert text[-1].startswith("store   ")
    copy.write_text("".join(text[:-1]))
    copy.chmod(0o600)
    ring_b = _serve(b_dir, scim_master_key=copy)
    assert ring_b.store_id != ring_a.store_id and load_key_file(copy).store == ring_b.store_id


def test_a_restored_backup_pair_opens(tmp_path: Path) -> None:
    """``tlog backup`` and a copy of the key file of the same moment, served in a scratch
    directory: the same store id, bound, opens."""
    data = tmp_path / "data"
    ring = _serve(data)
    r = tlog_cli("backup", "--data", str(data), str(tmp_path / "bk"))
    assert r.returncode == 0, r.stderr
    scratch = tmp_path / "scratch"
    (scratch / "db").mkdir(parents=True, mode=0o700)
    shutil.copy2(tmp_path / "bk" / "data.mdb", scratch / "db" / "data.mdb")
    for name in ("log.key", MASTER_KEY_FILE):
        if (data / name).exists():
            shutil.copy2(data / name, scratch / name)
    os.chmod(scratch / MASTER_KEY_FILE, 0o600)
    assert _serve(scratch).store_id == ring.store_id


def test_frontends_of_a_new_database_starting_at_once_make_one_key_file(
    tmp_path: Path, pg_url: str
) -> None:
    """Three frontends of one new PostgreSQL database start at once on one key file path
    (no file yet): one file is made, bound to the database's store, and every frontend
    opens the store with it."""
    path = tmp_path / "shared.key"
    rings: list[KeyRing] = []
    errors: list[BaseException] = []
    closers = []
    lock = threading.Lock()

    def start(i: int) -> None:
        try:
            app, log_, _ = build_app(
                serve_config(
                    tmp_path / f"f{i}", pg_url, scim_expiry_interval=0, scim_master_key=path
                ),
                make_signer(),
            )
            with lock:
                rings.append(app.state.scim.keys)
                closers.append(log_.storage.close)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        assert len(rings) == 3
        kf = load_key_file(path)
        assert {r.store_id for r in rings} == {kf.store}
        assert {r.master.raw() for r in rings} == {kf.current}
        assert not path.with_name(path.name + ".new").exists()
    finally:
        for close in closers:
            close()


@pytest.mark.slow
def test_a_store_rebuilt_empty_by_recover_refuses_the_old_key_file(tmp_path: Path) -> None:
    """``tlog recover`` into an emptied store restores the log but no SCIM records: the key
    file belongs to the store it replaced. recover says so; ``tlog serve`` refuses the file
    (one line); moved aside, a new one is made and the store serves."""
    data = tmp_path / "data"
    a = start_server(data)
    try:
        token = (data / "demo-submitter.token").read_text().strip()
        r = httpx.post(
            a.url + "/v1/entries", content=b"x", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200
    finally:
        a.stop()
    shutil.copytree(data / "db", tmp_path / "copy")
    (data / "db" / "data.mdb").write_bytes(b"")
    rec = tlog_cli("recover", "--data", str(data), "--from", str(tmp_path / "copy"))
    assert rec.returncode == 0, rec.stderr
    path = data / MASTER_KEY_FILE
    assert f"tlog serve refuses {path}" in rec.stdout
    r2 = _serve_cli(data)
    _one_line_refusal(r2, path, "this store holds no SCIM keys yet")
    path.rename(tmp_path / "old-store.key")
    start_server(data).stop()
    assert load_key_file(path).store != load_key_file(tmp_path / "old-store.key").store


def test_two_copies_of_one_postgresql_store_are_not_served_at_once_on_one_key_file(
    tmp_path: Path, pg_url: str, pg_cluster: PgCluster
) -> None:
    """A copy of a PostgreSQL store next to it (``tlog migrate`` into another schema: same
    store id, so the key file's binding accepts it) is refused while a frontend of the
    original serves on the file, however many frontends the original has; once they have
    stopped, the copy may serve on it (it is then the store of that file)."""
    shared = tmp_path / "shared.key"
    first = _serve(tmp_path / "a", pg_url, scim_master_key=shared)
    copy = clone_store(pg_url, tmp_path / "a", pg_cluster.new_schema(), tmp_path / "copy")
    _, log_, _ = build_app(
        serve_config(tmp_path / "a", pg_url, scim_expiry_interval=0, scim_master_key=shared),
        make_signer(),
    )
    try:
        # Another frontend of the same database shares the file, as before.
        assert _serve(tmp_path / "a2", pg_url, scim_master_key=shared).store_id == first.store_id
        with pytest.raises(StorageError, match="in use by the frontends of another database") as e:
            _serve(tmp_path / "copy", copy, scim_master_key=shared)
        msg = str(e.value)
        assert url_schema(pg_url) in msg and url_schema(copy) in msg and "\n" not in msg
    finally:
        log_.storage.close()
    assert _serve(tmp_path / "copy", copy, scim_master_key=shared).store_id == first.store_id
    # And the other way round: the copy's frontend now holds it, the original is refused.
    _, log_, _ = build_app(
        serve_config(tmp_path / "copy", copy, scim_expiry_interval=0, scim_master_key=shared),
        make_signer(),
    )
    try:
        with pytest.raises(StorageError, match="in use by the frontends of another database"):
            _serve(tmp_path / "a", pg_url, scim_master_key=shared)
    finally:
        log_.storage.close()


def test_shared_holders_of_one_key_file_serve_one_database(tmp_path: Path) -> None:
    """The lock alone (no database needed): shared holders naming one instance coexist; one
    naming another is refused while any of them holds the file, and not after; the files
    it keeps are 0600 and name the instance, nothing more."""
    key = tmp_path / "k.key"
    a1 = KeyFileLock(key).acquire(False, "postgresql:1/5/db/a")
    a2 = KeyFileLock(key).acquire(False, "postgresql:1/5/db/a")
    with pytest.raises(StorageError, match=r"another database \(postgresql:1/5/db/a; this"):
        KeyFileLock(key).acquire(False, "postgresql:1/5/db/b")
    a1.release()
    with pytest.raises(StorageError, match="another database"):
        KeyFileLock(key).acquire(False, "postgresql:1/5/db/b")
    a2.release()
    b = KeyFileLock(key).acquire(False, "postgresql:1/5/db/b")
    with pytest.raises(StorageError, match=r"another database \(postgresql:1/5/db/b;"):
        KeyFileLock(key).acquire(False, "postgresql:1/5/db/a")
    b.release()
    files = sorted(tmp_path.glob("k.key.lock.db-*"))
    assert len(files) == 2
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert sorted(f.read_text() for f in files) == [
        "postgresql:1/5/db/a\n",
        "postgresql:1/5/db/b\n",
    ]
