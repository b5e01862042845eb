"""In-process servers confirm that they started (client.runtime.serving.ServingThread).

A server run in a thread whose start-up fails must raise at once, with the reason, and one
whose start-up hangs must raise after a bounded wait, saying where it hangs: never a
"started" server that a client then waits 30 s on (the symptom of a witness that did not
come up in the full suite: tests/witness/test_gossip.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from client.runtime.serving import (
    ServerStartError,
    ServingThread,
    hardened_config,
    hardened_server,
)
from tests.support import listening_socket

Scope = dict[str, Any]


class App:
    """A minimal ASGI app; its lifespan start-up can fail or wait for ``release``."""

    def __init__(self, startup: str = "ok") -> None:
        self.startup = startup
        self.release = threading.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    if self.startup == "fail":
                        raise RuntimeError("the store is locked")
                    while self.startup == "hang" and not self.release.is_set():
                        await asyncio.sleep(0.05)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"up\n"})


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = listening_socket()
    yield sock
    sock.close()


def serving(app: App, sock: socket.socket) -> ServingThread:
    port = sock.getsockname()[1]
    config = hardened_config(app, "127.0.0.1", port, lifespan="on", log_config=None)
    return ServingThread(hardened_server(config), [sock], name="test-server")


def test_start_returns_once_the_server_answers(listener: socket.socket) -> None:
    st = serving(App(), listener)
    st.start(timeout=30)
    try:
        assert st.server.started
        port = listener.getsockname()[1]
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)  # no wait loop needed
        assert r.status_code == 200 and r.text == "up\n"
    finally:
        assert st.stop(10)
    assert not st.thread.is_alive()


def test_failing_startup_raises_with_its_reason(listener: socket.socket) -> None:
    st = serving(App("fail"), listener)
    with pytest.raises(ServerStartError, match="stopped before it started") as info:
        st.start(timeout=30)
    # uvicorn ends a failed start-up with sys.exit(), which a thread would swallow.
    assert isinstance(info.value.__cause__, SystemExit)
    st.thread.join(10)
    assert not st.thread.is_alive()


def test_unusable_socket_raises_the_bind_error(listener: socket.socket) -> None:
    st = serving(App(), listener)
    listener.close()
    with pytest.raises(ServerStartError, match="stopped before it started") as info:
        st.start(timeout=30)
    assert isinstance(info.value.__cause__, OSError)


def test_hanging_startup_raises_after_the_timeout_with_its_stack(
    listener: socket.socket,
) -> None:
    app = App("hang")
    st = serving(app, listener)
    with pytest.raises(ServerStartError, match=r"did not start within 0\.5 s") as info:
        st.start(timeout=0.5)
    assert "its thread is at:" in str(info.value)
    assert "asyncio" in str(info.value)  # the serving thread's stack, not the caller's
    assert "the other threads" in str(info.value)
    # Once it gets past start-up it sees that it was told to exit, and ends.
    app.release.set()
    st.thread.join(15)
    assert not st.thread.is_alive()


def test_any_uvicorn_server_binding_its_own_port() -> None:
    import uvicorn

    plain = uvicorn.Server(uvicorn.Config(App(), host="127.0.0.1", port=0, log_config=None))
    st = ServingThread(plain, name="plain")
    st.start(timeout=30)
    try:
        port = plain.servers[0].sockets[0].getsockname()[1]
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "up\n"
    finally:
        assert st.stop(10)


_FROZEN_CHILD = """
import gc, os
from client.runtime.serving import run_hardened

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

print("before", gc.get_freeze_count(), flush=True)

def started():
    print("frozen", gc.get_freeze_count(), flush=True)
    os._exit(0)

run_hardened(app, "127.0.0.1", 0, on_started=started, log_level="warning")
"""


def test_run_hardened_freezes_what_start_up_built() -> None:
    """``tlog serve`` and ``tlog scim-proxy`` run under ``run_hardened``: once started, the
    objects start-up made are out of the collector's full passes (``gc.freeze``), before
    the banner; later objects are not (nothing is frozen before start-up)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-c", _FROZEN_CHILD], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["before"] == "0"
    assert int(lines["frozen"]) > 1000
