"""gaps9: one damaged record in the witness's state no longer takes ``/metrics`` down.

On main a scrape read every witnessed log's stored checkpoint with its damage check, and
the first damaged row (its root or size column not its signed note's, or a column not of
its type) raised out of the collector: ``/metrics`` answered 503 as a whole, so the
monitoring lost every number (request counters, the other logs' sizes) exactly when it was
needed. Now every metric that can be read is served, the damage is a gauge of its own
(``tlog_witness_state_damaged_records{kind}``), logged once at ERROR without the origin, and
never hidden: the push for that log is still refused and ``tlog-witness check`` still fails.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.witness.server import start_server
from client.witness.store import WitnessStore
from tests.witness.helpers import ORIGIN, FakeClock, FakeLog, events, make_witness

OTHER = "other-log.example.com/audit"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _two_logs(tmp_path: Path) -> tuple[FakeLog, FakeLog, Path]:
    a = FakeLog(events(50))
    b = FakeLog(events(40, "other-"), origin=OTHER, seed=bytes(range(64, 96)))
    db = tmp_path / "w.db"
    w = make_witness(db, [a.witnessed_log(), b.witnessed_log()], clock=FakeClock())
    try:
        w.add_checkpoint(a.body(0, 20))
        w.add_checkpoint(b.body(0, 30))
    finally:
        w.store.close()
    return a, b, db


def _damage(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, (ORIGIN,))
    conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        # a flipped bit in the root column (the note beside it still holds the true root)
        "UPDATE checkpoints SET root = zeroblob(32) WHERE origin = ?",
        # a size column that is not a number any more
        "UPDATE checkpoints SET size = 'x' WHERE origin = ?",
    ],
    ids=["root", "size-type"],
)
def test_one_damaged_checkpoint_row_leaves_the_rest_of_metrics(
    tmp_path: Path, sql: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, db = _two_logs(tmp_path)
    _damage(db, sql)
    w = make_witness(db, [a.witnessed_log(), b.witnessed_log()], clock=FakeClock())
    srv, thread = start_server(w)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            r = http.post("/add-checkpoint", content=b"garbage")
            assert r.status_code == 400
            with caplog.at_level(logging.ERROR, logger="tlog.witness"):
                r1 = http.get("/metrics")
                r2 = http.get("/metrics")
            assert r1.status_code == 200, r1.text
            assert r2.status_code == 200, r2.text
            got = samples(r1.text)
            # the other log's gauges, the request counters and the evidence count are served
            assert got[("tlog_witness_log_cosigned_tree_size", (("origin", OTHER),))] == 30
            assert ("tlog_witness_log_cosigned_tree_size", (("origin", ORIGIN),)) not in got
            assert got[("tlog_witness_add_checkpoint_requests_total", (("status", "400"),))] == 1
            assert got[("tlog_witness_evidence_records", ())] == 0
            # the damage itself is a metric
            assert got[("tlog_witness_state_damaged_records", (("kind", "checkpoint"),))] == 1
            assert got[("tlog_witness_state_readable", ())] == 1
            # logged once (two scrapes), at ERROR, without the log's origin
            errors = [
                rec
                for rec in caplog.records
                if rec.levelno >= logging.ERROR and "damaged" in rec.getMessage()
            ]
            assert len(errors) == 1, [rec.getMessage() for rec in caplog.records]
            assert ORIGIN not in errors[0].getMessage()
            # readiness: the witness still serves the other log; the damage is named
            r = http.get("/readyz")
            assert r.status_code == 200, r.text
            assert "damaged" in r.json()["state_db"]
            # never hidden: a push for the damaged log is refused, the other log cosigns
            r = http.post("/add-checkpoint", content=a.body(20, 30))
            assert r.status_code == 503, (r.status_code, r.text)
            r = http.post("/add-checkpoint", content=b.body(30, 40))
            assert r.status_code == 200, (r.status_code, r.text)
            got = samples(http.get("/metrics").text)
            assert got[("tlog_witness_log_cosigned_tree_size", (("origin", OTHER),))] == 40
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        w.store.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE checkpoints SET root = zeroblob(32) WHERE origin = ?",
        "UPDATE checkpoints SET size = 'x' WHERE origin = ?",
    ],
    ids=["root", "size-type"],
)
def test_damaged_row_still_fails_tlog_witness_check(tmp_path: Path, sql: str) -> None:
    """The operator's tool still reports the damage the metrics count (a column of the
    wrong type made it crash with a ValueError)."""
    from client.witness.cli import EXIT_STATE, main
    from tests.witness.helpers import write_config

    a = FakeLog(events(50))
    cfg = write_config(tmp_path, a)
    from client.witness.config import WitnessConfig

    config = WitnessConfig.load(cfg)
    db = tmp_path / "state.db"
    from client.witness.core import Witness

    w = Witness(config.signer(), config.logs, WitnessStore(db), clock=FakeClock())
    try:
        w.add_checkpoint(a.body(0, 20))
    finally:
        w.store.close()
    _damage(db, sql)
    assert main(["check", "--config", str(cfg)]) == EXIT_STATE


def test_unreadable_state_still_serves_the_request_metrics(tmp_path: Path) -> None:
    """The state failing as a whole (injected I/O error): /metrics still answers 200 with
    the request counters and ``tlog_witness_state_readable 0`` (it was 503 with nothing)."""
    a, b, db = _two_logs(tmp_path)
    w = make_witness(db, [a.witnessed_log(), b.witnessed_log()], clock=FakeClock())
    srv, thread = start_server(w)
    try:

        def broken(origin: str) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        w.latest = broken  # type: ignore[method-assign,assignment]
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            assert http.post("/add-checkpoint", content=b"garbage").status_code == 400
            r = http.get("/metrics")
            assert r.status_code == 200, r.text
            got = samples(r.text)
            assert got[("tlog_witness_state_readable", ())] == 0
            assert got[("tlog_witness_add_checkpoint_requests_total", (("status", "400"),))] == 1
            assert ("tlog_witness_log_cosigned_tree_size", (("origin", OTHER),)) not in got
            assert http.get("/readyz").status_code == 503
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        w.store.close()
