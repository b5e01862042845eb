"""Forwarding headers (``X-Forwarded-For``/``-Proto``) count only from the proxies named in
``forwarded_allow_ips``: by default from nobody, 127.0.0.1 included (uvicorn's own default
trusts the loopback, so any local process chose the address a request was logged under).

Real requests over TCP from 127.0.0.1 with forged headers: to an app under the runner every
program uses (``client.runtime.serving``), to the real ``tlog serve`` (its access line), to the
proxy's forwarder and to the witness's server."""

from __future__ import annotations

import json
import socket
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.runtime.serving import parse_forwarded_allow_ips
from tests.support import UvicornThread, start_server, tlog_in_process

FORGED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}


class Echo:
    """An ASGI app answering with the client address and scheme its request carries."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _seen(**kw: Any) -> dict[str, str]:
    srv = UvicornThread(Echo(), **kw)
    try:
        got: dict[str, str] = httpx.get(srv.url + "/", headers=FORGED, timeout=10).json()
        return got
    finally:
        srv.stop()


@pytest.fixture
def uvicorn_env_trusts_everyone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """uvicorn's own variable, which its default reads: must not matter to the runner."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    yield


def test_the_runner_believes_no_forwarding_header_by_default(
    uvicorn_env_trusts_everyone: None,
) -> None:
    assert _seen() == {"client": "127.0.0.1", "scheme": "http"}
    assert _seen(forwarded_allow_ips=()) == {"client": "127.0.0.1", "scheme": "http"}


def test_the_runner_believes_the_named_proxies_only() -> None:
    assert _seen(forwarded_allow_ips=("127.0.0.1",)) == {"client": "203.0.113.9", "scheme": "https"}
    assert _seen(forwarded_allow_ips=("127.0.0.0/8",)) == {
        "client": "203.0.113.9",
        "scheme": "https",
    }
    # another proxy named: the loopback's headers still do not count
    assert _seen(forwarded_allow_ips=("10.0.0.0/8", "::1")) == {
        "client": "127.0.0.1",
        "scheme": "http",
    }
    # proxy_headers=False (the SCIM proxy's own choice) wins over a list
    assert _seen(forwarded_allow_ips=("127.0.0.1",), proxy_headers=False) == {
        "client": "127.0.0.1",
        "scheme": "http",
    }


def test_star_is_believed_from_everyone_and_said_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="tlog.serving"):
        assert _seen(forwarded_allow_ips=("*",)) == {"client": "203.0.113.9", "scheme": "https"}
    assert any("EVERY client" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", ()),
        ("127.0.0.1", ("127.0.0.1",)),
        (" 10.0.0.1 , 10.1.0.0/16,::1 ", ("10.0.0.1", "10.1.0.0/16", "::1")),
        ("0:0:0:0:0:0:0:1", ("::1",)),
        ("fd00::/8", ("fd00::/8",)),
        ("*", ("*",)),
    ],
)
def test_parse_accepts_addresses_networks_and_star(text: str, want: tuple[str, ...]) -> None:
    assert parse_forwarded_allow_ips(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "localhost",  # a name: uvicorn would take it as a literal that never matches
        "10.0.0.1/8",  # host bits set
        "10.0.0.256",
        "10.0.0.1,",
        ",",
        "10.0.0.1;10.0.0.2",
        "*,10.0.0.1",
        "unix:/run/x.sock",
        "10.0.0.0/33",
    ],
)
def test_parse_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_forwarded_allow_ips(text)


def test_tlog_serve_refuses_a_malformed_list_before_anything_is_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = tlog_in_process("serve", "--data", str(data), "--forwarded-allow-ips", "10.0.0.1/8")
    assert r.returncode == 2, r
    assert "--forwarded-allow-ips" in r.stderr and "10.0.0.1/8" in r.stderr, r.stderr
    assert not data.exists()


def test_tlog_serve_setting_from_env_and_config_file(tmp_path: Path) -> None:
    from tlog.config import ServeConfig, from_sources

    cfg = tmp_path / "tlog.toml"
    cfg.write_text('forwarded_allow_ips = "10.0.0.0/8, 192.0.2.7"\n')
    assert from_sources(ServeConfig, file=cfg, env={}).forwarded_allow_ips == (
        "10.0.0.0/8, 192.0.2.7"
    )
    env = {"TLOG_FORWARDED_ALLOW_IPS": "::1"}
    assert from_sources(ServeConfig, file=cfg, env=env).forwarded_allow_ips == "::1"
    assert ServeConfig().forwarded_allow_ips == ""
    # tlog config check finds a malformed value in a file
    cfg.write_text('forwarded_allow_ips = "proxy.internal"\n')
    r = tlog_in_process("config", "check", str(cfg))
    assert r.returncode == 1 and "proxy.internal" in r.stderr, r
    # and serve refuses it with exit 2, naming where the setting comes from
    r = tlog_in_process("serve", "--data", str(tmp_path / "d"), "--config", str(cfg))
    assert r.returncode == 2 and "TLOG_FORWARDED_ALLOW_IPS" in r.stderr, r
    assert "forwarded_allow_ips" in r.stderr and "proxy.internal" in r.stderr, r
    assert not (tmp_path / "d").exists()


