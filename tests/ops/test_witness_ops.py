"""tlog-witness serve: /healthz, /readyz and /metrics parse and move."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from client.net.witness_client import WitnessClient
from client.witness.server import start_server
from tests.witness.helpers import ORIGIN, FakeClock, FakeLog, events, make_witness


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_witness_health_readiness_metrics(tmp_path: Path) -> None:
    log = FakeLog(events(50))
    w = make_witness(tmp_path / "w.db", [log.witnessed_log()], clock=FakeClock(1_700_000_000))
    srv, thread = start_server(w)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            r = http.get("/readyz")
            assert r.status_code == 200 and r.json()["status"] == "ready"
            before = samples(http.get("/metrics").text)
            assert ("tlog_witness_log_cosigned_tree_size", (("origin", ORIGIN),)) not in before
            with WitnessClient(srv.url, w.vkey()) as client:
                client.submit(log.checkpoint(50), log.consistency_proof)
            r = http.post("/add-checkpoint", content=b"garbage")
            assert r.status_code == 400
            after = samples(http.get("/metrics").text)
        assert after[("tlog_witness_log_cosigned_tree_size", (("origin", ORIGIN),))] == 50
        assert after[("tlog_witness_add_checkpoint_requests_total", (("status", "200"),))] >= 1
        assert after[("tlog_witness_add_checkpoint_requests_total", (("status", "400"),))] == 1
        assert after[("tlog_witness_add_checkpoint_duration_seconds_count", ())] >= 2
        assert after[("tlog_witness_evidence_records", ())] == 0

        # The state database failing (injected): not ready, still alive.
        def broken() -> list[object]:
            raise sqlite3.OperationalError("disk I/O error")

        w.evidence = broken  # type: ignore[method-assign,assignment]
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            assert http.get("/readyz").status_code == 503
            assert http.get("/healthz").status_code == 200
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
