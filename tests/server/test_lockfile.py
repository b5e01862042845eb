"""LMDB's lock file on a memory file system by default (tlog.lockfile): one lock file per
store whatever path spelling opened it, shared by every process that opens the store."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.support import serve_config, tlog_cli
from tlog.integrity import DataDirLock, LockHeld
from tlog.lockfile import LockFileInvisible, _fs_type, default_lock_dir, lock_name
from tlog.server import build_app
from tlog.storage import Storage

from .conftest import make_signer

pytestmark = pytest.mark.lmdb_only("LMDB's lock file (lock.mdb) and where it lives")


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_default_is_a_private_directory_on_dev_shm(tmp_path: Path) -> None:
    if not Path("/dev/shm").is_dir() or _fs_type(Path("/dev/shm")) not in ("tmpfs", "ramfs"):
        pytest.skip("needs /dev/shm on a memory file system")
    _, log_, _ = build_app(serve_config(tmp_path / "data"), make_signer(), scim=False)
    link = tmp_path / "data" / "db" / "lock.mdb"
    target = Path(os.readlink(link))
    try:
        assert link.is_symlink()
        assert target.parent == Path("/dev/shm") / f"tlog-{os.getuid()}"
        assert target.parent == default_lock_dir()
        assert target.name == lock_name(tmp_path / "data" / "db")
        assert _mode(target.parent) == 0o700 and _mode(target) == 0o600
        assert target.stat().st_size > 0  # LMDB's lock table lives there
    finally:
        log_.storage.close()
        target.unlink(missing_ok=True)


def test_two_spellings_of_one_store_name_one_lock_file_and_one_server(tmp_path: Path) -> None:
    """Via a symlink the second server sees another path: it is refused all the same, and a
    store command given that spelling follows the same lock file."""
    (tmp_path / "data").mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "data")
    shm = tmp_path / "shm"
    assert lock_name(tmp_path / "data") == lock_name(alias)  # identity, not the path string
    _, log_, tokens = build_app(
        serve_config(tmp_path / "data", lock_dir=shm), make_signer(), scim=False
    )
    try:
        with pytest.raises(LockHeld, match="in use by PID"):
            build_app(serve_config(alias, lock_dir=shm), make_signer(), scim=False)
        with pytest.raises(LockHeld):
            build_app(
                serve_config(alias), make_signer(), scim=False
            )  # nor with the default lock dir
        log_.integrate([b"one", b"two"])
        files = sorted(shm.iterdir())
        assert [f.name for f in files] == [lock_name(tmp_path / "data" / "db")]
        # fsck (another process, on the other spelling) runs on the live store, through the
        # same lock file (no second one appears, none in the store directory).
        fs = tlog_cli("fsck", "--data", str(alias))
        assert fs.returncode == 0, fs.stderr
        assert "2 entries" in fs.stdout
        made = tlog_cli(
            "token", "create", "--role", "submitter", "--tenant", "t", "--data", str(alias)
        )
        assert made.returncode == 0, made.stderr
        assert sorted(shm.iterdir()) == files
        assert (tmp_path / "data" / "db" / "lock.mdb").is_symlink()
        assert tokens.authenticate("Bearer " + made.stdout.strip()).tenant == "t"
    finally:
        log_.storage.close()


def test_lock_dir_recreated_after_a_reboot(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    _, log_, _ = build_app(serve_config(tmp_path / "data", lock_dir=shm), make_signer(), scim=False)
    log_.storage.close()
    shutil.rmtree(shm)  # a reboot empties the tmpfs; the symlink dangles
    s = Storage(tmp_path / "data" / "db", readonly=True)  # e.g. tlog fsck, no server
    try:
        target = Path(os.readlink(tmp_path / "data" / "db" / "lock.mdb"))
        assert target.exists() and _mode(target) == 0o600 and _mode(shm) == 0o700
    finally:
        s.close()


def test_copied_store_gets_its_own_lock_file(tmp_path: Path) -> None:
    """A data directory copied with its symlink would share the original's lock table; the
    copy is re-pointed at a lock file named after its own identity."""
    shm = tmp_path / "shm"
    _, log_, _ = build_app(serve_config(tmp_path / "data", lock_dir=shm), make_signer(), scim=False)
    log_.storage.close()
    shutil.copytree(tmp_path / "data", tmp_path / "copy", symlinks=True)
    db = tmp_path / "copy" / "db"
    assert Path(os.readlink(db / "lock.mdb")).name != lock_name(db)
    Storage(db).close()
    target = Path(os.readlink(db / "lock.mdb"))
    assert target.name == lock_name(db) and target.parent == shm.resolve()
    assert len(list(shm.iterdir())) == 2


def test_invisible_lock_file_of_a_live_server_is_refused(tmp_path: Path) -> None:
    """Held by a server whose lock file this process cannot see (another /dev/shm): opening
    would start a second lock table beside the server's, so it is refused."""
    shm = tmp_path / "shm"
    _, log_, _ = build_app(serve_config(tmp_path / "data", lock_dir=shm), make_signer(), scim=False)
    log_.storage.close()
    db = tmp_path / "data" / "db"
    shutil.rmtree(shm)  # what a process with another /dev/shm sees
    held = DataDirLock(db).acquire()  # the server
    try:
        with pytest.raises(LockFileInvisible, match="not visible to this process"):
            Storage(db, readonly=True)
        assert not shm.exists()
    finally:
        held.release()


def test_no_memory_file_system_falls_back_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shm = tmp_path / "shm"
    _, log_, _ = build_app(serve_config(tmp_path / "data", lock_dir=shm), make_signer(), scim=False)
    log_.storage.close()
    monkeypatch.setattr("tlog.server.default_lock_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger="tlog.server"):
        _, log_, _ = build_app(serve_config(tmp_path / "data"), make_signer(), scim=False)
    try:
        assert "no memory file system" in caplog.text
        lock = tmp_path / "data" / "db" / "lock.mdb"
        assert lock.is_file() and not lock.is_symlink()
    finally:
        log_.storage.close()
