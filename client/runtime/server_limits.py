"""The per-connection limits of :func:`client.runtime.serving.run_hardened`, alone.

A settings table of ``tlog serve`` and ``tlog scim-proxy``, which every ``tlog`` command
describes at each start: defined here, a command that serves nothing does not load the
runner (asyncio, sockets) to build its options. :mod:`client.runtime.serving` still
exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """Per-connection limits and timeouts of :func:`run_hardened` (seconds, bytes)."""

    header_timeout: float = 10.0  # seconds to send a complete request head (then 408)
    body_timeout: float = 60.0  # seconds to send a request body after its head
    keep_alive: int = 5  # seconds an idle keep-alive connection stays open
    write_timeout: float = 30.0  # seconds a client may leave a response unread (then reset)
    max_connections: int = 1000  # open connections; over it the oldest idle one is closed
    max_head_bytes: int = 32 * 1024  # bytes of request line and headers (then 431)
    backlog: int = 2048  # the listen socket's accept queue
