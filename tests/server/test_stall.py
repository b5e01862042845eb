"""A stalled store (issue 7 part 4): nothing on the event loop waits for it.

The store is stalled for real, in process: every read transaction or every commit blocks on
an Event, as a frozen file system blocks them (with LMDB even a read writes its reader slot
in lock.mdb, which waits for the thaw under fsfreeze). On PostgreSQL the commit stalls in
the database server itself: another session holds the state row's lock. The server is a
real uvicorn on a socket, so requests run concurrently. While the store is stalled, ``/healthz``,
``/checkpoint``, ``/v1/log`` and proofs and tiles held in memory keep answering for every
tenant; whatever needs the store answers 503 with a clear reason after the storage timeout,
and a write is never acknowledged. The last test freezes a real ext4 file system with
``fsfreeze`` under ``tlog serve`` (skipped without root and loop devices).

Waits are bounded (WAIT) and never a pass/fail threshold: the storage timeout is 1 s and
every client waits up to 20 s, so "answered 503" means "did not hang".
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ..support import frozen_ext4, run_tool, start_server
from .stall import WAIT, Served, fill, serve


def _answers_from_memory(s: Served) -> None:
    """What must keep answering 200 while the store is stalled, for anyone."""
    assert s.get("/healthz").status_code == 200
    r = s.get("/checkpoint")
    assert r.status_code == 200 and r.text == s.log.latest.note
    assert s.get("/v1/log").json()["tree_size"] == 300
    r = s.get("/v1/proof/inclusion?index=5")
    assert r.status_code == 200 and r.json()["tree_size"] == 300
    assert s.get("/tile/0/000").status_code == 200
    assert s.get("/v1/proof/consistency?old_size=10").status_code == 200


def test_stalled_reads_answer_503_and_memory_keeps_answering(
    tmp_path: Path, database: str | None
) -> None:
    with serve(tmp_path, "read", database=database) as s, ThreadPoolExecutor(4) as pool:
        fill(s)
        s.gate.open.clear()  # the store stops answering
        # Tenant t1's write needs the store (t1's token is still cached from _fill, but the
        # writer reads the dedup index): it waits in the background ...
        t1 = pool.submit(s.post, "t1", b"from t1 while stalled")
        reads = [pool.submit(s.get, p) for p in ("/v1/entries/5", "/tile/entries/000")]
        # ... while the endpoints that need no store answer for everyone meanwhile.
        _answers_from_memory(s)
        r = t1.result(WAIT)
        assert r.status_code == 503, r.text
        assert "has not answered" in r.json()["error"]
        assert "nothing was acknowledged" in r.json()["error"]
        assert r.headers["retry-after"]
        # t1's token stays cached for 1 s after _fill: on a loaded machine that can be over
        # before its POST, and then the token lookup is what stalled and nothing was queued.
        queued = "a token lookup" not in r.json()["error"]
        for f in reads:
            g = f.result(WAIT)
            assert g.status_code == 503 and "has not answered" in g.json()["error"], g.text
        t2 = s.post("t2", b"from t2 while stalled")  # another tenant (its token): 503 too
        assert t2.status_code == 503
        ready = s.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"] == {"ok": False, "detail": "StorageStalled"}
        assert s.log.latest.size == 300  # nothing was written
        s.gate.open.set()  # the thaw: everything works again
        r = s.post("t2", b"after the thaw")
        # t1's batch was answered 503 but not cancelled: it lands first (docs/operations.md:
        # its retry would be a duplicate); a refused token lookup never queued anything.
        assert r.status_code == 200, r.text
        if queued:
            assert r.json()["index"] == 301
            assert s.get("/v1/entries/300").content == b"from t1 while stalled"
        else:
            assert r.json()["index"] == 300
            assert s.get("/v1/entries/300").content == b"after the thaw"
        assert s.get("/v1/entries/5").content == b"e-5"
        assert s.get("/readyz").status_code == 200


def test_stalled_commit_acknowledges_nothing_and_reads_go_on(
    tmp_path: Path, database: str | None
) -> None:
    with serve(tmp_path, "commit", database=database) as s, ThreadPoolExecutor(2) as pool:
        fill(s)
        s.gate.open.clear()  # commits hang (fsync on a frozen disk); reads still work
        t1 = pool.submit(s.post, "t1", b"stuck in the commit")
        _answers_from_memory(s)
        assert s.get("/v1/entries/7").content == b"e-7"  # a read from the store
        r = t1.result(WAIT)
        assert r.status_code == 503, r.text
        assert "has not answered a commit" in r.json()["error"]
        assert s.get("/checkpoint").text == s.log.latest.note
        assert s.log.latest.size == 300  # not acknowledged, not published
        s.gate.open.set()
        # The batch was not cancelled: once the store answers it lands, and the retry the
        # 503 asked for is a duplicate with the same index, not a second entry.
        r = s.post("t1", b"stuck in the commit")
        assert r.status_code == 200, r.text
        assert r.json()["index"] == 300 and r.json()["duplicate"] is True


def test_nothing_is_handed_out_before_it_is_remembered(
    tmp_path: Path, database: str | None
) -> None:
    """The remembered-checkpoint write runs beside the next batch, but a checkpoint reaches
    no one (receipt, GET /checkpoint) before the file holds it: "never sign without
    remembering". Held here, the batch is committed in the store and still invisible."""
    # A storage timeout longer than this test's waits: the POST must wait for the file,
    # not time out.
    with (
        serve(tmp_path, "remember", timeout=WAIT, database=database) as s,
        ThreadPoolExecutor(1) as pool,
    ):
        fill(s)
        before = s.get("/checkpoint").text
        s.gate.open.clear()
        w = pool.submit(s.post, "t1", b"committed, not yet remembered")
        for _ in range(400):  # until the batch is in the store (bounded)
            with s.log.storage.read() as rv:
                if rv.tree_size() == 301:
                    break
            threading.Event().wait(0.05)
        with s.log.storage.read() as rv:
            assert rv.tree_size() == 301  # durable in the store ...
        assert s.get("/checkpoint").text == before  # ... but not handed out
        assert s.get("/v1/log").json()["tree_size"] == 300
        assert not w.done()
        s.gate.open.set()
        r = w.result(WAIT)
        assert r.status_code == 200 and r.json()["tree_size"] == 301
        assert s.get("/checkpoint").text == r.json()["checkpoint"]
        assert s.log.remembered is not None
        mem = s.log.remembered.read()
        assert mem is not None and mem.size == 301


