"""The proxy's forwarding: byte-exact, keep-alive, errors; and the proxy app in process."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.adapters.proxy import Forwarder, ProxySettings, build_proxy
from tests.support import UvicornThread, free_port

from ..support import wait_for
from .helpers import FakeLog
from .hostile import AsyncioUpstream, call_asgi, read_request

GZ = gzip.compress(b'{"hello": "world"}')


@dataclass
class RawUpstream(AsyncioUpstream):
    """An HTTP/1.1 server written on bare asyncio, so that every byte it sends is known."""

    port: int = field(default_factory=free_port)
    seen: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        n_on_conn = 0
        try:
            while True:
                method, target, headers, body = await read_request(r)
                n_on_conn += 1
                self.seen.append(
                    {"method": method, "target": target, "headers": headers, "body": body}
                )
                path = target.split("?")[0]
                if path == "/v2/drop-second" and n_on_conn == 2:
                    w.close()  # an idle connection the server had given up on
                    return
                if path == "/v2/slow":
                    await asyncio.sleep(3)
                w.write(self.answer(method, path, body))
                await w.drain()
                if path in ("/v2/close", "/v2/eof"):
                    w.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return

    @staticmethod
    def answer(method: str, path: str, body: bytes) -> bytes:
        if path == "/v2/eof":  # no length, no chunks: the body ends with the connection
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
        if path == "/v2/continue":  # an interim answer first
            return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
        if path == "/v2/garbage":
            return b"HTTP/1.1 abc nonsense\r\n\r\n"
        if path == "/v2/huge-head":
            return b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 100_000 + b"\r\n\r\n"
        if path == "/v2/big":  # 3 MiB in chunks of 64 KiB: streamed, not held whole
            piece = b"%x\r\n" % 65536 + b"b" * 65536 + b"\r\n"
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + piece * 48 + b"0\r\n\r\n"
            )
        if path == "/v2/chunked":
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        if path == "/v2/gzip":
            return (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n" % len(GZ) + GZ
            )
        payload = json.dumps({"m": method, "len": len(body)}).encode()
        head = (
            b"HTTP/1.1 201 Created\r\nX-Dup: a\r\nx-dup: b\r\nSet-Cookie: s=1\r\n"
            b'ETag: W/"7"\r\nContent-Type: application/scim+json\r\nKeep-Alive: timeout=5\r\n'
            b"Content-Length: %d\r\n\r\n" % len(payload)
        )
        return head + (b"" if method == "HEAD" else payload)


@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    up = RawUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def proxy(upstream: RawUpstream) -> Iterator[UvicornThread]:
    fwd = Forwarder(f"http://127.0.0.1:{upstream.port}/v2", timeout=1.0)
    srv = UvicornThread(fwd, server_header=False, date_header=False)
    yield srv
    srv.stop()


def test_request_and_response_bytes_pass_unchanged(
    proxy: UvicornThread, upstream: RawUpstream
) -> None:
    body = b'{"schemas": ["x"],   "userName": "\xc3\xa9t\xc3\xa9"}'  # odd spacing, UTF-8
    with httpx.Client(base_url=proxy.url) as c:
        r = c.post(
            "/v2/Users?attributes=userName&x=%2F",
            content=body,
            headers=[
                ("Authorization", "Bearer t"),
                ("X-Multi", "1"),
                ("X-Multi", "2"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "drop me"),
            ],
        )
    assert r.status_code == 201
    got = upstream.seen[-1]
    assert got["method"] == "POST" and got["body"] == body
    assert got["target"] == "/v2/Users?attributes=userName&x=%2F"
    names = [k for k, _ in got["headers"]]  # ASGI servers lower-case request header names
    assert ("x-multi", "1") in got["headers"] and ("x-multi", "2") in got["headers"]
    assert "x-hop" not in names and "connection" not in names  # hop-by-hop
    assert ("host", f"127.0.0.1:{upstream.port}") in got["headers"]
    assert ("x-forwarded-for", "127.0.0.1") in got["headers"]
    assert ("x-forwarded-host", f"127.0.0.1:{proxy.port}") in got["headers"]
    # The answer: status, repeated headers in order (uvicorn lower-cases names), body bytes.
    raw = [(k.lower(), v) for k, v in r.headers.raw]
    assert raw[:3] == [(b"x-dup", b"a"), (b"x-dup", b"b"), (b"set-cookie", b"s=1")]
    assert (b"keep-alive", b"timeout=5") not in raw  # hop-by-hop
    assert r.content == b'{"m": "POST", "len": %d}' % len(body)


def test_chunked_gzip_head_and_keep_alive(proxy: UvicornThread, upstream: RawUpstream) -> None:
    with httpx.Client(base_url=proxy.url) as c:
        r = c.get("/v2/chunked")
        assert r.text == "hello world" and "transfer-encoding" in r.headers
        r = c.get("/v2/gzip", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["content-length"] == str(len(GZ))
        assert r.json() == {"hello": "world"}  # still the upstream's gzip bytes, decoded here
        r = c.head("/v2/Users/x")
        assert r.status_code == 201 and r.content == b""
        before = upstream.connections
        for _ in range(5):
            assert c.get("/v2/Users/x").status_code == 201
        assert upstream.connections - before <= 1  # one pooled upstream connection


def test_stale_pooled_connection_is_retried_once(
    proxy: UvicornThread, upstream: RawUpstream
) -> None:
    with httpx.Client(base_url=proxy.url) as c:
        assert c.get("/v2/drop-second").status_code == 201
        r = c.post("/v2/drop-second", content=b"{}")  # the pooled connection dies unanswered
        assert r.status_code == 201
        assert [s["method"] for s in upstream.seen] == ["GET", "POST", "POST"]


def test_upstream_errors_are_scim_errors(upstream: RawUpstream, proxy: UvicornThread) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = c.get("/v2/slow")  # the upstream never answers in time: the proxy's own timeout
        assert r.status_code == 504
        assert r.json()["status"] == "504"
        assert r.headers["content-type"] == "application/scim+json"
        r = c.get("/v2/close")
        assert r.status_code == 201
        upstream.stop()
        time.sleep(0.2)
        r = c.get("/v2/Users")
        assert r.status_code == 502 and "cannot be reached" in r.json()["detail"]


def test_answer_framings_and_broken_answers(proxy: UvicornThread, upstream: RawUpstream) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = c.get("/v2/eof")
        assert r.status_code == 200 and r.content == b"until the end"
        r = c.get("/v2/continue")
        assert r.status_code == 200 and r.content == b"final"
        r = c.get("/v2/big")
        assert r.status_code == 200 and r.content == b"b" * (48 * 65536)
        for path in ("/v2/garbage", "/v2/huge-head"):
            r = c.get(path)
            assert r.status_code == 502, path
            assert r.json()["detail"] == "the SCIM service provider broke the connection"
        assert c.get("/v2/Users/x").status_code == 201  # a fresh connection after each


def test_request_that_cannot_be_sent_is_refused(upstream: RawUpstream) -> None:
    fwd = Forwarder(f"http://127.0.0.1:{upstream.port}/v2", timeout=1.0)
    sent = call_asgi(fwd, "GET", "/v2/Users", headers=[(b"x-bad", b"line\r\nInjected: yes")])
    assert sent[0]["status"] == 400
    assert b"cannot be forwarded" in sent[1]["body"]
    assert upstream.seen == []


def test_proxy_app_records_writes_and_passes_reads(upstream: RawUpstream, tmp_path: Path) -> None:
    log = FakeLog()
    app = build_proxy(
        ProxySettings(
            upstream=f"http://127.0.0.1:{upstream.port}/v2",
            log_url="http://log.test",
            token="tok",
            tenant="t1",
            sp_id="raw",
            outbox=tmp_path / "o.sqlite",
        ),
        log_transport=log.transport(),
    )
    srv = UvicornThread(app, server_header=False, date_header=False)
    try:
        with httpx.Client(base_url=srv.url) as c:
            r = c.get("/v2/Users/abc")
            assert "tlog-status" not in r.headers and r.headers["x-request-id"]
            r = c.put(
                "/v2/Users/abc",
                content=b'{"userName": "x"}',
                headers={"X-Request-Id": "put-1", "If-Match": 'W/"6"'},
            )
            assert r.status_code == 201 and r.headers["tlog-status"] == "queued"
            assert r.headers["x-request-id"] == "put-1"
        assert ("x-request-id", "put-1") in upstream.seen[-1]["headers"]
        wait_for(lambda: len(log.events) == 1, 10, "one event delivered")
        ev = log.events[0]
        assert (ev["op"], ev["rid"], ev["ver"]) == (
            "replace",
            "abc",
            {"pre": 'W/"6"', "post": 'W/"7"'},
        )
        # The generated request id of the GET was passed to the upstream too.
        assert any(k.lower() == "x-request-id" for k, _ in upstream.seen[0]["headers"])
    finally:
        srv.stop()
