"""The witness's HTTP endpoints as a plain ASGI application (no framework, no server imports).

Endpoints (c2sp.org/tlog-witness, submission and monitoring prefix = the server root):

* ``POST /add-checkpoint``: body as in the spec, at most 128 KiB (413 beyond, 411 without a
  Content-Length). 200 with the cosignature line(s), ``text/plain; charset=utf-8``; every
  refusal (this module's too) an exception of :mod:`client.witness.core`, answered with
  the status of its one table (``STATUS``, through ``status_of``; 409 carries
  ``<size>\\n`` as ``text/x.tlog.size``).
* ``GET /<lowercase hex SHA-256(origin)>/checkpoint``: the latest cosigned checkpoint (log
  signature + our cosignature), 404 if we never cosigned that origin.
* ``GET /evidence``: recorded split-view evidence, JSON ``{"evidence": [...]}``.

Every response has a Content-Length. The witness's work (signature checks, the SQLite
compare-and-swap with ``synchronous=FULL``) is blocking, so it runs in a worker thread; the
event loop only parses HTTP. A body that does not arrive within ``body_timeout`` seconds is
answered 408 and the connection closed. The server that runs this (uvicorn, with header and
idle timeouts and a connection limit) is in :mod:`client.witness.server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from client.net.witness_client import MAX_BODY_SIZE
from client.witness.core import (
    AddCheckpointError,
    BadRequest,
    LengthRequired,
    PayloadTooLarge,
    RequestTimeout,
    Witness,
    status_of,
)

__all__ = ["WitnessApp"]

logger = logging.getLogger("client.witness.server")
T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT = "text/plain; charset=utf-8"
MAX_HEAD_SIZE = 16 * 1024  # request headers, all together
_DRAIN_LIMIT = 4 * MAX_BODY_SIZE
PUSH_THREADS = 8  # add-checkpoint requests processed at once (the rest wait their turn)
_CHECKPOINT_PATH = re.compile(r"/([0-9a-f]{64})/checkpoint")


class StateStalled(Exception):
    """The state database did not answer within the app's ``state_timeout``."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"the witness's state database did not answer within {timeout:g} s (a stalled disk?)"
        )


