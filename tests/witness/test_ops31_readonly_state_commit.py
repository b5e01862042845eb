"""ops31: a push the witness's state commits on a file system that went read-only before any
write was refused (ext4 ``errors=remount-ro``): SQLite's commit of WAL frames over an
existing WAL (the WAL restarted after a checkpoint) needs no new block, and the kernels
that mark ext4 read-only after an error take it into the page cache and answer its fsync
with 0. The state's file system is asked (``statvfs``) after each commit: read-only there,
no cosignature is returned (503) and the state is in doubt until a restart (fix40:
``tests/witness/test_fix40_in_doubt_state.py``).

The real-ext4 test puts the state at that moment (the WAL reused, checked); this machine's
kernel (6.15 and later) refuses the write itself, so it passes here without the check too,
and would fail without it on the kernel that lies. The in-process test answers ``statvfs``
as that kernel does on a real state file: it failed before the check."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import httpx
import pytest

from client.witness.store import WitnessStore
from tests.support import OlderKernel, ext4_error, ext4_repair, frozen_ext4
from tests.witness.helpers import (
    FakeLog,
    add_status,
    events,
    make_witness,
    serve_process,
    served_url,
    stop_serving,
    write_config,
)


def _checkpoint_wal(db: Path) -> None:
    """A passive checkpoint (another process may: SQLite's own protocol): every frame back
    in the database, so the next commit writes the WAL again from its start."""
    conn = sqlite3.connect(db)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


@pytest.mark.slow
def test_a_push_over_a_reused_wal_after_an_ext4_error_cosigns_nothing(tmp_path: Path) -> None:
    log = FakeLog(events(60))
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 32, "errors=remount-ro") as mnt:
        cfg = write_config(mnt, log)
        os.sync()
        proc = serve_process(cfg)
        wal = mnt / "state.db-wal"
        try:
            url, _ = served_url(proc)
            with httpx.Client(timeout=30) as http:
                for old, size in ((0, 10), (10, 15)):
                    r = http.post(url + "/add-checkpoint", content=log.body(old, size))
                    assert r.status_code == 200, r.text
                _checkpoint_wal(mnt / "state.db")
                grown = wal.stat().st_size
                r = http.post(url + "/add-checkpoint", content=log.body(15, 20))
                assert r.status_code == 200, r.text
                # the push wrote the WAL from its start again: no new block (the lie's case)
                assert wal.stat().st_size == grown, "the WAL grew: not the case under test"
                _checkpoint_wal(mnt / "state.db")
                os.sync()
                ext4_error(mnt)
                r = http.post(url + "/add-checkpoint", content=log.body(20, 30))
                assert r.status_code == 503, (r.status_code, r.text)
                assert "nothing was cosigned" in r.text, r.text
                assert "— witness.example.com/w7" not in r.text
                r = http.get(url + "/readyz")
                assert r.status_code == 503, (r.status_code, r.text)
        finally:
            stop_serving(proc)
        mnt = ext4_repair(tmp_path)
        store = WitnessStore(mnt / "state.db")
        try:
            latest = store.latest(log.origin)
            assert latest is not None and latest.size == 20
        finally:
            store.close()


def test_a_push_the_state_file_system_says_read_only_after_cosigns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FakeLog(events(40))
    (tmp_path / "state").mkdir()
    kernel = OlderKernel(monkeypatch, tmp_path / "state")
    w = make_witness(tmp_path / "state" / "state.db", [log.witnessed_log()])
    try:
        assert add_status(w, log.body(0, 10)) == 200
        kernel.fail()
        assert add_status(w, log.body(10, 20)) == 503
        assert w.write_fault is not None and "Read-only" in w.write_fault, w.write_fault
        # the fault is kept: a push is refused before anything is tried while a new file
        # cannot be made beside the state (here it can, this disk does not lie: so it is
        # tried, from the size this disk kept, and the check after the commit refuses it)
        assert add_status(w, log.body(20, 30)) == 503
        assert w.write_fault is not None
    finally:
        w.store.close()
