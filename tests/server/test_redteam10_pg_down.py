"""Red team 10, part 3: PostgreSQL down, reads answer 503 at once.

Before, with the database stopped, every read that needs it (an entry, ``/readyz``'s store
read) waited the storage bound (``--storage-timeout``, 5 s) for a pooled connection that
could not come, then answered 503: a client, a load balancer's probe, each waited 5 s per
request. Now a connection that broke, or a pool that gave none, has a background probe try
the database; once a connection attempt failed, the database is known down and every read
and write is answered 503 at once (its reason, ``Retry-After``, nothing written), until the
probe (every 0.5 s) finds it answering again: then service resumes by itself.

A real ``tlog serve`` on a real PostgreSQL server of the test's own, stopped and started.
No timing is asserted tighter than "well under the 5 s bound" (2.5 s)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.pgsupport import running_cluster

from ..support import start_server

pytestmark = pytest.mark.slow

BOUND = 5.0  # --storage-timeout (the default): what a read waited before
WELL_UNDER = BOUND / 2


def _timed(fn: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = fn()
    return r, time.monotonic() - t0


def _down(r: httpx.Response) -> bool:
    return r.status_code == 503 and "does not answer" in r.json().get("error", "")


def test_reads_answer_503_at_once_while_postgresql_is_down_and_resume(tmp_path: Path) -> None:
    with running_cluster() as cluster:
        url = cluster.new_schema()
        data = tmp_path / "data"
        srv = start_server(data, None, "--storage-timeout", f"{BOUND:g}", database=url, timeout=90)
        try:
            token = (data / "demo-submitter.token").read_text().strip()
            h = {"Authorization": f"Bearer {token}"}
            http = httpx.Client(timeout=60)
            r = http.post(srv.url + "/v1/entries", content=b"before", headers=h)
            assert r.status_code == 200 and r.json()["index"] == 0, r.text
            entry = srv.url + "/v1/entries/0"
            assert http.get(entry).content == b"before"
            metrics = http.get(srv.url + "/metrics").text
            assert "tlog_store_reachable 1.0" in metrics, metrics
            assert "tlog_store_outages_total 0.0" in metrics, metrics

            cluster.stop("fast")
            # The first reads find the pool's connections dead (and may wait for the bound
            # once); then the database is known down.
            deadline = time.monotonic() + 60
            while not _down(http.get(entry)):
                assert time.monotonic() < deadline, "never answered 'does not answer'"
                time.sleep(0.1)
            for _ in range(5):
                r, took = _timed(lambda: http.get(entry))
                assert _down(r), r.text
                assert r.headers.get("Retry-After"), r.headers
                assert took < WELL_UNDER, took  # at once, not after the 5 s bound
                r, took = _timed(lambda: http.get(srv.url + "/readyz"))
                assert r.status_code == 503 and took < WELL_UNDER, (r.text, took)
                assert r.json()["checks"]["storage"] == {"ok": False, "detail": "StoreUnreachable"}
            r, took = _timed(lambda: http.post(srv.url + "/v1/entries", content=b"x", headers=h))
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
            assert took < WELL_UNDER, took
            assert httpx.get(srv.url + "/healthz").status_code == 200  # alive throughout
            metrics = http.get(srv.url + "/metrics").text  # answered without the database
            assert "tlog_store_reachable 0.0" in metrics, metrics
            assert "tlog_store_outages_total 1.0" in metrics, metrics

            cluster.start()
            deadline = time.monotonic() + 60
            while http.get(entry).status_code != 200:
                assert time.monotonic() < deadline, "service did not come back"
                time.sleep(0.2)
            assert http.get(entry).content == b"before"
            deadline = time.monotonic() + 60
            while (
                r := http.post(srv.url + "/v1/entries", content=b"after", headers=h)
            ).status_code != 200:
                assert r.status_code == 503, r.text
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            assert r.json()["index"] == 1  # nothing lost, nothing written twice
            deadline = time.monotonic() + 30
            while http.get(srv.url + "/readyz").status_code != 200:
                assert time.monotonic() < deadline, http.get(srv.url + "/readyz").text
                time.sleep(0.2)
            metrics = http.get(srv.url + "/metrics").text
            assert "tlog_store_reachable 1.0" in metrics, metrics
            assert "tlog_store_outages_total 1.0" in metrics, metrics  # one outage, counted once
            http.close()
        finally:
            srv.stop()
        log_text = (tmp_path / "data-server.log").read_text()
        assert "DATABASE UNREACHABLE postgresql://" in log_text, log_text[-4000:]
        assert "answers again: reads and writes resume" in log_text, log_text[-4000:]
        assert "Traceback" not in log_text, log_text[-4000:]
