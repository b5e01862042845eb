"""A hostile or broken SCIM service provider behind the proxy's forwarder: every answer the
proxy cannot pass on as HTTP/1.1 is a 502 SCIM error (never a 500, a dropped connection or
a 504 after the timeout), and what the forwarder does pass on is one answer, unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from client.adapters.proxy import Forwarder
from tests.support import UvicornThread

from .hostile import CannedUpstream

BROKEN = "the SCIM service provider broke the connection"


def _hostile(method: str, path: str) -> bytes | None:
    if path == "/v2/switch":  # 101 the proxy never asked for (it forwards no Upgrade)
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n"
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
    if path == "/v2/status-999":
        return b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok"
    if path == "/v2/status-000":
        return b"HTTP/1.1 000 Weird\r\nContent-Length: 2\r\n\r\nok"
    if path == "/v2/two-answers":  # a second answer in the same segment as the first
        return (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Evil: 1\r\n\r\nbad"
        )
    if path == "/v2/trailers":  # trailer fields are no header fields (RFC 9110 §6.5)
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer: late\r\nSet-Cookie: evil=1\r\n\r\n"
        )
    return None


@pytest.fixture
def upstream() -> Iterator[CannedUpstream]:
    up = CannedUpstream(_hostile).start()
    yield up
    up.stop()


@pytest.fixture
def proxy(upstream: CannedUpstream) -> Iterator[UvicornThread]:
    # A long timeout: an answer the forwarder waits on instead of refusing shows as a 504.
    fwd = Forwarder(f"http://127.0.0.1:{upstream.port}/v2", timeout=30.0)
    srv = UvicornThread(fwd, server_header=False, date_header=False)
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", ["/v2/switch", "/v2/status-999", "/v2/status-000"])
def test_unusable_status_is_a_502(proxy: UvicornThread, path: str) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = c.get(path)
        assert r.status_code == 502, r.text
        assert r.json()["detail"] == BROKEN
        assert c.get("/v2/Users/x").status_code == 201  # the proxy goes on


def test_a_second_answer_in_the_same_read_is_not_merged(proxy: UvicornThread) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = c.get("/v2/two-answers")
        assert r.status_code == 200
        assert r.content == b"hello"
        assert r.headers.get_list("content-length") == ["5"] and "x-evil" not in r.headers
        r = c.get("/v2/Users/x")  # not answered from what the upstream sent too much
        assert r.status_code == 201 and r.json() == {"m": "GET", "len": 0}


def test_trailer_fields_do_not_become_header_fields(proxy: UvicornThread) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = c.get("/v2/trailers")
        assert r.status_code == 200 and r.content == b"hello"
        assert "x-trailer" not in r.headers and "set-cookie" not in r.headers


# -- a hostile client ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/Users/.search"), ("GET", "/v2/Users"), ("OPTIONS", "/v2/Users")],
)
def test_a_huge_body_on_a_read_is_413_not_buffered(
    upstream: CannedUpstream, method: str, path: str
) -> None:
    # Writes are bounded by the audit middleware (max_body); everything else reaches the
    # forwarder as it is, which must bound what it holds as well.
    fwd = Forwarder(f"http://127.0.0.1:{upstream.port}/v2", timeout=30.0, max_body=1 << 20)
    srv = UvicornThread(fwd, server_header=False, date_header=False)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.request(method, path, content=b"x" * (2 << 20))
            assert r.status_code == 413, r.text
            assert r.json()["status"] == "413"
            body = b" " * 1000  # and without a Content-Length (chunked)
            r = c.request(method, path, content=iter([body] * 2048))
            assert r.status_code == 413, r.text
            r = c.request(method, path, content=b'{"filter": "userName eq \\"a\\""}')
            assert r.status_code == 201
    finally:
        srv.stop()
    assert [s["method"] for s in upstream.seen] == [method]
