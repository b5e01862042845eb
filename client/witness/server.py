"""The witness's HTTP server: :class:`client.witness.asgi.WitnessApp` on uvicorn, hardened.

It runs on the same hardened uvicorn runner as ``tlog serve`` (:mod:`client.runtime.serving`: header
and body timeouts, a head-size limit, a connection limit that evicts idle or slow
connections first), which loads uvicorn only when a server is built, so importing
``client.witness`` needs no web stack (``tests/witness/test_imports.py``).

Limits (config keys of ``tlog-witness``, see :class:`ServerLimits`):

* ``header_timeout``: a request head must be complete this many seconds after the
  connection opened or the previous response; else 408 and close (or just close if
  nothing was sent).
* ``idle_timeout``: keep-alive connections idle this long between requests are closed.
* ``body_timeout``: the whole body must arrive within this many seconds: the app answers 408
  (the runner's own body timer, one second later, is the backstop).
* ``write_timeout``: a client that leaves a response unread (its send buffer not draining)
  this long is disconnected (reset), so slow readers cannot pin responses and connections.
* ``max_connections``: at most this many open connections; a new one evicts the oldest idle
  or still-sending connection, and is refused with 503 only when all are busy.
* Request heads are capped at 16 KiB (431), bodies at 128 KiB (413).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass

from client.runtime.serving import ServerLimits as RunnerLimits
from client.runtime.serving import (
    ServerStartError,
    ServingThread,
    hardened_config,
    hardened_server,
)
from client.witness.asgi import MAX_HEAD_SIZE, WitnessApp
from client.witness.core import Witness

__all__ = ["ServerLimits", "ServerStartError", "WitnessHTTPServer", "start_server"]

logger = logging.getLogger("client.witness.server")


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts (seconds) and the connection limit. See the module docstring."""

    header_timeout: float = 10.0
    idle_timeout: int = 30
    body_timeout: float = 10.0
    write_timeout: float = 30.0
    max_connections: int = 512
    backlog: int = 256
    # A request's wait on the state database (a stalled disk: an fsync or a page of its
    # map that never returns) before it is answered 503 (red team 27).
    state_timeout: float = 60.0

    def __post_init__(self) -> None:
        timeouts = (self.header_timeout, self.idle_timeout, self.body_timeout, self.write_timeout)
        if min(*timeouts, self.state_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1 or self.backlog < 1:
            raise ValueError("max_connections and backlog must be at least 1")

    def runner(self) -> RunnerLimits:
        return RunnerLimits(
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout + 1.0,  # the app's own 408 comes first
            keep_alive=self.idle_timeout,
            write_timeout=self.write_timeout,
            max_connections=self.max_connections,
            max_head_bytes=MAX_HEAD_SIZE,
            backlog=self.backlog,
        )


class WitnessHTTPServer:
    """Serves one :class:`Witness` on uvicorn. ``url`` is ``http://host:port`` once bound.

    The socket is bound in the constructor (port 0 picks a free one). :meth:`start` serves
    in a daemon thread and returns once the server listens (or raises
    :class:`~client.runtime.serving.ServerStartError`); :meth:`shutdown` stops it and
    :meth:`server_close` releases the socket.
    """

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        limits: ServerLimits | None = None,
    ) -> None:
        self.witness = witness
        self.limits = limits or ServerLimits()
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP, and without it every response (head and body are two writes)
        # waits ~40 ms for the client's delayed ACK.
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(self.limits.backlog)
        self._sock.setblocking(False)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        config = hardened_config(
            WitnessApp(
                witness,
                body_timeout=self.limits.body_timeout,
                state_timeout=self.limits.state_timeout,
            ),
            host,
            self.server_address[1],
            self.limits.runner(),
            lifespan="off",
            log_config=None,
            access_log=False,
            date_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = hardened_server(config)
        self._serving = ServingThread(self._server, [self._sock], name="witness-http")

    @property
    def url(self) -> str:
        host, port = self.server_address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def thread(self) -> threading.Thread:
        """The serving thread (started by :meth:`start`)."""
        return self._serving.thread

    @property
    def started(self) -> bool:
        """uvicorn finished its start-up (set by the serving thread)."""
        return bool(self._server.started)

    def start(self, timeout: float = 30.0) -> None:
        """Serve in a daemon thread; return once the server accepts connections.

        Raises :class:`ServerStartError` if start-up fails (from the serving thread's
        exception) or does not finish within ``timeout`` seconds; the server is then
        stopped and its socket closed.
        """
        try:
            self._serving.start(timeout)
        except BaseException:
            self.shutdown(1.0)
            self.server_close()
            raise

    def shutdown(self, timeout: float = 10.0) -> None:
        if not self._serving.stop(timeout):
            logger.warning("the witness's HTTP server did not stop within %g s", timeout)

    def server_close(self) -> None:
        self._sock.close()


def start_server(
    witness: Witness,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
    timeout: float = 30.0,
) -> tuple[WitnessHTTPServer, threading.Thread]:
    """Bind and serve in a daemon thread; return once it accepts connections. Stop with
    ``server.shutdown(); server.server_close()``.

    Raises :class:`ServerStartError` (the socket closed again) if the server does not
    start within ``timeout`` seconds or its thread ends first.
    """
    server = WitnessHTTPServer((host, port), witness, limits)
    server.start(timeout)
    return server, server.thread
