"""Red team 30, attack 4: ``tlog fsck`` of a read-only snapshot of a data directory (a copy
on read-only media, here a read-only bind mount), which has no LMDB lock table it could
write. Before, fsck tried to re-point the copied ``lock.mdb`` link (taking the store's lock
file, created for writing) and died with ``[Errno 30] Read-only file system``.

Expected: the copy is checked (and its damage found) without writing anything; a read-only
view of a store that a live server holds is refused, when this process cannot reach the
server's lock table (another mount namespace: another container), instead of reading the
store without one; where it can reach it, fsck runs beside the server as it always did."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, run_tool, start_server, tlog_cli, token_for

pytestmark = pytest.mark.lmdb_only("LMDB's lock table")


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount --bind, unshare)")
    for tool in ("mount", "umount", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@contextlib.contextmanager
def _read_only_view(src: Path, at: Path) -> Iterator[Path]:
    """``src`` bind-mounted read-only at ``at`` (read-only media as far as any process
    can tell: writes fail with EROFS, root's included)."""
    at.mkdir()
    m = run_tool("mount", "--bind", str(src), str(at))
    if m.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {m.stderr.strip()}")
    try:
        r = run_tool("mount", "-o", "remount,bind,ro", str(at))
        assert r.returncode == 0, r.stderr
        with pytest.raises(OSError, match="Read-only file system"):
            (at / "probe").write_bytes(b"x")
        yield at
    finally:
        run_tool("umount", "-l", str(at))


def _log(tmp_path: Path, n: int, *serve: str) -> tuple[Path, ServerProcess]:
    data = tmp_path / "data"
    srv = start_server(data, None, *serve)
    token = token_for(data, None, "--role", "submitter", "--tenant", "acme")
    for i in range(n):
        r = httpx.post(
            srv.url + "/v1/entries",
            content=f"entry-{i}".encode(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    return data, srv


def _fsck_elsewhere(data: Path, lock_dir: Path) -> subprocess.CompletedProcess[str]:
    """``tlog fsck --data data`` in a mount namespace of its own where ``lock_dir`` is an
    empty tmpfs: another container, which sees the store but not the server's lock table."""
    script = 'mount -t tmpfs none "$1" && shift && exec "$@"'
    wrapper = ["unshare", "-m", "sh", "-c", script, "sh", str(lock_dir)]
    return tlog_cli("fsck", "--data", str(data), wrapper=wrapper)


def test_fsck_checks_a_copy_on_read_only_media(tmp_path: Path) -> None:
    _needs_root()
    data, srv = _log(tmp_path, 7)
    srv.stop()
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(data), str(copy)], check=True)
    assert (copy / "db" / "lock.mdb").is_symlink()  # the original's link, copied as is
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (copy / "db").iterdir())
    with _read_only_view(copy, tmp_path / "ro") as view:
        fs = tlog_cli("fsck", "--data", str(view))
        assert fs.returncode == 0, fs.stdout + fs.stderr
        assert "OK: 7 entries" in fs.stdout, fs.stdout
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (copy / "db").iterdir()) == before

    # Damage in a read-only copy is still found (a truncated data file).
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-a", str(data), str(broken)], check=True)
    mdb = broken / "db" / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)
    with _read_only_view(broken, tmp_path / "ro-broken") as view:
        fs = tlog_cli("fsck", "--data", str(view))
        assert fs.returncode == 2, fs.stdout + fs.stderr
        assert "FAILED" in fs.stdout, fs.stdout


def test_fsck_refuses_a_read_only_view_of_a_live_store_without_its_lock_table(
    tmp_path: Path,
) -> None:
    _needs_root()
    lock_dir = tmp_path / "locks"
    data, srv = _log(tmp_path, 4, "--lock-dir", str(lock_dir))
    try:
        with _read_only_view(data, tmp_path / "ro") as view:
            # Here the server's lock table is reachable: fsck runs beside it, as ever.
            fs = tlog_cli("fsck", "--data", str(view))
            assert fs.returncode == 0, fs.stdout + fs.stderr
            # Another container: the same read-only store, no lock table in sight.
            away = _fsck_elsewhere(view, lock_dir)
            assert away.returncode != 0, away.stdout + away.stderr
            assert "held by a running process" in away.stderr, away.stderr
            assert "OK" not in away.stdout, away.stdout
    finally:
        srv.stop()
    with _read_only_view(data, tmp_path / "ro-stopped") as view:
        away = _fsck_elsewhere(view, lock_dir)  # nobody holds it now: checked
        assert away.returncode == 0, away.stdout + away.stderr
        assert "OK: 4 entries" in away.stdout, away.stdout


def test_fsck_checks_a_copy_it_may_not_write_as_another_user(tmp_path: Path) -> None:
    """A snapshot readable but not writable by the user checking it (here ``nobody``): no
    lock file can be created or re-pointed, the original's lock directory is not this
    user's. Checked, nothing written; with its ``tlog.lock`` unreadable, refused saying so
    (whether a server holds it cannot be told)."""
    _needs_root()
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    data, srv = _log(tmp_path, 5)
    srv.stop()
    # Outside pytest's base directory, which only its owner may enter.
    outside = Path(tempfile.mkdtemp(prefix="redteam30-"))
    os.chmod(outside, 0o755)
    try:
        _as_nobody(data, outside / "copy")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(outside)], check=False)
        shutil.rmtree(outside)


def _as_nobody(data: Path, copy: Path) -> None:
    subprocess.run(["cp", "-a", str(data), str(copy)], check=True)
    subprocess.run(["chmod", "-R", "a+rX,a-w", str(copy)], check=True)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    def fsck() -> subprocess.CompletedProcess[str]:
        return tlog_cli("fsck", "--data", str(copy), wrapper=nobody)

    before = sorted((p.name, p.stat().st_mtime_ns) for p in (copy / "db").iterdir())
    fs = fsck()
    if "Permission denied" in fs.stderr and "tlog" not in fs.stderr.split(":", 1)[0]:
        pytest.skip(f"nobody cannot run this checkout's Python here: {fs.stderr[-300:]}")
    assert fs.returncode == 0, fs.stdout + fs.stderr
    assert "OK: 5 entries" in fs.stdout, fs.stdout
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (copy / "db").iterdir()) == before
    os.chmod(copy / "db" / "tlog.lock", 0o400)  # root's, unreadable to nobody
    fs = fsck()
    assert fs.returncode != 0, fs.stdout + fs.stderr
    assert "cannot tell whether a server holds the store" in fs.stderr, fs.stderr
