"""Helpers of the adapter tests: an upstream SP on bare asyncio (``AsyncioUpstream``; one
that answers canned bytes per path; ``read_request``, a request off the wire),
``call_asgi`` (an ASGI app on one request, in process) and an outbox event record."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from client.adapters.middleware import ASGIApp

from ..support import free_port


async def read_request(
    r: asyncio.StreamReader,
) -> tuple[str, str, list[tuple[str, ...]], bytes]:
    """The next HTTP/1.1 request on ``r``: its method, target, headers (name and value, as
    sent) and body (``Content-Length`` bytes of it, none without one)."""
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = [tuple(x.split(": ", 1)) for x in lines[1:] if x]
    size = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await r.readexactly(size) if size else b""
    return method, target, headers, body


class AsyncioUpstream:
    """An HTTP/1.1 server on bare asyncio, in a thread of its own, on ``self.port``: a
    subclass's ``handle`` reads and answers each connection."""

    port: int

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self.handle, "127.0.0.1", self.port)
            )
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
            time.sleep(0.05)


@dataclass
class CannedUpstream(AsyncioUpstream):
    """An HTTP/1.1 server on bare asyncio whose every answer is ``answer(method, path)``
    bytes as they are (so every byte it sends is known); ``/v2/...`` paths it does not
    know get a small 201 JSON answer. Records each request it read."""

    answer: Callable[[str, str], bytes | None]
    port: int = field(default_factory=free_port)
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                method, target, _, body = await read_request(r)
                self.seen.append({"method": method, "target": target, "body": body})
                path = target.split("?")[0]
                canned = self.answer(method, path)
                if canned is None:
                    payload = json.dumps({"m": method, "len": len(body)}).encode()
                    canned = (
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/scim+json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(payload) + payload
                    )
                w.write(canned)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return


def call_asgi(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> list[dict[str, Any]]:
    """Run ``app`` in process (no server) on one HTTP request: ``method`` on ``path`` (no
    query), its ``headers`` and its ``body`` in one piece; return the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": list(headers),
    }
    asyncio.run(app(scope, receive, send))
    return sent
