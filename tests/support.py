"""Test helpers shared by every test package (defined once, imported where needed)."""

from __future__ import annotations

import socket
import sys
import time

__all__ = ["free_port", "slow_reader", "wait_reset"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slow_reader(address: tuple[str, int], request: bytes) -> socket.socket:
    """A client that sends ``request`` and then never reads: its receive buffer is made
    small so the server's answer backs up into the server's own buffers at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(20)
    s.connect(address)
    s.sendall(request)
    return s


def wait_reset(s: socket.socket, bound: float = 30.0) -> bool:
    """Wait, without reading, until the peer resets or closes ``s`` (its TCP state leaves
    ESTABLISHED); False if it is still established after ``bound`` seconds."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        import pytest

        pytest.skip("reads the TCP state with TCP_INFO (Linux)")
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1:  # TCP_ESTABLISHED
            return True
        time.sleep(0.1)
    return False
