"""The hardened runner loads uvicorn's WebSocket protocol when a connection first asks to
upgrade, not at start (``client.runtime.serving._WebSocketsOnFirstUse``: every server start
was paying for the ``websockets`` import). What a client sees must not change: an upgrade
request is answered exactly as with uvicorn's own ``ws="auto"`` (the app's router refuses
the socket: 403; without a key, 400), on both HTTP protocols, and plain requests as before."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from client.runtime.serving import ServingThread, hardened_config, hardened_server
from tests.support import free_port

UPGRADE = (
    b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
UPGRADE_NO_KEY = (
    b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
)
PLAIN = b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _app() -> Starlette:
    async def checkpoint(request: object) -> PlainTextResponse:
        return PlainTextResponse("checkpoint\n")

    return Starlette(routes=[Route("/checkpoint", checkpoint)])


def _answer(port: int, request: bytes) -> bytes:
    """What the server sent until it closed the connection, its Date header blanked."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return re.sub(rb"(?im)^date: [^\r\n]*\r\n", b"", got)


@pytest.fixture(params=["httptools", "h11"])
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """Two hardened servers of the same app: ours (the default, WebSockets on first use)
    and one given uvicorn's own ``ws="auto"``."""
    threads = []
    ports = []
    try:
        for ws in (None, "auto"):
            port = free_port()
            extra = {} if ws is None else {"ws": ws}
            cfg = hardened_config(
                _app(),
                "127.0.0.1",
                port,
                http=request.param,
                log_level="warning",
                lifespan="off",
                **extra,
            )
            assert (cfg.ws == "auto") is (ws == "auto")
            st = ServingThread(hardened_server(cfg))
            st.start(10)
            threads.append(st)
            ports.append(port)
        yield ports[0], ports[1]
    finally:
        for st in threads:
            st.stop(10)


def test_an_upgrade_is_answered_as_uvicorns_auto_answers_it(servers: tuple[int, int]) -> None:
    ours, auto = servers
    for request in (UPGRADE, UPGRADE_NO_KEY, UPGRADE):  # the second upgrade: protocol loaded
        got = _answer(ours, request)
        assert got == _answer(auto, request)
        assert got.startswith(b"HTTP/1.1 403" if request == UPGRADE else b"HTTP/1.1 400"), got
    plain = _answer(ours, PLAIN)
    assert plain == _answer(auto, PLAIN)
    assert plain.startswith(b"HTTP/1.1 200") and plain.endswith(b"checkpoint\n"), plain


def test_a_started_server_has_not_loaded_a_websocket_library() -> None:
    """Review 40a: the test above cannot see the saving it guards. A hardened server
    started in a fresh interpreter must not have imported ``websockets`` (nor ``wsproto``)
    before a connection asks to upgrade."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from starlette.applications import Starlette\n"
        "from client.runtime.serving import ServingThread, hardened_config, hardened_server\n"
        "from tests.support import free_port\n"
        "cfg = hardened_config(Starlette(), '127.0.0.1', free_port(), log_level='warning',"
        " lifespan='off')\n"
        "st = ServingThread(hardened_server(cfg))\n"
        "st.start(10)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('websockets', 'wsproto')))\n"
        "st.stop(10)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
