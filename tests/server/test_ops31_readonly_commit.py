"""ops31: a commit made on a file system that went read-only before any write was refused.

ext4 after an error (``errors=remount-ro``) marks itself read-only; on the kernels that set
the super block's read-only flag for it (upstream before 6.6, the CI machine's of review
39), it still takes a write over blocks a file already has into the page cache and answers
its ``fsync`` with 0. Red team 30 covered the writes after the first refused one (a new file
is tried first); an LMDB commit that reuses freed pages, before anything was refused, was
acknowledged and lost. Now the file system's ``statvfs`` is asked after the commit and
before the answer: read-only there, nothing of the commit is acknowledged (503), the log
stops signing until a restart (what it reads back from its store may be what the disk lost)
and ``/readyz`` says why.

Two tests: one with the kernel's own error path on a real loop-mounted ext4, at the moment
that matters (the store in the steady state where a commit reuses freed pages: the file
does not grow); on this machine's kernel (6.15 and later) the write is refused by the
kernel itself, so this test also passes without the check, and it is the kernel that lies
(CI's) where it would fail. The other answers ``statvfs`` as those kernels do (the only
part of the lie that reaches the process: the write and its ``fsync`` succeed on a real
file) under a real store and log, in process: it failed before the check."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from tests.support import (
    OlderKernel,
    ext4_error,
    ext4_repair,
    frozen_ext4,
    start_server,
    tlog_cli,
    token_for,
)
from tlog.backend import StorageReadOnlyInDoubt
from tlog.integrity import CheckpointFile
from tlog.log import Log, LogHalted
from tlog.storage import Storage

from .acked import acknowledge as _acknowledge
from .acked import proves as _proves
from .acked import submit as _submit
from .conftest import ORIGIN, Harness, make_signer


def _blocks(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_blocks


@pytest.mark.slow
@pytest.mark.lmdb_only("the LMDB data directory's file system")
def test_a_commit_over_reused_pages_after_an_ext4_error_is_not_acknowledged(
    tmp_path: Path,
) -> None:
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 64, "errors=remount-ro") as mnt:
        data = mnt / "data"
        srv = start_server(data, None)
        try:
            token = token_for(data, None, "--role", "submitter", "--tenant", "acme")
            vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
            acked = _acknowledge(srv, token, 40, "before")
            # The steady state: a commit reuses pages freed by the ones before it, so the
            # file neither grows nor gets a new block (the commit the lie keeps).
            mdb = data / "db" / "data.mdb"
            grown = _blocks(mdb)
            acked |= _acknowledge(srv, token, 1, "reusing")
            assert _blocks(mdb) == grown, "the store still grows: not the case under test"
            before = httpx.get(srv.url + "/checkpoint").text

            ext4_error(mnt)

            r = _submit(srv, token, b"refused-0")
            assert r.status_code == 503, (r.status_code, r.text)
            why = r.json()["error"]
            assert "read-only" in why.lower() and "disk full" not in why, why
            ready = httpx.get(srv.url + "/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            assert httpx.get(srv.url + "/checkpoint").text == before  # nothing handed out
            assert _proves(srv, vkey, acked) == 41
        finally:
            srv.stop()
        ext4_repair(tmp_path)
        fs = tlog_cli("fsck", "--data", str(data))
        assert fs.returncode == 0 and "OK: 41 entries" in fs.stdout, fs.stdout + fs.stderr
        again = start_server(data, None)
        try:
            assert _proves(again, vkey, acked) == 41  # nothing acknowledged was lost
            r = _submit(again, token, b"refused-0")  # the client's retry
            assert r.status_code == 200 and r.json()["index"] == 41, r.text
        finally:
            again.stop()


def test_a_commit_the_file_system_says_read_only_after_halts_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = OlderKernel(monkeypatch, tmp_path / "db")
    storage = Storage(tmp_path / "db")
    log = Log(storage, make_signer())
    try:
        log.integrate([b"kept-0", b"kept-1"])
        kept = log.latest
        kernel.fail()
        with pytest.raises(StorageReadOnlyInDoubt, match="nothing of it was acknowledged"):
            log.integrate([b"in-doubt"])
        assert log.latest == kept  # nothing handed out for it
        assert log.halted is not None and "read-only" in log.halted
        assert storage.write_fault is not None
        # The store's pages hold the commit the disk may have lost: never reloaded from,
        # nothing else written or signed until a restart.
        with pytest.raises(LogHalted):
            log.integrate([b"next"])
        with pytest.raises(StorageReadOnlyInDoubt):
            storage.set_meta("x", b"y")
        assert log.latest == kept
    finally:
        storage.close()


def test_a_checkpoint_file_the_file_system_says_read_only_after_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--checkpoint-file`` on another device whose file system goes read-only: its slot
    is always written over blocks the file has (the lie's case on every write). The batch
    is committed to the store, but its checkpoint is neither remembered nor handed out."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    kernel = OlderKernel(monkeypatch, elsewhere)
    signer = make_signer()
    remembered = CheckpointFile(elsewhere / "last-checkpoint", signer.verifier, ORIGIN)
    storage = Storage(tmp_path / "db")
    log = Log(storage, signer, remembered)
    try:
        log.integrate([b"kept-0"])
        kept = log.latest
        kernel.fail()
        with pytest.raises(OSError, match="may not be on the disk"):
            log.integrate([b"not-remembered"])
        assert log.latest == kept
        assert log.remember_fault is not None and "Read-only" in log.remember_fault
        # (The slot did reach this test's disk, which does not lie: on the kernel that
        # lies it is in the page cache only, and the restart reads the older slot.)
    finally:
        remembered.close()
        storage.close()


@pytest.mark.lmdb_only("the LMDB data directory's file system")
def test_the_commit_in_doubt_is_a_503_and_readyz_says_why(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the app: the write in doubt and every one after it are 503 saying why,
    nothing new is handed out, ``/readyz`` fails its storage and signing checks, and the
    reads go on."""
    kernel = OlderKernel(monkeypatch, harness.data)
    assert harness.add(b"kept").status_code == 200
    before = harness.client.get("/checkpoint").text
    kernel.fail()
    r = harness.add(b"in-doubt")
    assert r.status_code == 503, r.text
    assert "nothing of it was acknowledged" in r.json()["error"], r.text
    r = harness.add(b"after")
    assert r.status_code == 503 and "read-only" in r.json()["error"], r.text
    assert harness.client.get("/checkpoint").text == before
    ready = harness.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    checks = ready.json()["checks"]
    assert checks["storage"]["ok"] is False and checks["signing"]["ok"] is False, checks
    assert harness.client.get("/v1/entries/0").content == b"kept"
