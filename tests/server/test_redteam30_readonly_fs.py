"""Red team 30, attack 1: the file system under a running ``tlog serve`` (LMDB) goes
read-only: ext4 mounted ``errors=remount-ro`` hits an error (the kernel's own path, through
``trigger_fs_error``), or an operator runs ``mount -o remount,ro``.

Expected: writes answer a clear 503 that says the file system is read-only (not "disk
full": freeing space would not help), ``/readyz`` says not ready, public reads keep
working, nothing acknowledged is lost and no checkpoint is handed out for what was not
stored: after the operator's repair (``e2fsck``, mount read-write) and a restart, the log
proves exactly what was acknowledged, ``tlog fsck`` is clean and writes go on. An
operator's read-only remount under the server is refused by the kernel (EBUSY: LMDB keeps
its data file open for writing), and the server goes on writing."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ext4_error,
    ext4_repair,
    frozen_ext4,
    run_tool,
    start_server,
    tlog_cli,
    token_for,
)

from .acked import acknowledge as _acknowledge
from .acked import proves as _proves
from .acked import submit as _submit

pytestmark = [pytest.mark.slow, pytest.mark.lmdb_only("the LMDB data directory's file system")]


def test_ext4_error_remounts_the_data_directory_read_only(tmp_path: Path) -> None:
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 64, "errors=remount-ro") as mnt:
        data = mnt / "data"
        srv = start_server(data, None)
        try:
            token = token_for(data, None, "--role", "submitter", "--tenant", "acme")
            vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
            acked = _acknowledge(srv, token, 5, "before")
            size = _proves(srv, vkey, acked)
            assert size == 5
            before = httpx.get(srv.url + "/checkpoint").text

            ext4_error(mnt)

            for i in range(3):
                r = _submit(srv, token, f"refused-{i}".encode())
                assert r.status_code == 503, (r.status_code, r.text)
                why = r.json()["error"]
                assert "read-only" in why and "disk full" not in why, why
            ready = httpx.get(srv.url + "/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            storage = ready.json()["checks"]["storage"]
            assert storage["ok"] is False and "read-only" in storage["detail"], storage
            # Public reads go on; nothing was signed for what was refused.
            assert httpx.get(srv.url + "/checkpoint").text == before
            assert _proves(srv, vkey, acked) == 5
            assert httpx.get(srv.url + "/healthz").status_code == 200
        finally:
            srv.stop()
        # (The server's own output goes to a file on the same file system: lost from the
        # error on, so what it logged is not checked here.)

        mnt = ext4_repair(tmp_path)
        fs = tlog_cli("fsck", "--data", str(data))
        assert fs.returncode == 0, fs.stdout + fs.stderr
        assert "OK: 5 entries" in fs.stdout, fs.stdout
        again = start_server(data, None)
        try:
            assert _proves(again, vkey, acked) == 5  # nothing lost, nothing more
            more = _acknowledge(again, token, 2, "after")
            assert sorted(more) == [5, 6]
            assert _proves(again, vkey, acked | more) == 7
            assert httpx.get(again.url + "/readyz").status_code == 200
        finally:
            again.stop()


def test_operator_remount_read_only_is_refused_while_serving(tmp_path: Path) -> None:
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 64) as mnt:
        data = mnt / "data"
        srv = start_server(data, None)
        try:
            token = token_for(data, None, "--role", "submitter", "--tenant", "acme")
            vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
            acked = _acknowledge(srv, token, 3, "before")
            m = run_tool("mount", "-o", "remount,ro", str(mnt))
            # The kernel refuses while a file is open for writing (LMDB's data file).
            assert m.returncode != 0 and "busy" in m.stderr, (m.returncode, m.stderr)
            acked |= _acknowledge(srv, token, 3, "after")
            assert _proves(srv, vkey, acked) == 6
            assert httpx.get(srv.url + "/readyz").status_code == 200
        finally:
            srv.stop()


def test_a_disk_that_dropped_acknowledged_writes_is_refused_at_restart(tmp_path: Path) -> None:
    """The disk lies (what device-mapper's ``flakey drop_writes`` does, which this kernel
    cannot run): it acknowledged the store's last writes and then lost them. Simulated
    with the file system's image: a copy taken while it is mounted (after a sync: what the
    disk kept) is put back after more entries were acknowledged. The store is then an
    older, self-consistent log that ``tlog fsck`` cannot tell from a shorter one; the
    checkpoint the server remembered on another device (``--checkpoint-file``) makes the
    restart refuse it loudly instead of serving the shorter tree."""
    remembered = tmp_path / "elsewhere" / "last-checkpoint"
    remembered.parent.mkdir()
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 64) as mnt:
        data = mnt / "data"
        srv = start_server(data, None, "--checkpoint-file", str(remembered))
        try:
            token = token_for(data, None, "--role", "submitter", "--tenant", "acme")
            _acknowledge(srv, token, 3, "kept")
            os.sync()
            shutil.copyfile(tmp_path / "fs.img", tmp_path / "kept.img")  # what the disk kept
            _acknowledge(srv, token, 3, "dropped")
        finally:
            srv.stop()
        u = run_tool("umount", str(mnt))
        assert u.returncode == 0, u.stderr
        shutil.copyfile(tmp_path / "kept.img", tmp_path / "fs.img")  # the writes it dropped
        fsck = run_tool("e2fsck", "-fy", str(tmp_path / "fs.img"))
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
        m = run_tool("mount", "-o", "loop", str(tmp_path / "fs.img"), str(mnt))
        assert m.returncode == 0, m.stderr
        fs = tlog_cli("fsck", "--data", str(data))  # consistent, shorter: fsck cannot know
        assert fs.returncode == 0 and "OK: 3 entries" in fs.stdout, fs.stdout + fs.stderr
        again = tlog_cli(
            *("serve", "--data", str(data), "--port", "0", "--origin", "test.example/log"),
            *("--checkpoint-file", str(remembered)),
        )
        assert again.returncode != 0, again.stdout + again.stderr
        said = again.stdout + again.stderr
        assert "the store is behind the log: it ends at tree size 3" in said, said
        assert "tree size 6" in said, said
