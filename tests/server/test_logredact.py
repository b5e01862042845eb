"""Issue 10 part 4: access and error logs never carry query values, identifiers or tokens."""

from __future__ import annotations

import io
import logging
import signal
from pathlib import Path

import httpx
import pytest

from client.runtime import logredact
from client.runtime.logredact import RedactingFilter, redact_target, redact_text
from client.scim import event_to_json, new_event
from tests.support import start_server, token_for

RID = "u-alice-7f3a"
XID = "alice.liddell@example.org"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (f"/v1/scim/events?rid={RID}&limit=5", "/v1/scim/events?rid=*&limit=*"),
        (f"/v1/scim/events?xid={XID}", "/v1/scim/events?xid=*"),
        ("/v1/entries?token=tlog_AAAAAAAAAAAAAAAA", "/v1/entries?token=*"),
        (f"/v2/Users/{RID}", "/v2/Users/{id}"),
        (f"/acme/v2/Users/{RID}?attributes=userName", "/{id}/v2/Users/{id}?attributes=*"),
        ("/tile/0/x001/234.p/5", "/tile/0/x001/234.p/5"),
        ("/tile/entries/000.p/3", "/tile/entries/000.p/3"),
        ("/v1/proof/inclusion?index=3&tree_size=9", "/v1/proof/inclusion?index=*&tree_size=*"),
        ("/v1/scim/erasures/0123abcd/approve", "/v1/scim/erasures/{id}/approve"),
        (f"/v1/x?{XID}", "/v1/{id}?{id}=*"),
        ("/checkpoint", "/checkpoint"),
    ],
)
def test_redact_target(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_redact_text() -> None:
    text = (
        "Authorization: Bearer tlog_SECRETSECRETSECRET\n"
        "from http://h/v1/scim/events?rid=u-1 token=abc123 with tlog_OTHERSECRET1\nCookie: s=1"
    )
    out = redact_text(text)
    for secret in ("SECRETSECRET", "u-1", "abc123", "s=1", "OTHERSECRET"):
        assert secret not in out
    assert "http://h/v1/scim/events?rid=*" in out


def _capture(logger_name: str) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    lg = logging.getLogger(logger_name)
    lg.handlers = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    logredact.install(lg)
    return lg, buf


def test_filter_on_access_records_and_tracebacks() -> None:
    lg, buf = _capture("uvicorn.access")
    target = f"/v1/scim/events?rid={RID}"
    lg.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", target, "1.1", 200)
    assert "/v1/scim/events?rid=*" in buf.getvalue() and RID not in buf.getvalue()
    err, ebuf = _capture("tlog.test.err")
    try:
        raise KeyError(f"no subject {RID} / {XID}")
    except KeyError:
        err.exception("unhandled error")
    text = ebuf.getvalue()
    assert "Traceback" in text and "KeyError: (message redacted)" in text
    assert RID not in text and XID not in text  # the exception message is gone


def test_uvicorn_config_has_the_filter_on_every_handler() -> None:
    import uvicorn.config

    cfg = logredact.uvicorn_log_config(uvicorn.config.LOGGING_CONFIG)
    assert cfg["handlers"] and all("redact" in h["filters"] for h in cfg["handlers"].values())
    assert "filters" not in uvicorn.config.LOGGING_CONFIG["handlers"]["access"]  # a copy
    logging.config.dictConfig(cfg)
    for h in logging.getLogger("uvicorn.access").handlers:
        assert any(isinstance(f, RedactingFilter) for f in h.filters)


@pytest.mark.slow
def test_served_access_and_error_logs_carry_no_identifiers(
    tmp_path: Path, database: str | None
) -> None:
    data = tmp_path / "tlog-data"
    srv = start_server(
        data, None, "--access-log", "--log-level", "info", "--no-demo-token", database=database
    )
    tokens: dict[str, str] = {}
    try:
        for name, role, extra in [
            ("sub", "submitter", ["--tenant", "t1"]),
            ("aud", "auditor", ["--tenant", "t1"]),
            ("po", "privacy-officer", ["--person", "Dana Officer"]),
        ]:
            tokens[name] = token_for(data, database, "--role", role, *extra)
        ev = new_event(
            tenant="t1",
            sp="app",
            op="patch",
            rt="User",
            rid=RID,
            xid=XID,
            actor={"kind": "user", "id": "admin-bob"},
            corr="req-1",
            req={"m": "PATCH", "p": f"/Users/{RID}", "dig": bytes(32), "len": 1},
            res=200,
            outcome="success",
            mods=[{"attr": "active", "old": "true", "new": "false"}],
        )
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            h = {"Authorization": f"Bearer {tokens['sub']}", "Content-Type": "application/json"}
            r = c.post("/v1/scim/events", content=event_to_json(ev), headers=h)
            assert r.status_code == 200
            ha = {"Authorization": f"Bearer {tokens['aud']}"}
            assert c.get("/v1/scim/events", params={"rid": RID}, headers=ha).status_code == 200
            assert c.get("/v1/scim/events", params={"xid": XID}, headers=ha).status_code == 200
            # A token put in a query string, an identifier in a path, a bad token.
            c.get("/v1/scim/events", params={"access_token": tokens["aud"], "rid": RID})
            c.get(f"/v1/scim/erasures/{RID}", headers={"Authorization": f"Bearer {tokens['po']}"})
            c.get("/checkpoint", headers={"Authorization": "Bearer tlog_" + "Z" * 43})
            body = {"tenant": "t1", "rt": "User", "rid": RID, "reason": "gdpr"}
            r = c.post(
                "/v1/scim/erasures", json=body, headers={"Authorization": f"Bearer {tokens['po']}"}
            )
            assert r.status_code == 201, r.text
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) in (0, -signal.SIGTERM)
    out = (tmp_path / "tlog-data-server.log").read_text()
    assert "GET /v1/scim/events?rid=* HTTP/1.1" in out  # the access log is on
    assert "/v1/scim/erasures/{id}" in out
    for secret in (RID, XID, "admin-bob", "req-1", *tokens.values(), "Z" * 43):
        assert secret not in out, secret
