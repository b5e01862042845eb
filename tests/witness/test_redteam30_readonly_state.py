"""Red team 30, attack 1 (the witness): the file system under a running ``tlog-witness
serve``'s state database goes read-only (ext4 ``errors=remount-ro`` after an error, through
the kernel's own path). Expected: a push that would change the state answers a clear 503
saying it cannot use its state (SQLite's "disk I/O error") and returns no cosignature (a
cosignature on a state that was not stored would let a restarted witness cosign a fork of
it), ``/readyz`` is 503 (found: it stayed ready, the state still reads; fixed with
``Witness.write_fault``), ``/healthz`` answers; after the operator's repair and a restart
the state holds exactly what was cosigned and the log's next push is cosigned from there."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
import pytest

from client.witness.store import WitnessStore
from tests.support import ext4_error, ext4_repair, frozen_ext4
from tests.witness.helpers import (
    FakeLog,
    events,
    serve_process,
    served_url,
    stop_serving,
    write_config,
)

pytestmark = pytest.mark.slow


def test_a_read_only_state_disk_is_a_503_and_cosigns_nothing(tmp_path: Path) -> None:
    log = FakeLog(events(60))
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 32, "errors=remount-ro") as mnt:
        cfg = write_config(mnt, log)
        os.sync()  # the test's own files (config, key) on disk before the error
        proc = serve_process(cfg)
        try:
            url, _ = served_url(proc)
            with httpx.Client(timeout=30) as http:
                r = http.post(url + "/add-checkpoint", content=log.body(0, 20))
                assert r.status_code == 200, r.text
                ext4_error(mnt)
                r = http.post(url + "/add-checkpoint", content=log.body(20, 30))
                assert r.status_code == 503, (r.status_code, r.text)
                # SQLite reports a write refused with EROFS as an I/O error: true, if less
                # precise than the log's own "read-only" (tlog serve's LMDB store).
                assert "disk I/O error" in r.text and "nothing was cosigned" in r.text, r.text
                assert "— witness.example.com/w7" not in r.text
                r = http.get(url + "/readyz")
                assert r.status_code == 503, (r.status_code, r.text)
                assert http.get(url + "/healthz").status_code == 200
                # the same size again: the witness records every cosigning (its state's
                # compare-and-swap writes), so it is refused too, and readiness still fails
                # (review 39: the test took 200 too, which would have cleared the fault)
                r = http.post(url + "/add-checkpoint", content=log.body(20, 20))
                assert r.status_code == 503, (r.status_code, r.text)
                assert http.get(url + "/readyz").status_code == 503
        finally:
            stop_serving(proc)
        mnt = ext4_repair(tmp_path)
        store = WitnessStore(mnt / "state.db")
        try:
            latest = store.latest(log.origin)
            assert latest is not None and latest.size == 20
        finally:
            store.close()
        proc = serve_process(cfg)
        try:
            url, _ = served_url(proc)
            with httpx.Client(timeout=30) as http:
                r = http.post(url + "/add-checkpoint", content=log.body(20, 30))
                assert r.status_code == 200, (r.status_code, r.text)
                assert http.get(url + "/readyz").status_code == 200
        finally:
            stop_serving(proc)
