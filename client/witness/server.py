"""The witness's HTTP server: :class:`client.witness.asgi.WitnessApp` on uvicorn, hardened.

uvicorn is the one server dependency of ``client/``, and only of this module's functions: it
is imported when a server is built, never when ``client.witness`` is imported, so a verifier
or a library user of the witness core needs no web stack (``tests/witness/test_imports.py``).

Limits against slow or idle clients (issue 7 part 4, the same for ``tlog-witness``):

* ``header_timeout``: a connection must deliver a request's headers within this many seconds
  of its first byte (or of being opened); otherwise it is closed. uvicorn has no such timeout
  of its own, so a protocol subclass arms one timer per request head.
* ``idle_timeout``: keep-alive connections idle this long between requests are closed
  (uvicorn's ``timeout_keep_alive``).
* ``body_timeout``: the whole body must arrive within this many seconds (408 otherwise), in
  the ASGI app.
* ``max_connections``: above this many open connections plus in-flight requests, uvicorn
  answers 503 (``limit_concurrency``); the listen backlog is bounded too.
* Request heads are capped at 16 KiB (431; h11 also stops buffering a head that size),
  bodies at 128 KiB (413).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from client.witness.asgi import MAX_HEAD_SIZE, WitnessApp
from client.witness.core import Witness

__all__ = ["ServerLimits", "WitnessHTTPServer", "start_server"]

logger = logging.getLogger("client.witness.server")


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts (seconds) and the connection limit. See the module docstring."""

    header_timeout: float = 10.0
    idle_timeout: int = 30
    body_timeout: float = 10.0
    max_connections: int = 512
    backlog: int = 256

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.idle_timeout, self.body_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1 or self.backlog < 1:
            raise ValueError("max_connections and backlog must be at least 1")


def _guarded_protocol(header_timeout: float) -> type[Any]:
    """uvicorn's HTTP protocol with a deadline on every request head.

    A timer is armed when the connection opens and whenever bytes arrive while no request is
    in flight; it closes the connection unless a new request's headers were parsed by then
    (uvicorn replaces ``self.cycle`` exactly then).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._head_timer is None:
                self._arm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            mark = self.cycle

            def expire() -> None:
                self._head_timer = None
                if self.cycle is mark and not self.transport.is_closing():
                    logger.info("closing a connection that sent no request head in time")
                    self.transport.close()

            self._head_timer = self.loop.call_later(header_timeout, expire)

    return GuardedH11Protocol


class WitnessHTTPServer:
    """Serves one :class:`Witness` on uvicorn. ``url`` is ``http://host:port`` once bound.

    The socket is bound in the constructor (port 0 picks a free one). :meth:`serve_forever`
    blocks until :meth:`shutdown` (from another thread); :meth:`server_close` releases the
    socket.
    """

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        limits: ServerLimits | None = None,
    ) -> None:
        import uvicorn

        self.witness = witness
        self.limits = limits or ServerLimits()
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(self.limits.backlog)
        self._sock.setblocking(False)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        config = uvicorn.Config(
            WitnessApp(witness, body_timeout=self.limits.body_timeout),
            http=_guarded_protocol(self.limits.header_timeout),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=self.limits.idle_timeout,
            limit_concurrency=self.limits.max_connections,
            backlog=self.limits.backlog,
            h11_max_incomplete_event_size=MAX_HEAD_SIZE,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._done = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self._sock.close()


def start_server(
    witness: Witness,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
) -> tuple[WitnessHTTPServer, threading.Thread]:
    """Bind and serve in a daemon thread. Stop with ``server.shutdown(); server.server_close()``."""
    server = WitnessHTTPServer((host, port), witness, limits)
    thread = threading.Thread(target=server.serve_forever, name="witness-http", daemon=True)
    thread.start()
    return server, thread