class WitnessApp:
    """ASGI 3 application serving one :class:`Witness`."""

    def __init__(
        self, witness: Witness, *, body_timeout: float = 10.0, state_timeout: float = 60.0
    ) -> None:
        self.witness = witness
        self.body_timeout = body_timeout
        # A request's wait on the state (red team 27): on a stalled disk (an fsync, or a
        # page of SQLite's shared memory that never comes back) a push and even /readyz
        # waited for the thaw, with no answer and no log line. Past this, 503; the thread
        # still waiting commits or fails on its own, and nothing it does is cosigned.
        self.state_timeout = state_timeout
        from client.witness.metrics import WitnessMetrics  # prometheus_client: server only

        self.metrics = WitnessMetrics(witness)
        # Pushes run on their own threads, not on the default pool the reads use: a push
        # waits for the state's write lock (another process, a stalled disk under a commit)
        # up to the store's timeout, and a few dozen stuck pushes starved every read
        # (GET /<hash>/checkpoint, /readyz, /metrics). SQLite serialises the commits anyway.
        self._pushes = ThreadPoolExecutor(PUSH_THREADS, thread_name_prefix="witness-push")

    async def _on_state(
        self, fn: Callable[..., T], *args: object, pool: ThreadPoolExecutor | None = None
    ) -> T:
        """``fn(*args)`` in a worker thread (``pool``, else the default one), waited for at
        most ``state_timeout`` seconds: then :class:`StateStalled`."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(pool, fn, *args)
        try:
            return await asyncio.wait_for(fut, self.state_timeout)
        except TimeoutError:
            logger.error(
                "the state database did not answer within %g s (a stalled disk?)",
                self.state_timeout,
            )
            raise StateStalled(self.state_timeout) from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not spoken here
            return
        method, path = scope["method"], scope["path"]
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEAD_SIZE:
            await _respond(send, 431, "request headers too large\n", close=True)
            return
        try:
            if path in ("/healthz", "/readyz", "/metrics") and method in ("GET", "HEAD"):
                await self._ops(path, send, head=method == "HEAD")
                return
            if path == "/add-checkpoint":
                if method == "POST":
                    t0 = time.perf_counter()
                    status = await self._add_checkpoint(scope, receive, send)
                    self.metrics.observe(status, time.perf_counter() - t0)
                elif method in ("GET", "HEAD"):
                    await _respond(send, 405, "use POST\n", headers={"allow": "POST"})
                else:
                    await _respond(send, 405, "method not allowed\n", headers={"allow": "POST"})
                return
            if method not in ("GET", "HEAD"):
                status = 404 if method == "POST" else 405
                await _respond(send, status, "not found\n" if status == 404 else "no\n", close=True)
                return
            head = method == "HEAD"
            m = _CHECKPOINT_PATH.fullmatch(path)
            if m is not None:
                note = await self._on_state(self.witness.checkpoint_by_hash, m.group(1))
                if note is None:
                    await _respond(send, 404, "no cosigned checkpoint for this origin\n", head=head)
                else:
                    await _respond(
                        send, 200, note, head=head, headers={"cache-control": "no-cache"}
                    )
                return
            if path == "/evidence":
                evidence = await self._on_state(self.witness.evidence)
                doc = {"evidence": [e.to_json() for e in evidence]}
                body = json.dumps(doc, indent=1) + "\n"
                await _respond(send, 200, body, "application/json", head=head)
                return
            await _respond(send, 404, "not found\n", head=head)
        except (sqlite3.Error, StateStalled) as exc:  # damaged, unreadable now: not a crash
            logger.error("%s %s: the state database cannot be read: %s", method, path, exc)
            body = f"the witness's state database cannot be read now ({exc})\n"
            await _respond(send, 503, body, close=True, head=method == "HEAD")
        except Exception:
            logger.exception("%s %s: internal error", method, path)
            await _respond(send, 500, "internal error\n", close=True, head=method == "HEAD")

    async def _ops(self, path: str, send: Send, *, head: bool = False) -> None:
        """Liveness, readiness (the state database reads) and Prometheus metrics; HEAD
        answers as GET without the body (a load balancer's HEAD probe was a 404)."""
        if path == "/healthz":
            await _respond(send, 200, '{"status":"ok"}', "application/json", head=head)
        elif path == "/readyz":
            try:
                ok, detail = await self._on_state(self.metrics.ready)
            except StateStalled as exc:
                ok, detail = False, str(exc)
            body = json.dumps({"status": "ready" if ok else "not ready", "state_db": detail})
            await _respond(send, 200 if ok else 503, body, "application/json", head=head)
        else:
            from client.witness.metrics import CONTENT_TYPE_LATEST

            data = await self._on_state(self.metrics.exposition)
            await _respond(send, 200, data, CONTENT_TYPE_LATEST, head=head)

    async def _add_checkpoint(self, scope: Scope, receive: Receive, send: Send) -> int:
        try:
            body = await self._read_body(scope, receive)
        except AddCheckpointError as exc:  # the body's framing: the connection is closed
            status = status_of(exc)
            await _respond(send, status, exc.body(), exc.content_type, close=True)
            return status
        try:
            cosigs = await self._on_state(self.witness.add_checkpoint, body, pool=self._pushes)
        except StateStalled as exc:
            body_text = (
                f"{exc}; no cosignature was returned (the push may still complete once the "
                "disk answers): retry later\n"
            )
            await _respond(send, 503, body_text)
            return 503
        except AddCheckpointError as exc:
            status = status_of(exc)
            logger.info("add-checkpoint: %d %s", status, exc)
            await _respond(send, status, exc.body(), exc.content_type)
            return status
        await _respond(send, 200, cosigs)
        return 200

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        headers = {k.lower(): v for k, v in scope["headers"]}
        if b"transfer-encoding" in headers:
            raise LengthRequired("chunked bodies are not supported; send Content-Length")
        length_b = headers.get(b"content-length")
        if length_b is None or not length_b.isdigit():
            raise LengthRequired("Content-Length required")
        length = int(length_b)
        if length > MAX_BODY_SIZE:
            if length <= _DRAIN_LIMIT:
                # Read (and drop) a moderately oversized body first, so that the client sees
                # the 413 rather than a connection reset while it is still sending.
                await self._receive_all(receive, length, keep=False)
            raise PayloadTooLarge(f"body larger than {MAX_BODY_SIZE} bytes")
        return await self._receive_all(receive, length, keep=True)

    async def _receive_all(self, receive: Receive, length: int, *, keep: bool) -> bytes:
        chunks: list[bytes] = []
        got = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise RequestTimeout("request body too slow") from None
            if msg["type"] == "http.disconnect":
                raise BadRequest("client went away")
            chunk = msg.get("body", b"")
            got += len(chunk)
            if got > length:
                raise BadRequest("body longer than Content-Length")
            if keep:
                chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        if got != length:
            raise BadRequest("truncated body")
        return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self._pushes.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(
    send: Send,
    status: int,
    body: str | bytes,
    content_type: str = _TEXT,
    *,
    head: bool = False,
    close: bool = False,
    headers: dict[str, str] | None = None,
) -> None:
    data = body.encode("utf-8") if isinstance(body, str) else body
    raw = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(data)).encode("ascii")),
    ]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else data})
