"""Red team 31, attack 4: a local user and the data directory's files. The standard is that
a long-running program's files are its user's alone (0600, directories 0700) and that its
secrets are the files the operator put there.

* Started with ``umask 000``, ``tlog serve``, ``tlog scim-proxy`` and ``tlog-witness serve``
  make every file 0600 and every directory 0700. Found: LMDB's ``data.mdb`` and the
  witness's SQLite ``state.db`` were 0644 (LMDB and SQLite create files 0644 less the
  umask); fixed by the programs setting umask 0077. (The proxy's were private already.)
* ``tlog serve`` refuses a log key or SCIM master key that is a symbolic link (found: one
  replaced by a link to another file was followed), that has a second name (a hard link
  elsewhere; found: taken), that is group-readable (held), and a data directory owned by
  another user (found: used) or writable by others (found: used); a data directory only
  readable by others is made 0700 with a warning.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ORIGIN,
    free_port,
    start_proxy,
    start_server,
    stop_processes,
    tlog_argv,
)

pytestmark = pytest.mark.slow


def _modes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and directory under ``root`` whose mode is not private (0600, 0700)."""
    loose = {}
    for p in [root, *root.rglob("*")]:
        if p.name in skip or p.is_symlink():
            continue
        mode = p.stat().st_mode
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if mode & 0o777 & ~want or mode & 0o077:
            loose[str(p.relative_to(root))] = oct(mode & 0o777)
    return loose


class _Umask:
    """The test process's umask set to ``mask`` for a ``with`` block (the programs it starts
    inherit it)."""

    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self) -> None:
        self.old = os.umask(self.mask)

    def __exit__(self, *exc: object) -> None:
        os.umask(self.old)


def test_tlog_serve_under_umask_000_makes_only_private_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with _Umask(0):
        srv = start_server(data)
    try:
        assert httpx.get(f"{srv.url}/checkpoint", timeout=30).status_code == 200
        assert _modes(data) == {}  # the store, keys, lock files, while it runs
    finally:
        stop_processes([srv.proc])
    assert _modes(data) == {}


def test_the_proxy_under_umask_000_makes_only_private_files(tmp_path: Path) -> None:
    from tests.adapters.helpers import StandInSP, serve_http

    box = tmp_path / "box"
    box.mkdir(mode=0o700)
    seen: list[tuple[str, str]] = []
    with serve_http(type("SP", (StandInSP,), {"seen": seen})) as url:
        upstream = f"{url}/v2"
        with _Umask(0):
            proc, base = start_proxy(
                tmp_path,
                upstream,
                "http://127.0.0.1:9",
                "t0k",
                "acme",
                "--log-key-tofu",
                "--durable-intents",
                outbox=box / "outbox.sqlite",
            )
        try:
            r = httpx.delete(
                f"{base}/Users/u1",
                headers={"Authorization": "Bearer sp", "X-Request-Id": "r1"},
                timeout=30,
            )
            assert r.status_code == 204, r.text
            assert seen == [("DELETE", "/v2/Users/u1")]
            assert _modes(box) == {}  # the outbox, its WAL and journal, while it runs
        finally:
            stop_processes([proc])
    assert _modes(box) == {}


def test_the_witness_under_umask_000_makes_only_private_files(tmp_path: Path) -> None:
    from client.witness.cli import main
    from tests.witness.helpers import ORIGIN as WORIGIN
    from tests.witness.helpers import FakeLog, events, serve_process, served_url, stop_serving

    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    log = FakeLog(events(5))
    assert main(["keygen", "--name", "w.example/w1", "--key", str(d / "witness.key")]) == 0
    cfg = d / "witness.toml"
    cfg.write_text(
        'name = "w.example/w1"\nkey_file = "witness.key"\nstate_db = "state.db"\n'
        f'listen = "127.0.0.1:0"\n[[log]]\norigin = "{WORIGIN}"\nvkey = "{log.signer.vkey()}"\n'
    )
    cfg.chmod(0o600)
    with _Umask(0):
        proc = serve_process(cfg)
    try:
        served_url(proc)
        assert _modes(d) == {}
    finally:
        stop_serving(proc)
    assert _modes(d) == {}


@pytest.fixture(name="made")
def made_log(tmp_path: Path) -> Iterator[Path]:
    """A data directory a ``tlog serve`` made (and stopped): its key files exist."""
    data = tmp_path / "data"
    srv = start_server(data)
    stop_processes([srv.proc])
    assert (data / "log.key").exists() and (data / "scim-master.key").exists()
    yield data


def _serve_fails(data: Path) -> str:
    """``tlog serve`` on ``data`` must exit at start: its error output."""
    argv = [*tlog_argv("serve"), "--data", str(data), "--port", str(free_port())]
    r = subprocess.run(
        [*argv, "--origin", ORIGIN, "--no-init"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0, (r.returncode, r.stderr[-2000:])
    return r.stderr


@pytest.mark.parametrize("key", ["log.key", "scim-master.key"])
def test_a_key_replaced_by_a_symlink_is_refused(made: Path, tmp_path: Path, key: str) -> None:
    other = tmp_path / f"planted-{key}"
    shutil.copyfile(made / key, other)  # the same key, elsewhere: still a planted link
    other.chmod(0o600)
    (made / key).unlink()
    (made / key).symlink_to(other)
    err = _serve_fails(made)
    assert "symbolic link" in err, err


@pytest.mark.parametrize("key", ["log.key", "scim-master.key"])
def test_a_key_with_a_hard_link_elsewhere_is_refused(made: Path, tmp_path: Path, key: str) -> None:
    os.link(made / key, tmp_path / f"copy-of-{key}")
    err = _serve_fails(made)
    assert "2 names" in err, err


@pytest.mark.parametrize("key", ["log.key", "scim-master.key"])
def test_a_group_readable_key_is_refused(made: Path, key: str) -> None:
    (made / key).chmod(0o640)
    err = _serve_fails(made)
    assert "accessible by group or others" in err, err


def test_a_data_directory_writable_by_others_is_refused(made: Path) -> None:
    made.chmod(0o777)
    err = _serve_fails(made)
    assert "writable by group or others" in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_data_directory_of_another_user_is_refused(made: Path) -> None:
    os.chown(made, 65534, 65534)
    err = _serve_fails(made)
    assert "owned by uid 65534" in err, err


def test_a_data_directory_readable_by_others_is_made_private(made: Path) -> None:
    made.chmod(0o755)
    srv = start_server(made)
    stop_processes([srv.proc])
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert "made 0700" in (made.parent / f"{made.name}-server.log").read_text()


def test_a_master_key_swapped_for_a_link_after_start_is_not_written_through(
    tmp_path: Path,
) -> None:
    """Review 40b F5: the master key file is read with ``O_NOFOLLOW``; its later writes (a
    rotation, an erasure's re-wrap) were opened following links, so a key path swapped for
    a link after start sent the next key into the file it names. Now the write is refused
    (ELOOP) and the linked file is untouched."""
    import errno

    from tlog.backend import StorageError
    from tlog.scim.keys import bind_key_file, write_key_file_in_place

    key = tmp_path / "scim-master.key"
    key.write_bytes(b"x" * 64)
    stolen = tmp_path / "readable-by-the-attacker"
    stolen.write_bytes(b"")
    key.unlink()
    key.symlink_to(stolen)
    with pytest.raises(OSError) as err:
        write_key_file_in_place(key, b"k" * 32, None)
    assert err.value.errno == errno.ELOOP
    with pytest.raises(StorageError, match="symbolic link"):  # its load refuses first
        bind_key_file(key, b"s" * 16)
    assert stolen.read_bytes() == b""
