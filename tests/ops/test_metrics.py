"""/healthz, /readyz and /metrics of the log server: they parse, they move, they tell the truth."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.scim_service.conftest import Harness, user_event
from tests.scim_service.conftest import harness as scim_harness  # noqa: F401
from tests.server.conftest import make_signer
from tlog.server import build_app

from ..support import serve_config


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    return scrape_at(client, "/metrics")


def value(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def app_client(tmp_path: Path, database: str | None) -> Iterator[tuple[TestClient, str]]:
    app, log_, tokens = build_app(serve_config(tmp_path, database, batch_age_ms=0.0), make_signer())
    token, _ = tokens.create("submitter", tenant="t1")
    with TestClient(app) as client:
        yield client, token
    log_.storage.close()


def test_metrics_parse_and_move(app_client: tuple[TestClient, str]) -> None:
    client, token = app_client
    before = scrape(client)
    assert value(before, "tlog_tree_size") == 0
    auth = {"Authorization": f"Bearer {token}"}
    for i in range(5):
        assert client.post("/v1/entries", content=f"e{i}".encode(), headers=auth).status_code == 200
    body = b"".join(len(e).to_bytes(2, "big") + e for e in [b"b1", b"b2", b"b3"])
    assert client.post("/v1/entries/batch", content=body, headers=auth).status_code == 200
    assert client.get("/v1/proof/inclusion", params={"index": 1}).status_code == 200
    assert client.get("/v1/entries/3").status_code == 200
    assert client.get("/v1/entries/99").status_code == 404
    assert client.post("/v1/entries", content=b"x").status_code == 401
    assert client.get("/no/such/u-alice").status_code == 404
    after = scrape(client)
    assert value(after, "tlog_tree_size") == 8
    assert (
        value(after, "tlog_http_requests_total", route="/v1/entries", method="POST", status="200")
        == 5
    )
    assert (
        value(after, "tlog_http_requests_total", route="/v1/entries", method="POST", status="401")
        == 1
    )
    assert (
        value(
            after,
            "tlog_http_requests_total",
            route="/v1/entries/{index}",
            method="GET",
            status="404",
        )
        == 1
    )
    assert value(after, "tlog_http_requests_total", route="other", method="GET", status="404") == 1
    assert (
        value(
            after,
            "tlog_http_request_duration_seconds_count",
            route="/v1/proof/inclusion",
            method="GET",
        )
        == 1
    )
    # No raw paths (identifiers) become labels.
    assert not any("u-alice" in str(k) for k in after)
    assert value(after, "tlog_batch_entries_count") >= 2
    assert value(after, "tlog_batch_entries_sum") == 8
    assert value(after, "tlog_commit_duration_seconds_count") >= 2
    assert value(after, "tlog_backlog_entries") == 0
    assert value(after, "tlog_checkpoint_age_seconds") >= 0


def test_healthz_and_readyz(app_client: tuple[TestClient, str]) -> None:
    client, _ = app_client
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert set(checks) >= {"writer", "storage", "signing", "backlog"}
    assert all(c["ok"] for c in checks.values())


def test_readyz_is_503_when_writes_are(app_client: tuple[TestClient, str]) -> None:
    client, token = app_client
    api = client.app.api  # type: ignore[attr-defined]
    api.log.halt("test: a witness holds another history")
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["signing"]["ok"] is False
    w = client.post("/v1/entries", content=b"x", headers={"Authorization": f"Bearer {token}"})
    assert w.status_code == 503
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert value(scrape(client), "tlog_halted") == 1


def test_readyz_when_the_writer_stopped(app_client: tuple[TestClient, str]) -> None:
    client, token = app_client
    client.app.api.seq.stop()  # type: ignore[attr-defined]
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["writer"]["ok"] is False
    w = client.post("/v1/entries", content=b"x", headers={"Authorization": f"Bearer {token}"})
    assert w.status_code == 503


def test_scim_events_counted_by_action_and_outcome(scim_harness: Harness) -> None:  # noqa: F811
    h = scim_harness
    assert h.post_event(user_event()).status_code == 200
    assert h.post_event(user_event(req="r2", outcome="failure", rid="u-2")).status_code == 200
    m = scrape(h.client)
    assert value(m, "tlog_scim_events_total", action="patch", outcome="success") == 1
    assert value(m, "tlog_scim_events_total", action="patch", outcome="failure") == 1


def test_refused_tokens_are_warnings_without_the_token(
    app_client: tuple[TestClient, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, token = app_client
    bad = token[:-4] + "AAAA"
    with caplog.at_level(logging.WARNING):
        r = client.post("/v1/entries", content=b"x", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    refused = [rec for rec in caplog.records if "refused" in rec.getMessage()]
    assert refused and refused[0].levelno == logging.WARNING
    assert all(
        bad not in rec.getMessage() and token not in rec.getMessage() for rec in caplog.records
    )


def test_proxy_health_readiness_and_outbox_metrics(tmp_path: Path) -> None:
    from client.adapters.proxy import ProxySettings, build_proxy

    # Nothing listens on either port: the SP write fails (502, recorded as a failure) and the
    # relay cannot deliver, so the event stays in the outbox.
    settings = ProxySettings(
        upstream="http://127.0.0.1:9/v2",
        log_url="http://127.0.0.1:9",
        token="tlog_x",
        tenant="acme",
        sp_id="hr",
        outbox=tmp_path / "outbox.sqlite",
        outbox_max_bytes=1 << 20,
    )
    with TestClient(build_proxy(settings)) as client:
        assert client.get("/.tlog/healthz").json() == {"status": "ok"}
        assert client.get("/.tlog/readyz").status_code == 200
        m = scrape_at(client, "/.tlog/metrics")
        assert value(m, "tlog_proxy_outbox_pending_events") == 0
        user = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "alice"}
        r = client.post("/v2/Users", json=user)
        assert r.status_code == 502
        m = scrape_at(client, "/.tlog/metrics")
        assert value(m, "tlog_proxy_outbox_pending_events") >= 1
        assert value(m, "tlog_proxy_outbox_pending_bytes") > 0
        assert value(m, "tlog_proxy_outbox_oldest_age_seconds") >= 0
        assert value(m, "tlog_proxy_events_total", kind="events") >= 1


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_at(client: TestClient, path: str) -> Samples:
    r = client.get(path)
    assert r.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
