"""Red team 9: PostgreSQL's WAL full. The test's own cluster keeps its ``pg_wal`` on a small
tmpfs (1 MB segments), a replication slot nobody reads keeps every segment, and a filler
file takes most of the room, while a real ``tlog serve`` commits raw entries, raw batches,
SCIM batches and single SCIM events (or SCIM batches alone). When WAL finds no room,
PostgreSQL PANICs: every session is ended, the postmaster restarts (and may PANIC again,
or give up and stop). Then the filler and the slot are removed and PostgreSQL is started
again if it stopped.

Expected: every request is answered within the commit bound (plus a margin), a failure is
a clear 503 (never a 500, never a lost connection), ``/readyz`` answers 503 with its
storage check failing while the database is down, nothing acknowledged is lost, one root
per tree size; once PostgreSQL is back, writes of every kind work again **without a
restart** of ``tlog serve``, and ``tlog fsck`` is clean."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.pg import PgCluster, memory_dir, reap_stale
from tests.pgsupport import require_postgres

from .redteam8_load import KINDS, faulted_server, small_tmpfs

pytestmark = pytest.mark.slow

BOUND = 5  # --storage-timeout
MARGIN = 6  # seconds over the bound a loaded machine may take to answer
WAL_CONF = {
    # Small segments and checkpoints: the fill is quick and the end-of-recovery
    # checkpoint after the PANIC needs little room.
    "min_wal_size": "'2MB'",
    "max_wal_size": "'4MB'",
    "wal_keep_size": "0",
    "restart_after_crash": "on",
}


@contextlib.contextmanager
def wal_on_tmpfs(size: str) -> Iterator[tuple[PgCluster, Path]]:
    """A started cluster (of its own) whose ``pg_wal`` is ``<mnt>/wal`` on a tmpfs of
    ``size``: (the cluster, the mount)."""
    require_postgres()
    reap_stale([memory_dir(), None])
    cluster = PgCluster(WAL_CONF, tmp_root=memory_dir())
    try:
        with small_tmpfs(cluster.base / "mnt", size) as mnt:
            try:
                if cluster.user is not None:
                    shutil.chown(mnt, cluster.user)
                cluster.init("-X", str(mnt / "wal"), "--wal-segsize", "1")
                cluster.start()
                yield cluster, mnt
            finally:
                cluster.stop("immediate")  # before the tmpfs is unmounted
    finally:
        cluster.destroy()


def _running(cluster: PgCluster) -> bool:
    return cluster.run("pg_ctl", "-D", str(cluster.data), "status").returncode == 0


def _accepting(cluster: PgCluster) -> bool:
    try:
        cluster.sql("SELECT 1")
    except psycopg.Error:
        return False
    return True


# SCIM batches alone: three writers of them, so that the WAL fills as fast as under the mix.
@pytest.mark.parametrize("kinds", [KINDS, ("scim-batch",) * 3], ids=["all-kinds", "scim-batch"])
def test_postgresql_wal_full_panics_under_load(tmp_path: Path, kinds: tuple[str, ...]) -> None:
    with wal_on_tmpfs("24m") as (cluster, mnt):
        url = cluster.new_schema()
        # WAL is kept from here on (a slot nobody reads): the fill is WAL's alone.
        cluster.sql("SELECT pg_create_physical_replication_slot('rt9_hold', true)")
        with faulted_server(tmp_path, url, BOUND) as run:
            load, srv = run.load, run.srv
            load.start(kinds)
            load.wait_acked(20)
            free = shutil.disk_usage(mnt).free
            filler = mnt / "filler"
            with filler.open("wb") as f:
                f.write(b"\0" * (free - (2 << 20)))
            deadline = time.monotonic() + 60
            while "PANIC" not in cluster.logfile.read_text(errors="replace"):
                assert time.monotonic() < deadline, (load.summary(), cluster.logfile.read_text())
                time.sleep(0.1)
            # Down (or crashing again at each write): not ready, answered within the bound;
            # what needs no database (the latest checkpoint) is still served.
            ready: list[tuple[int, bool, float]] = []
            t_panic = time.monotonic()
            with httpx.Client(timeout=60) as c:
                while time.monotonic() - t_panic < 4 or not any(not ok for _, ok, _ in ready):
                    assert time.monotonic() - t_panic < 30, ready
                    t0 = time.monotonic()
                    r = c.get(srv.url + "/readyz")
                    ok = r.json()["checks"]["storage"]["ok"]
                    ready.append((r.status_code, ok, time.monotonic() - t0))
                    assert c.get(srv.url + "/checkpoint").status_code == 200
                    time.sleep(0.2)
            assert all(t < BOUND + MARGIN for _, _, t in ready), ready
            assert any(s == 503 and not ok for s, ok, _ in ready), ready
            n_down = len(load.answers)
            # Room again: the filler goes, the slot too (once the server accepts
            # connections); PostgreSQL is started if the postmaster gave up.
            filler.unlink()
            if not _running(cluster):
                cluster.start()
            deadline = time.monotonic() + 60
            while not _accepting(cluster):
                assert time.monotonic() < deadline, cluster.logfile.read_text()[-5000:]
                if not _running(cluster):
                    cluster.start()
                time.sleep(0.2)
            cluster.sql("SELECT pg_drop_replication_slot('rt9_hold')")
            load.wait_acked(40, bound=60)
            with load._lock:
                answers = list(load.answers)
            failed = [a for a in answers[:n_down] if a.status != 200]
            assert failed, "nothing was refused while the WAL was full?"
            slow = [(a.kind, a.status, a.elapsed) for a in answers if a.elapsed > BOUND + MARGIN]
            assert not slow, slow
            # Back, without a restart: ready again; faulted_server checks writes of every
            # kind, the store and fsck when this block ends.
            r = httpx.get(srv.url + "/readyz")
            assert r.status_code == 200, r.text
