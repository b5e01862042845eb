"""The proxy's server side sends each answer in one write (client.runtime.serving,
``coalesce_writes``): the head and body uvicorn writes separately leave together, in order,
and nothing is lost or delayed past the loop iteration, closed or aborted connections
included."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from client.runtime.serving import (
    ServingThread,
    _CoalescingTransport,
    hardened_config,
    hardened_server,
)
from tests.support import listening_socket


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_writes_of_one_iteration_leave_as_one() -> None:
    async def run() -> tuple[list[bytes], list[bytes], int]:
        real = FakeTransport()
        t = _CoalescingTransport(real)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"")
        t.write(memoryview(b"body"))
        before = list(real.writes)
        pending = t.get_write_buffer_size()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return before, real.writes, pending

    before, after, pending = asyncio.run(run())
    assert before == []
    assert after == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert pending == len(b"HTTP/1.1 200 OK\r\n\r\nbody")


def test_close_flushes_first_and_abort_drops() -> None:
    async def run() -> tuple[FakeTransport, FakeTransport]:
        a, b = FakeTransport(), FakeTransport()
        ta = _CoalescingTransport(a)  # type: ignore[arg-type]
        tb = _CoalescingTransport(b)  # type: ignore[arg-type]
        ta.write(b"last words")
        ta.close()
        tb.write(b"never sent")
        tb.abort()
        await asyncio.sleep(0)
        assert ta.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated
        return a, b

    a, b = asyncio.run(run())
    assert a.writes == [b"last words"] and a.closed
    assert b.writes == [] and b.aborted


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = scope["path"].encode() * 3
    headers = [(b"content-length", str(len(body)).encode())]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def server() -> Iterator[int]:
    sock = listening_socket()
    port = sock.getsockname()[1]
    config = hardened_config(
        _app, "127.0.0.1", port, lifespan="on", log_config=None, coalesce_writes=True
    )
    st = ServingThread(hardened_server(config), [sock], name="coalescing")
    st.start(timeout=30)
    try:
        yield port
    finally:
        st.stop(10)
        sock.close()


def _read_until_closed(c: socket.socket) -> bytes:
    out = b""
    while chunk := c.recv(65536):
        out += chunk
    return out


def test_a_real_server_answers_in_order_and_keeps_alive(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as c:
        c.sendall(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /bb HTTP/1.1\r\nhost: x\r\n\r\n")
        c.sendall(b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n")
        got = _read_until_closed(c)  # the third answer closes the connection
    answers = got.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 3
    assert answers[0].endswith(b"\r\n\r\n/a/a/a")
    assert answers[1].endswith(b"\r\n\r\n/bb/bb/bb")
    assert b"connection: close" in answers[2] and answers[2].endswith(b"/close/close/close")
