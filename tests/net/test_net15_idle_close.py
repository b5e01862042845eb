"""Net 15: httpx clients send a request once more when the server's idle close met it.

httpcore looks at a kept-alive connection before reusing it (readable while idle: the
server closed it), but a close arriving just after that look meets the request in flight,
and no answer comes: httpx raises ``RemoteProtocolError`` ("Server disconnected without
sending a response"), or ``ReadError``/``WriteError`` on a reset. The sockets of
:func:`client.net.core.http_client` now send such a request once more at once on a fresh
connection, only when that is safe: the request may be sent twice (GET, HEAD, or a POST
marked ``idempotent``), it went on a reused connection, and not one byte of an answer came,
by a failure other than a timeout.

A scripted server plays each case exactly (it closes, resets, begins an answer or keeps
silent on the request it has just read, so httpcore's look always finds the connection
open); a real ``tlog serve --keep-alive 1`` shows the race itself, made certain as in red
team 11: the look is told "not readable" while the test has already seen the close.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import httpcore
import pytest

from client.net.core import HTTPCore, Unreachable
from harness.scim import event_record

from ..support import ServerProcess, wait_for
from .helpers import BOUND, keep_alive_server, read_request, serving

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """The scripts of an HTTP/1.1 server (:func:`helpers.serving`) whose n-th connection does
    ``scripts[n]``, one action per request read: ``answer`` (200, kept alive), ``close``
    (closes without a byte), ``reset`` (closes with a TCP reset), ``begin`` (sends the start
    of a head, then closes), ``hang`` (answers nothing until the test ends), ``pair``
    (answers once two connections are open). Connections beyond the scripts answer all."""

    def __init__(self, scripts: list[list[str]]) -> None:
        self.scripts = scripts
        self.requests: list[tuple[int, bytes]] = []  # (connection, request line)
        self.connections = 0
        self._lock = threading.Lock()

    def one(self, conn: socket.socket, stop: threading.Event) -> None:
        with self._lock:
            n = self.connections
            self.connections += 1
        script = self.scripts[n] if n < len(self.scripts) else ["answer"] * 8
        conn.settimeout(BOUND)
        with conn:
            buf = bytearray()
            for action in script:
                got = read_request(conn, buf)
                if got is None:
                    return
                head = got[0]
                self.requests.append((n, head.split(b"\r\n", 1)[0]))
                if action == "answer":
                    conn.sendall(OK)
                elif action == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif action == "begin":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-")
                    return
                elif action == "pair":
                    for _ in range(600):
                        if self.connections >= 2 or stop.wait(0.05):
                            break
                    conn.sendall(OK)
                elif action == "hang":
                    stop.wait(BOUND)
                    return
                else:  # close
                    return
            while conn.recv(65536):  # until the client closes
                pass


@pytest.fixture
def scripted() -> Iterator[Callable[[list[list[str]]], tuple[Scripted, str]]]:
    """Starts a :class:`Scripted` server: (its scripts, its URL)."""
    with ExitStack() as stack:

        def start(scripts: list[list[str]]) -> tuple[Scripted, str]:
            srv = Scripted(scripts)
            return srv, stack.enter_context(serving(srv.one))

        yield start


Start = Callable[[list[list[str]]], tuple[Scripted, str]]


def _twice(url: str, method: str = "GET", **kw: Any) -> tuple[int, Unreachable | int]:
    """Two requests on one client (the second on the first's kept-alive connection): the
    first's status, and the second's or its failure."""
    with HTTPCore(url, timeout=kw.pop("timeout", 10.0)) as core:
        first = core.send(method, "/a", limit=1 << 10, **kw).status
        try:
            return first, core.send(method, "/b", limit=1 << 10, **kw).status
        except Unreachable as exc:
            return first, exc


@pytest.mark.parametrize("action", ["close", "reset"])
def test_a_get_the_idle_close_met_is_sent_again_on_a_fresh_connection(
    scripted: Start, action: str
) -> None:
    srv, url = scripted([["answer", action]])
    assert _twice(url) == (200, 200)
    assert srv.connections == 2
    assert [r for _, r in srv.requests] == [
        b"GET /a HTTP/1.1",
        b"GET /b HTTP/1.1",
        b"GET /b HTTP/1.1",
    ]


def test_a_post_marked_idempotent_is_sent_again(scripted: Start) -> None:
    srv, url = scripted([["answer", "close"]])
    assert _twice(url, "POST", content=b"{}", idempotent=True) == (200, 200)
    assert srv.connections == 2 and len(srv.requests) == 3


def test_a_post_not_marked_idempotent_is_not_sent_again(scripted: Start) -> None:
    srv, url = scripted([["answer", "close"]])
    first, second = _twice(url, "POST", content=b"{}")
    assert first == 200 and isinstance(second, Unreachable), second
    assert "Server disconnected" in str(second)
    assert srv.connections == 1 and len(srv.requests) == 2


def test_a_fresh_connection_is_not_retried(scripted: Start) -> None:
    """The first request on a connection opened for it: the server's failure is its
    answer, said at once."""
    srv, url = scripted([["close"]])
    with HTTPCore(url, timeout=10.0) as core, pytest.raises(Unreachable):
        core.send("GET", "/a", limit=1 << 10)
    assert srv.connections == 1 and len(srv.requests) == 1


def test_an_answer_begun_is_not_retried(scripted: Start) -> None:
    srv, url = scripted([["answer", "begin"]])
    first, second = _twice(url)
    assert first == 200 and isinstance(second, Unreachable), second
    assert srv.connections == 1 and len(srv.requests) == 2


def test_a_timeout_is_not_retried(scripted: Start) -> None:
    """A server silent on the request may still be working on it: not the idle close."""
    srv, url = scripted([["answer", "hang"]])
    first, second = _twice(url, timeout=0.5)
    assert first == 200 and isinstance(second, Unreachable), second
    assert isinstance(second.__cause__, Exception) and "timed out" in str(second).lower()
    assert srv.connections == 1 and len(srv.requests) == 2


def test_the_retry_is_sent_once_only(scripted: Start) -> None:
    """Idle-closed again on the fresh connection (no longer the race: a server that drops
    every request): Unreachable, after one retry."""
    srv, url = scripted([["answer", "close"], ["close"]])
    first, second = _twice(url)
    assert first == 200 and isinstance(second, Unreachable), second
    assert srv.connections == 2 and len(srv.requests) == 3


def test_the_retry_takes_no_other_kept_alive_connection(scripted: Start) -> None:
    """Two kept-alive connections, both closed by the server on their next request: the
    retry opens a new one rather than take the other (idle as long: as likely closed)."""
    srv, url = scripted([["pair", "close"], ["pair", "close"]])
    with HTTPCore(url, timeout=10.0) as core:
        with ThreadPoolExecutor(2) as pool:
            firsts = list(pool.map(lambda p: core.send("GET", p, limit=1 << 10), ["/a", "/b"]))
        assert [a.status for a in firsts] == [200, 200] and srv.connections == 2
        assert core.send("GET", "/c", limit=1 << 10).status == 200
    assert srv.connections == 3


# -- a real tlog serve --------------------------------------------------------------------

BATCH = "/v1/scim/events/batch"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    with keep_alive_server(tmp_path_factory.mktemp("net15")) as got:
        yield got


@pytest.fixture
def late_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpcore's look at its idle connection sees nothing: the server's close arrives just
    after it (the race), however long ago it really came."""
    real = httpcore._backends.sync.SyncStream.get_extra_info

    def look(self: Any, info: str) -> Any:
        return False if info == "is_readable" else real(self, info)

    monkeypatch.setattr(httpcore._backends.sync.SyncStream, "get_extra_info", look)


def _closed_by_server(core: HTTPCore) -> bool:
    """Whether the server has closed the one kept-alive connection of ``core``'s pool."""
    transport = core.http._transport
    pool = getattr(transport, "_inner", transport)._pool
    (conn,) = pool.connections
    sock = conn._connection._network_stream._inner._sock
    return bool(select.select([sock], [], [], 0)[0])


def _tree_size(core: HTTPCore) -> int:
    return int(core.send("GET", "/checkpoint", limit=1 << 16).text.split("\n")[1])


@contextmanager
def _submitter(served: tuple[ServerProcess, str]) -> Iterator[HTTPCore]:
    srv, token = served
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with HTTPCore(srv.url, timeout=10.0, headers=auth) as core:
        yield core


def _batch(*ns: int) -> bytes:
    return b'{"events":[' + b",".join(event_record(n).body.encode() for n in ns) + b"]}"


@pytest.mark.slow
def test_a_get_after_the_servers_idle_close_is_answered(
    served: tuple[ServerProcess, str], late_look: None
) -> None:
    srv, _ = served
    with HTTPCore(srv.url, timeout=10.0) as core:
        assert core.send("GET", "/checkpoint", limit=1 << 16).status == 200
        wait_for(lambda: _closed_by_server(core), 30, "the server closing the idle connection")
        assert core.send("GET", "/checkpoint", limit=1 << 16).status == 200


@pytest.mark.slow
@pytest.mark.parametrize("idempotent", [True, False])
def test_a_batch_after_the_servers_idle_close_is_delivered_once_if_marked_idempotent(
    served: tuple[ServerProcess, str], late_look: None, idempotent: bool
) -> None:
    """Marked idempotent: delivered, once. Not marked: Unreachable, and nothing added."""
    with _submitter(served) as core:
        before = _tree_size(core)
        wait_for(lambda: _closed_by_server(core), 30, "the server closing the idle connection")
        body = _batch(1500, 1501) if idempotent else _batch(1510)
        try:
            got: Unreachable | int = core.send(
                "POST", BATCH, limit=1 << 20, content=body, idempotent=idempotent
            ).status
        except Unreachable as exc:
            got = exc
        if idempotent:
            assert got == 200, got
            assert _tree_size(core) == before + 2
        else:
            assert isinstance(got, Unreachable), got
            assert _tree_size(core) == before
