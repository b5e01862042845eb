"""Red team 8, attack 3: PostgreSQL stalled. Every process of the test's own cluster is
stopped (SIGSTOP) for longer than the server's commit bound (``--storage-timeout``) while a
real ``tlog serve`` commits raw entries, raw batches, SCIM batches and single SCIM events,
then continued (SIGCONT).

Expected: while stopped, every request is answered within the bound plus a little: a clear
503 (or a 200 for what needs no database), ``/readyz`` 503 with the storage check failing;
nothing hangs. After SIGCONT writes work again without a restart, every acknowledged
submission is in the log once with a verified inclusion proof, one root per size."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.pg import PgCluster, memory_dir
from tests.pgsupport import running_cluster

from .redteam8_load import faulted_server

pytestmark = pytest.mark.slow

BOUND = 3  # --storage-timeout
STOPPED = 8.0  # seconds the database is stopped: well over the bound


def _cluster_pids(cluster: PgCluster) -> list[int]:
    """The postmaster and its children."""
    master = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == master:
            pids.append(int(entry))
    return pids


@contextlib.contextmanager
def stopped(cluster: PgCluster) -> Iterator[None]:
    pids = _cluster_pids(cluster)
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_postgresql_stopped_longer_than_the_commit_bound(tmp_path: Path) -> None:
    with running_cluster(tmp_root=memory_dir()) as cluster:
        url = cluster.new_schema()
        with faulted_server(tmp_path, url, BOUND) as run:
            load, srv = run.load, run.srv
            load.start()
            load.wait_acked(40)
            during: list[tuple[str, int, float]] = []
            with stopped(cluster):
                t_stop = time.monotonic()
                with httpx.Client(timeout=60) as c:
                    while time.monotonic() - t_stop < STOPPED:
                        t0 = time.monotonic()
                        r = c.get(srv.url + "/readyz")
                        during.append(("readyz", r.status_code, time.monotonic() - t0))
                        if time.monotonic() - t_stop > BOUND + 1:
                            assert r.status_code == 503, r.text
                            assert r.json()["checks"]["storage"]["ok"] is False, r.text
                        t0 = time.monotonic()
                        r = c.get(srv.url + "/checkpoint")  # from memory: still served
                        during.append(("checkpoint", r.status_code, time.monotonic() - t0))
                        assert r.status_code == 200
                        time.sleep(0.3)
                        n_before = len(load.answers)
            # What was sent while stopped was answered within the bound (and a margin for
            # a loaded machine), never held until the database came back.
            assert all(t < BOUND + 4 for _, _, t in during), during
            stalled = [a for a in load.answers[:n_before] if a.status != 200]
            assert stalled, "nothing was refused while the database was stopped?"
            assert all(a.elapsed < BOUND + 4 for a in stalled), [
                (a.kind, a.elapsed) for a in stalled
            ]
            # Back: writes of every kind work again, without a restart (faulted_server
            # checks one of each kind, the store and fsck when this block ends).
            load.wait_acked(40, bound=60)
            r = httpx.get(srv.url + "/readyz")
            assert r.status_code == 200, r.text