# -- a real frozen file system ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.lmdb_only("freezes the file system under the LMDB data directory")
def test_fsfreeze_under_tlog_serve(tmp_path: Path, database: str | None) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("needs /dev/shm (a tmpfs for the LMDB lock file)")
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 256) as mnt:
        _under_tlog_serve(tmp_path, mnt, database)


def _under_tlog_serve(tmp_path: Path, mnt: Path, database: str | None) -> None:
    srv = None
    frozen = False
    lock_file: Path | None = None
    try:
        # The store on the frozen file system, the server's log file not (a process that
        # logs onto a frozen disk blocks in its next log line, whatever it serves).
        (mnt / "data").mkdir()
        (tmp_path / "data").symlink_to(mnt / "data")
        # No --lock-dir: the LMDB lock file goes to /dev/shm by default (tlog.lockfile).
        # py-lmdb holds the GIL while a read transaction writes its reader slot, which a
        # frozen lock.mdb would block forever.
        srv = start_server(
            tmp_path / "data",
            None,
            "--storage-timeout",
            "1",
            "--map-size",
            str(64 << 20),
            timeout=60,
            database=database,
        )
        link = tmp_path / "data" / "db" / "lock.mdb"
        assert link.is_symlink()
        lock_file = Path(os.readlink(link))
        assert lock_file.parent.parent == Path("/dev/shm")
        token = (tmp_path / "data" / "demo-submitter.token").read_text().strip()
        h = {"Authorization": f"Bearer {token}"}
        body = b"".join(len(e).to_bytes(2, "big") + e for e in (b"f-%d" % i for i in range(300)))
        r = httpx.post(
            srv.url + "/v1/entries/batch",
            content=body,
            timeout=WAIT,
            headers={**h, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        assert run_tool("fsfreeze", "-f", str(mnt)).returncode == 0
        frozen = True
        with ThreadPoolExecutor(1) as pool:
            w = pool.submit(
                httpx.post,
                srv.url + "/v1/entries",
                content=b"while frozen",
                headers=h,
                timeout=WAIT,
            )
            assert httpx.get(srv.url + "/healthz", timeout=WAIT).status_code == 200
            c = httpx.get(srv.url + "/checkpoint", timeout=WAIT)
            assert c.status_code == 200 and "\n300\n" in c.text
            p = httpx.get(srv.url + "/v1/proof/inclusion?index=5", timeout=WAIT)
            assert p.status_code == 200
            assert httpx.get(srv.url + "/tile/0/000", timeout=WAIT).status_code == 200
            e = httpx.get(srv.url + "/v1/entries/7", timeout=WAIT)  # reads need no writes
            assert e.status_code == 200 and e.content == b"f-7"
            r = w.result(WAIT)
        assert r.status_code == 503, r.text
        assert "has not answered a commit" in r.json()["error"]
        assert (tmp_path / "data" / "db" / "lock.mdb").is_symlink()
        assert run_tool("fsfreeze", "-u", str(mnt)).returncode == 0
        frozen = False
        r = httpx.post(srv.url + "/v1/entries", content=b"after the thaw", headers=h, timeout=WAIT)
        assert r.status_code == 200, r.text
    finally:
        if frozen:
            run_tool("fsfreeze", "-u", str(mnt))
        if srv is not None:
            srv.stop()
        if lock_file is not None:
            lock_file.unlink(missing_ok=True)
