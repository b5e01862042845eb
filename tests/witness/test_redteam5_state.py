"""Red team 5: the witness's own state database when it cannot be written.

A second process holding the state's write lock (two witnesses on one state directory, a
``sqlite3`` shell left in a transaction, a stalled disk) or a full disk made add-checkpoint
answer ``500 internal error`` with a traceback: a crash, to the log a witness that is
broken rather than one that is briefly unavailable. Now: ``503`` saying the state cannot be
written, nothing cosigned (no cosignature without a durable state), and the next push after
the fault cosigns."""

from __future__ import annotations

import resource
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
from client.witness.core import Witness
from client.witness.store import WitnessStore
from tests.witness.helpers import (
    WITNESS_NAME,
    WITNESS_SEED,
    FakeClock,
    FakeLog,
    events,
    serve_process,
    served_url,
    stop_serving,
    witness_serving,
    write_config,
)


def test_state_locked_by_another_process_is_503_not_500(tmp_path: Path) -> None:
    log = FakeLog(events(50))
    db = tmp_path / "state.db"
    store = WitnessStore(db, timeout=0.2)
    w = Witness(
        CosignatureSigner(WITNESS_NAME, WITNESS_SEED),
        [log.witnessed_log()],
        store,
        clock=FakeClock(),
    )
    other = sqlite3.connect(db, isolation_level=None)
    try:
        with witness_serving(w) as srv, httpx.Client(timeout=10) as http:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            other.execute("BEGIN IMMEDIATE")  # the other process holds the write lock
            r = http.post(url + "/add-checkpoint", content=log.body(0, 20))
            assert r.status_code == 503, (r.status_code, r.text)
            assert "state" in r.text and "\u2014" not in r.text  # a reason, no cosignature
            assert store.latest(log.origin) is None
            other.execute("ROLLBACK")
            r = http.post(url + "/add-checkpoint", content=log.body(0, 20))
            assert r.status_code == 200, r.text
    finally:
        other.close()
        store.close()


@pytest.mark.slow
def test_full_disk_under_a_serving_witness_is_503_and_cosigns_nothing(tmp_path: Path) -> None:
    """A real ``tlog-witness serve`` whose files may not grow once it started (RLIMIT_FSIZE:
    writes past the limit fail with EFBIG, as on a full disk): a push needs the state to
    grow."""
    log = FakeLog(events(50))
    cfg = write_config(tmp_path, log)
    WitnessStore(tmp_path / "state.db").close()  # the schema exists; the WAL is empty
    proc = serve_process(cfg)
    try:
        url, _ = served_url(proc)
        # Started (state opened, schema there): from now on no file may grow past 4 KiB,
        # less than the first commit's write-ahead log frame.
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
        with httpx.Client(timeout=10) as http:
            r = http.post(url + "/add-checkpoint", content=log.body(0, 20))
            assert r.status_code == 503, (r.status_code, r.text)
            assert "state" in r.text
            assert http.get(url + "/healthz").status_code == 200  # still serving
    finally:
        stop_serving(proc)
    store = WitnessStore(tmp_path / "state.db")
    try:
        assert store.latest(log.origin) is None  # nothing cosigned, nothing half-written
    finally:
        store.close()


def test_pushes_stuck_on_the_state_do_not_starve_reads(tmp_path: Path) -> None:
    """A stalled state (here: another process holds the write lock; a stalled disk under a
    commit's fsync is the same to the caller) holds every push that reaches the store for up
    to the store's timeout. Pushes ran on the same small default thread pool as the reads,
    so once a few dozen were stuck (several logs, their retries), ``GET
    /<hash>/checkpoint`` and ``/readyz`` waited for them: the witness looked dead to monitors
    and to the logs reading their cosigned checkpoint. Reads must be answered while pushes
    are still stuck."""
    from concurrent.futures import ThreadPoolExecutor

    from client.net.witness_client import origin_hash

    log = FakeLog(events(50))
    db = tmp_path / "state.db"
    store = WitnessStore(db, timeout=30.0)
    w = Witness(
        CosignatureSigner(WITNESS_NAME, WITNESS_SEED),
        [log.witnessed_log()],
        store,
        clock=FakeClock(),
    )
    w.add_checkpoint(log.body(0, 10))
    other = sqlite3.connect(db, isolation_level=None)
    try:
        with (
            witness_serving(w) as srv,
            httpx.Client(timeout=30) as http,
            ThreadPoolExecutor(48) as pool,
        ):
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            other.execute("BEGIN IMMEDIATE")  # every push now waits for the state
            try:
                pushes = [
                    pool.submit(http.post, url + "/add-checkpoint", content=log.body(10, 20))
                    for _ in range(40)
                ]
                time.sleep(0.5)  # let them reach the store
                assert not any(p.done() for p in pushes)
                with httpx.Client(timeout=5) as reader:
                    r = reader.get(f"{url}/{origin_hash(log.origin)}/checkpoint")
                    assert r.status_code == 200 and r.text.startswith(log.origin)
                    assert reader.get(url + "/readyz").status_code == 200
                assert not all(p.done() for p in pushes)  # answered while pushes were stuck
            finally:
                other.execute("ROLLBACK")  # the stuck pushes go on (and end)
            statuses = sorted({p.result().status_code for p in pushes})
            assert statuses in ([200, 409], [200]), statuses
    finally:
        other.close()
        store.close()