def _access_lines(data: Path, *flags: str) -> str:
    srv = start_server(data, None, "--log-level", "info", "--access-log", *flags)
    try:
        # a raw request, so that nothing but what is written here is sent
        req = (
            b"GET /checkpoint HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(req)
            while s.recv(65536):
                pass
    finally:
        srv.stop()
    return (data.parent / f"{data.name}-server.log").read_text("utf-8", "replace")


@pytest.mark.slow
def test_tlog_serve_access_line_names_the_peer_unless_its_proxy_is_named(
    tmp_path: Path,
) -> None:
    text = _access_lines(tmp_path / "plain")
    lines = [ln for ln in text.splitlines() if "GET /checkpoint" in ln]
    assert lines and all("203.0.113.9" not in ln for ln in lines), text
    assert any("127.0.0.1:" in ln for ln in lines), text
    text = _access_lines(tmp_path / "proxied", "--forwarded-allow-ips", "127.0.0.1")
    lines = [ln for ln in text.splitlines() if "GET /checkpoint" in ln]
    assert any("203.0.113.9" in ln for ln in lines), text
    assert "forwarding headers believed from 127.0.0.1" in text, text


@pytest.mark.slow
def test_tlog_serve_star_is_said_loudly_at_start(tmp_path: Path) -> None:
    text = _access_lines(tmp_path / "star", "--forwarded-allow-ips", "*")
    assert "WARNING --forwarded-allow-ips '*'" in text, text
    assert "EVERY client" in text, text  # the runner's WARNING line too


def test_scim_proxy_records_its_peer_not_a_forged_header() -> None:
    """``tlog scim-proxy`` appends the connecting peer to ``X-Forwarded-For`` itself (and
    records it as the event's ``src.ip``): run as ``main_proxy`` runs it, a forged header
    from 127.0.0.1 stays the client's claim, and the peer appended is the real one."""
    import asyncio

    from client.adapters.proxy import Forwarder
    from tests.adapters.hostile import AsyncioUpstream, read_request
    from tests.support import free_port

    seen: list[list[tuple[str, str]]] = []

    class Up(AsyncioUpstream):
        async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            _, _, headers, _ = await read_request(r)
            seen.append(headers)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await w.drain()
            w.close()

    up = Up()
    up.port = free_port()  # type: ignore[attr-defined]
    up.start()
    try:
        fwd = Forwarder(f"http://127.0.0.1:{up.port}/v2", timeout=5.0)  # type: ignore[attr-defined]
        # what main_proxy passes (checked below), over the list an operator might give
        srv = UvicornThread(fwd, proxy_headers=False, forwarded_allow_ips=("127.0.0.1",))
        try:
            assert httpx.get(srv.url + "/v2/Users", headers=FORGED, timeout=10).status_code == 200
        finally:
            srv.stop()
    finally:
        up.stop()
    assert ("x-forwarded-for", "203.0.113.9, 127.0.0.1") in seen[-1], seen


def test_scim_proxy_runs_without_proxy_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import client.adapters.proxy as proxy_mod

    got: dict[str, Any] = {}
    monkeypatch.setattr(proxy_mod, "check_log", lambda s: {"origin": "o", "vkey": "v"})
    # the app as main_proxy reads it after the server stopped (a shutdown that finished)
    app = types.SimpleNamespace(close_unfinished=False)
    monkeypatch.setattr(proxy_mod, "build_proxy", lambda s: app)

    def fake_run(app: Any, host: str, port: int, limits: Any, **kw: Any) -> bool:
        got.update(kw)
        return False

    monkeypatch.setattr(proxy_mod, "run_hardened", fake_run)
    tok = tmp_path / "t"
    tok.write_text("t\n")
    cfg = proxy_mod.ProxyConfig(
        upstream="http://127.0.0.1:1/v2",
        log_url="http://127.0.0.1:1",
        token_file=tok,
        tenant="t",
        sp_id="s",
        log_key="k",
    )
    proxy_mod.main_proxy(cfg)
    assert got.get("proxy_headers") is False, got


def test_witness_server_believes_no_forwarding_header(
    uvicorn_env_trusts_everyone: None, tmp_path: Path
) -> None:
    """``tlog-witness serve``'s server (``WitnessHTTPServer``) runs on the same runner: no
    proxy headers, whatever uvicorn's own variable says."""
    from client.witness.server import WitnessHTTPServer
    from tests.witness.helpers import make_witness

    server = WitnessHTTPServer(("127.0.0.1", 0), make_witness(tmp_path / "w.db", []))
    try:
        assert server._server.config.proxy_headers is False
        server.start()
        assert httpx.get(server.url + "/nope", headers=FORGED, timeout=10).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
