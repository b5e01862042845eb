"""Ops30: the first reads after PostgreSQL went away are answered at once.

Red team 10 made reads answer 503 at once once the database is known down (a background
probe), but the first reads after it stopped each found their pooled connection dead and
waited ``RETRY_TIMEOUT`` (1 s) for the pool to hand a live one, which a stopped database
cannot give, then answered 503 "no database connection: ... PoolTimeout" (and a read that
found no idle connection waited the rest of ``POOL_TIMEOUT``). Now the probe starts with
that first failure and the wait for a pooled connection ends as soon as it finds the
database down: the very first read after the stop is answered 503 with the database's own
reason ("does not answer"), as every one after it; the signed checkpoint (held in memory)
is still served.

A real ``tlog serve`` on a real PostgreSQL cluster of the test's own, stopped under it. No
time is asserted: the answer's reason says which wait ended it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.pgsupport import running_cluster

from ..support import start_server

pytestmark = pytest.mark.slow


def _down(r: httpx.Response) -> bool:
    return r.status_code == 503 and "does not answer" in r.json().get("error", "")


def test_the_first_reads_after_postgresql_stops_are_answered_from_the_probe(
    tmp_path: Path,
) -> None:
    with running_cluster() as cluster:
        url = cluster.new_schema()
        data = tmp_path / "data"
        srv = start_server(data, None, database=url, timeout=90)
        try:
            token = (data / "demo-submitter.token").read_text().strip()
            h = {"Authorization": f"Bearer {token}"}
            with httpx.Client(timeout=60) as http:
                r = http.post(srv.url + "/v1/entries", content=b"before", headers=h)
                assert r.status_code == 200 and r.json()["index"] == 0, r.text
                entry = srv.url + "/v1/entries/0"
                for _ in range(3):  # the pool's connections used, idle in the pool
                    assert http.get(entry).content == b"before"
                checkpoint = http.get(srv.url + "/checkpoint")
                assert checkpoint.status_code == 200, checkpoint.text
                cluster.stop("fast")
                # the first read after the stop: its pooled connection is dead, and the
                # database's own failure answers it (not the pool's timeout)
                first = http.get(entry)
                assert _down(first), first.text
                assert first.headers.get("Retry-After"), first.headers
                ready = http.get(srv.url + "/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.json()["checks"]["storage"]["detail"] == "StoreUnreachable"
                # the signed checkpoint is answered from what the server holds
                again = http.get(srv.url + "/checkpoint")
                assert again.status_code == 200 and again.content == checkpoint.content
        finally:
            srv.stop()
        log_text = (tmp_path / "data-server.log").read_text()
        assert "DATABASE UNREACHABLE postgresql://" in log_text, log_text[-4000:]
        assert "Traceback" not in log_text, log_text[-4000:]
