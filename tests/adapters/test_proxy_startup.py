"""``tlog scim-proxy`` refuses to start when its log, token and tenant do not fit, and shows
its audit backlog."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import httpx
import pytest

from client.adapters.proxy import (
    LogUnreachable,
    ProxySettings,
    StartupError,
    check_log,
)
from tests.scim_service.conftest import ORIGIN, T1, URL, Harness, harness  # noqa: F401
from tests.support import UvicornThread, free_port, tlog_cli

from .helpers import undeliverable_proxy


def settings(token: str, tenant: str = T1, **kw: object) -> ProxySettings:
    return ProxySettings(
        upstream="http://127.0.0.1:9/v2", log_url=URL, token=token, tenant=tenant, sp_id="sp", **kw
    )  # type: ignore[arg-type]


def test_matching_token_tenant_and_log_start(harness: Harness) -> None:  # noqa: F811
    info = check_log(settings(harness.tok["sub1"], log_origin=ORIGIN), http=harness.client)
    assert info["origin"] == ORIGIN


@pytest.mark.parametrize(
    ("token", "tenant", "origin", "needle"),
    [
        ("sub2", T1, None, "bound to tenant"),  # a token of another tenant
        ("aud1", T1, None, "needs a submitter"),  # the wrong role
        ("admin", T1, None, "needs a submitter"),
        (None, T1, None, "refuses the token"),  # not a token of this log
        ("sub1", T1, "other.example/log", "not 'other.example/log'"),  # another log
    ],
)
def test_mismatch_refuses_to_start(
    harness: Harness,  # noqa: F811
    token: str | None,
    tenant: str,
    origin: str | None,
    needle: str,
) -> None:
    tok = harness.tok[token] if token else "tlog_" + "x" * 40
    with pytest.raises(StartupError, match=needle):
        check_log(settings(tok, tenant, log_origin=origin), http=harness.client)


def test_unreachable_or_foreign_log_refuses(harness: Harness) -> None:  # noqa: F811
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    # Unreachable is not a mismatch: the proxy starts and queues (the outage test restarts a
    # proxy while the log is down); a log answering 5xx is the same.
    with pytest.raises(LogUnreachable, match="cannot be reached"):
        check_log(settings("t"), http=httpx.Client(transport=httpx.MockTransport(down)))

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="down")

    with pytest.raises(LogUnreachable, match="503"):
        check_log(settings("t"), http=httpx.Client(transport=httpx.MockTransport(broken)))

    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>")

    with pytest.raises(StartupError, match="not JSON"):
        check_log(settings("t"), http=httpx.Client(transport=httpx.MockTransport(html)))


class _RefusingLog(http.server.BaseHTTPRequestHandler):
    """A log that describes itself and refuses every token (as a real one does a foreign one)."""

    def do_GET(self) -> None:
        if self.path == "/v1/log":
            body, status = b'{"origin": "example.com/log", "tree_size": 0}', 200
        else:
            body, status = b'{"error": "unauthorized"}', 401
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_cli_exits_without_serving(tmp_path: Path) -> None:
    token = tmp_path / "t.token"
    token.write_text("tlog_whatever\n")
    port = free_port()
    log = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingLog)
    threading.Thread(target=log.serve_forever, daemon=True).start()
    try:
        out = tlog_cli(
            "scim-proxy",
            "--upstream",
            "http://127.0.0.1:9/v2",
            "--log",
            f"http://127.0.0.1:{log.server_address[1]}",
            "--token-file",
            str(token),
            "--tenant",
            "t1",
            "--sp-id",
            "sp",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-key-tofu",
            "--outbox",
            str(tmp_path / "o.sqlite"),
            timeout=60,
        )
    finally:
        log.shutdown()
        log.server_close()
    assert out.returncode == 2
    assert "refusing to start" in out.stderr and "refuses the token" in out.stderr
    assert "tlog_whatever" not in out.stderr + out.stdout  # never the token


def test_backlog_is_visible(tmp_path: Path) -> None:
    app = undeliverable_proxy(tmp_path / "o.sqlite")
    srv = UvicornThread(app)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            st = c.get("/.tlog/status").json()
            assert st["pending"] == 0 and st["oldest_ms"] is None
            r = c.delete("/v2/Users/u1")  # upstream unreachable: 502, still an event
            assert r.status_code == 502 and r.headers["tlog-status"] == "queued"
            st = c.get("/.tlog/status").json()
            assert st["pending"] == 1 and st["oldest_ms"] >= 0 and st["events"] == 1
            assert st["pending_bytes"] > 0 and st["relay_healthy"] in (True, False)
        assert app.backlog()["pending"] == 1  # the same, for a metrics exporter
    finally:
        srv.stop()


def test_own_endpoints_answer_get_and_head_only(tmp_path: Path) -> None:
    """The proxy's /.tlog/ endpoints are dispatched without a web framework: GET and HEAD
    answer, another method is 405 (not forwarded to the SP), and any other path, even under
    /.tlog/, is the SP's (here unreachable: 502)."""
    from starlette.testclient import TestClient

    app = undeliverable_proxy(tmp_path / "o.sqlite")
    with TestClient(app) as c:
        r = c.head("/.tlog/healthz")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["cache-control"] == "no-store"
        r = c.post("/.tlog/status", content=b"{}")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        assert c.get("/.tlog/status").json()["events"] == 0  # the POST was no SCIM write
        assert c.get("/.tlog/nothing").status_code == 502
