"""review12: a large answer arriving at full speed is never cut because the *client* reads
it slowly.

The forwarder stops reading from the SP once about 1 MiB of an answer waits for the client
(backpressure). That wait is the client's, not the SP's: it counted against both the
per-read timeout (the SP was "silent" while the forwarder was not reading) and the whole-
answer deadline (red team 7), so a complete, steadily sent list answer to a client on a slow
link was broken off mid-body. The SP that trickles is still cut (the red team 7 tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client.adapters.forwarder import Forwarder
from tests.support import free_port

from .hostile import AsyncioUpstream, read_request

SIZE = 3 << 20  # three times what is buffered before reading pauses


class _Large(AsyncioUpstream):
    def __init__(self) -> None:
        self.port = free_port()

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await read_request(r)
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\n"
                + f"Content-Length: {SIZE}\r\n\r\n".encode()
            )
            w.write(b" " * SIZE)
            await w.drain()
            await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


@pytest.mark.slow
def test_a_slow_client_never_breaks_off_a_large_answer_sent_at_full_speed() -> None:
    up = _Large().start()
    fwd = Forwarder(f"http://127.0.0.1:{up.port}/v2", timeout=0.5, answer_timeout=1.0)
    got: list[dict[str, Any]] = []

    async def run() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(60)
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            got.append(msg)
            if msg["type"] == "http.response.body" and len(got) <= 3:
                await asyncio.sleep(1.2)  # the client's link: longer than both timeouts

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/v2/Users",
            "raw_path": b"/v2/Users",
            "query_string": b"",
            "headers": [(b"host", b"sp.example")],
            "client": ("127.0.0.1", 1),
            "scheme": "http",
        }
        await asyncio.wait_for(fwd(scope, receive, send), 30)

    try:
        asyncio.run(run())
    finally:
        up.stop()
    assert got[0]["type"] == "http.response.start" and got[0]["status"] == 200
    body = [m for m in got if m["type"] == "http.response.body"]
    assert body and body[-1]["more_body"] is False, "the answer was broken off"
    assert sum(len(m["body"]) for m in body) == SIZE
