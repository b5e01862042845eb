"""Loopback ports, waiting for a condition or a server, and stopping processes (bounded,
never forever)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable

import httpx

__all__ = ["STARTUP_TIMEOUT", "free_port", "http_get", "stop_processes", "wait_for", "wait_http"]

# How long a test waits for a process to come up or a condition to hold before it fails.
# Generous on purpose: success returns at once, and a loaded 2-core CI machine can take
# many seconds to start a Python process (a fixed 20 s made tests flaky there).
STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    cond: Callable[[], object],
    timeout: float = STARTUP_TIMEOUT,
    what: str | Callable[[], str] = "condition",
    *,
    step: float = 0.02,
) -> None:
    """Poll ``cond`` every ``step`` seconds until it is true; fail (AssertionError naming
    ``what``, or what it returns at that moment) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said}: not within {timeout} s")
        time.sleep(step)


_CLIENT: httpx.Client | None = None
_CLIENT_LOCK = threading.Lock()


def http_get(url: str, timeout: float = 30.0) -> httpx.Response:
    """``httpx.get(url, timeout=timeout)``, on one client of this process, each request on
    a fresh connection (no keep-alive) as a new client's would be. ``httpx.get`` makes a
    client per call, its TLS context with the whole CA file parsed: ~20-40 ms of CPU, which
    a loop polling every 50 ms (a test waiting for a server to start) took from the server
    it waited for."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
        client = _CLIENT
    return client.get(url, timeout=timeout)


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = STARTUP_TIMEOUT,
    *,
    ok: Callable[[httpx.Response], bool] = lambda r: True,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url`` until it answers (an answer ``ok`` accepts); fail at once, with the
    process's ``output``, when ``proc`` exits first, and after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}: {output()}")
        try:
            if ok(http_get(url, timeout=1)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    if proc is not None:
        proc.kill()
        proc.wait(10)
    raise RuntimeError(f"{url} did not come up within {timeout} s: {output()}")


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM every process still running (all at once, so they stop in parallel), then
    wait up to ``timeout`` seconds for each and SIGKILL (and reap) one that does not end."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
