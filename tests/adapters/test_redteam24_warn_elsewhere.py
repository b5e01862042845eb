"""Red team 24: the warning that a create's location names another server
(``exchange._warn_elsewhere``), against clients choosing that server.

An SP behind a reverse proxy commonly builds its locations from ``X-Forwarded-Host``,
which any client may send (the adapter, not trusting forwarded headers, compares the
location with the request's ``Host``): every client then chooses the server the warning
names. Held: at most 64 servers are named, once each. Found: the name went to the log as
the client sent it, so a header's obs-text byte ``\\x85`` (a line break to
``str.splitlines`` and many log viewers) forged a log line, and a host of thousands of
characters was logged 64 times over. The name is now escaped to printable ASCII and cut.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import client.adapters.exchange as exchange

from .helpers import USER, FakeLog, send_raw, serve_middleware


async def _echoing_sp(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An SP answering a create 201 at a location on the host it was asked as."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    fwd = dict(scope["headers"]).get(b"x-forwarded-host", b"sp.example").decode("latin-1")
    loc = f"https://{fwd}/v2/Users/u-1".encode("latin-1")
    body = json.dumps({"schemas": [USER], "userName": "a"}).encode()
    await send({"type": "http.response.start", "status": 201, "headers": [(b"location", loc)]})
    await send({"type": "http.response.body", "body": body})


def _create(port: int, fwd: bytes) -> int:
    body = json.dumps({"schemas": [USER], "userName": "a"}).encode()
    head = (
        b"POST /v2/Users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/scim+json\r\n"
        b"X-Forwarded-Host: "
        + fwd
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    return send_raw(port, head + body)


def test_redteam24_a_client_chosen_server_is_warned_bounded_and_printable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exchange._warned_servers.clear()
    caplog.set_level("WARNING", logger="client.adapters.exchange")
    log = FakeLog()
    srv = serve_middleware(_echoing_sp, tmp_path / "outbox.sqlite", log)
    hosts = [b"evil\x85WARNING forged line.example", b"h" * 6000 + b".example"]
    hosts += [f"s{i}.example".encode() for i in range(80)]
    try:
        for fwd in hosts:
            assert _create(srv.port, fwd) == 201
    finally:
        assert srv.serving.stop(15), "the server did not stop"
    said = [r.getMessage() for r in caplog.records if r.name == "client.adapters.exchange"]
    assert 0 < len(said) <= 64  # held
    assert all(m.isascii() and m.isprintable() for m in said), said[:2]  # the finding
    assert all(len(m) < 1000 for m in said), [len(m) for m in said][:2]  # the finding
    assert len(log.events) == len(hosts) and all(ev["rid"] == "-" for ev in log.events)
