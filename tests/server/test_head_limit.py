"""The hardened runner's head limit holds however the head arrives: a head over
``max_head_bytes`` that reaches the server complete, in one read, is refused with 431 like
one dribbled in pieces, and the app never sees the request."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from client.runtime.serving import ServerLimits, ServingThread, hardened_config, hardened_server
from tests.support import free_port

LIMIT = 8 * 1024


class _App:
    def __init__(self) -> None:
        self.calls: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls.append(len(scope["headers"]))
        if scope["path"] == "/slow":  # still answering when the next request comes
            await asyncio.sleep(1.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, _App]]:
    app = _App()
    port = free_port()
    cfg = hardened_config(
        app,
        "127.0.0.1",
        port,
        ServerLimits(max_head_bytes=LIMIT),
        http=request.param,
        log_level="warning",
        lifespan="off",
    )
    st = ServingThread(hardened_server(cfg))
    st.start(10)
    try:
        yield port, app
    finally:
        st.stop(10)


def _read_all(s: socket.socket) -> bytes:
    """What the server sent until it closed (or reset) the connection or went quiet."""
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return got
        if not chunk:
            return got
        got += chunk


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        return _read_all(s)


def test_head_over_the_limit_in_one_read_is_431(server: tuple[int, _App]) -> None:
    port, app = server
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"X-Pad: " + b"p" * 200 + b"\r\n") * 60 + b"\r\n"
    assert LIMIT < len(head) < 16 * 1024  # one segment on loopback
    got = _exchange(port, head)
    assert got.startswith(b"HTTP/1.1 431"), got[:80]
    assert app.calls == []


def test_head_under_the_limit_with_a_big_body_in_the_same_read(server: tuple[int, _App]) -> None:
    port, app = server
    body = b"b" * (4 * LIMIT)
    req = (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    got = _exchange(port, req)
    assert got.startswith(b"HTTP/1.1 200"), got[:80]
    assert app.calls == [3]


def test_a_head_at_the_limit_whose_blank_line_spans_two_reads(server: tuple[int, _App]) -> None:
    """The end of a head under the limit split between two reads ("...\\r\\n" | "\\r\\n" and
    a body holding a blank line further on) is found where it is, not in the body."""
    port, app = server
    lines = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 40000\r\n"
    pad = b"X-Pad: " + b"p" * (LIMIT - len(lines) - 200) + b"\r\n"
    body = b"b" * 1000 + b"\r\n\r\n" + b"b" * (40000 - 1004)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(lines + pad)  # the head, but for its blank line
        time.sleep(0.3)  # a separate read (loopback, no delay)
        s.sendall(b"\r\n" + body)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:80]
    assert app.calls == [4]


def _pipelined(port: int, first: bytes, second: bytes, pause: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(first)
        if pause:
            time.sleep(pause)
        try:
            s.sendall(second)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_all(s)


@pytest.mark.parametrize("pause", [0.0, 0.3])
def test_a_pipelined_head_over_the_limit_never_reaches_the_app(
    server: tuple[int, _App], request: pytest.FixtureRequest, pause: float
) -> None:
    """Behind a small request, in the same read or while it is answered, a head over the
    limit: the app sees the first request only."""
    port, app = server
    big = (
        b"GET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + (b"X-Pad: " + b"p" * 200 + b"\r\n") * 60
        + b"\r\n"
    )
    _pipelined(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", big, pause)
    assert app.calls == [1]