def test_damaged_checkpoints_table_is_503_and_not_ready(tmp_path: Path) -> None:
    """A bit flip in the state's checkpoints table (the file opens: only that table's page
    is damaged). Reading the cosigned checkpoint answered ``500 internal error`` with a
    traceback, and ``/readyz`` said ``ready`` (it read other tables only), so the load
    balancer kept sending logs to a witness that cannot cosign. Now 503 with the reason, and
    not ready; pushes are refused with 503 too."""
    from client.net.witness_client import origin_hash

    log = FakeLog(events(50))
    db = tmp_path / "state.db"
    signer = CosignatureSigner(WITNESS_NAME, WITNESS_SEED)
    with WitnessStore(db) as store:
        Witness(signer, [log.witnessed_log()], store, clock=FakeClock()).add_checkpoint(
            log.body(0, 20)
        )
    with sqlite3.connect(db) as conn:
        (page,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'checkpoints'"
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as f:  # the page header of the table's root page
        f.seek((page - 1) * size + (100 if page == 1 else 0))
        f.write(b"\xff" * 8)
    store = WitnessStore(db)
    w = Witness(signer, [log.witnessed_log()], store, clock=FakeClock())
    try:
        with witness_serving(w) as srv, httpx.Client(timeout=10) as http:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            r = http.get(f"{url}/{origin_hash(log.origin)}/checkpoint")
            assert r.status_code == 503, (r.status_code, r.text)
            assert "state" in r.text
            r = http.get(url + "/readyz")
            assert r.status_code == 503, r.text
            r = http.post(url + "/add-checkpoint", content=log.body(20, 30))
            assert r.status_code == 503, (r.status_code, r.text)
    finally:
        store.close()


def test_zero_length_state_is_refused_not_a_new_witness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state file cut to zero bytes (a failed copy or restore, ``> state.db``, a file
    system that lost it) opened as a brand-new, empty SQLite database: the witness forgot
    every checkpoint it cosigned and cosigned, with ``old 0``, another root at a size it had
    cosigned before, which is the one thing a witness exists to refuse. Now every command
    refuses it (exit 3) and says what to do; a state file that does not exist yet is still
    a new witness."""
    from client.witness.cli import EXIT_STATE, main
    from client.witness.store import StateUnusable

    log = FakeLog(events(50))
    cfg = write_config(tmp_path, log)
    db = tmp_path / "state.db"
    signer = CosignatureSigner(WITNESS_NAME, WITNESS_SEED)
    with WitnessStore(db) as store:
        Witness(signer, [log.witnessed_log()], store, clock=FakeClock()).add_checkpoint(
            log.body(0, 20)
        )
    for extra in tmp_path.glob("state.db-*"):
        extra.unlink()
    db.write_bytes(b"")
    with pytest.raises(StateUnusable, match="empty"):
        WitnessStore(db)
    assert main(["check", "--config", str(cfg)]) == EXIT_STATE
    err = capsys.readouterr().err
    assert "state.db" in err and "empty" in err, err
    assert db.stat().st_size == 0  # left as found


def test_bit_flip_in_a_stored_root_is_damage_not_split_view_evidence(tmp_path: Path) -> None:
    """One flipped bit in the ``root`` column of the state (SQLite keeps no checksums of
    rows). The witness decided with the column while the note beside it (signed by the log
    and by the witness) still held the true root: the honest log's next push of the same
    checkpoint was recorded as split-view evidence ("same tree size with different root
    hashes") and the log frozen at this witness for good. Now the row is checked against
    its note when read: a mismatch is a damaged state (503 to the push, nothing recorded,
    ``tlog-witness check`` reports it), never evidence against the log."""
    log = FakeLog(events(50))
    cfg = write_config(tmp_path, log)
    from client.witness.cli import EXIT_STATE, main
    from client.witness.config import WitnessConfig

    config = WitnessConfig.load(cfg)
    db = tmp_path / "state.db"
    store = WitnessStore(db)
    w = Witness(config.signer(), config.logs, store, clock=FakeClock())
    try:
        w.add_checkpoint(log.body(0, 20))
        with sqlite3.connect(db) as conn:
            (root,) = conn.execute("SELECT root FROM checkpoints").fetchone()
            flipped = bytes([root[0] ^ 0x10]) + bytes(root[1:])
            conn.execute("UPDATE checkpoints SET root = ?", (flipped,))
        conn.close()
        with witness_serving(w) as srv, httpx.Client(timeout=10) as http:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            r = http.post(url + "/add-checkpoint", content=log.body(20, 20))
            assert r.status_code == 503, (r.status_code, r.text)
            assert "damaged" in r.text
            r = http.post(url + "/add-checkpoint", content=log.body(20, 30))
            assert r.status_code == 503, (r.status_code, r.text)
        assert store.evidence() == []
    finally:
        store.close()
    assert main(["check", "--config", str(cfg)]) == EXIT_STATE
