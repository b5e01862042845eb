"""The witness on uvicorn: slow, idle and greedy clients are cut off (issue 7 part 4 for
``tlog-witness``). Each case waits on a socket with a generous timeout: the assertion is
what the server did (closed, 408, 503), never how fast."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from client.witness.server import ServerLimits, WitnessHTTPServer
from tests.support import slow_reader, wait_reset
from tests.witness.helpers import FakeLog, make_witness, witness_serving

LIMITS = ServerLimits(
    header_timeout=0.5, idle_timeout=1, body_timeout=0.5, write_timeout=1, max_connections=4
)


@pytest.fixture
def server(tmp_path: Path, log300: FakeLog) -> Iterator[WitnessHTTPServer]:
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()])
    with witness_serving(w, limits=LIMITS) as srv:
        yield srv


def connect(server: WitnessHTTPServer) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=10)


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes (a socket timeout here fails the test)."""
    chunks = []
    while data := s.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def test_silent_connection_is_closed(server: WitnessHTTPServer) -> None:
    with connect(server) as s:
        assert read_all(s) == b""


def test_slow_request_head_is_closed(server: WitnessHTTPServer) -> None:
    with connect(server) as s:
        s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert read_all(s).startswith(b"HTTP/1.1 408 ")


def test_slow_body_gets_408(server: WitnessHTTPServer) -> None:
    with connect(server) as s:
        s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nold 0\n")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_idle_keep_alive_is_closed_and_requests_still_work(
    server: WitnessHTTPServer, log300: FakeLog
) -> None:
    with connect(server) as s:
        s.sendall(b"GET /evidence HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(s)  # served, then closed once idle
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"evidence": []' in answer
    r = httpx.post(server.url + "/add-checkpoint", content=log300.body(0, 10))
    assert r.status_code == 200


def test_oversized_head_is_refused(server: WitnessHTTPServer) -> None:
    with connect(server) as s:
        s.sendall(b"GET /evidence HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_idle_sockets_cannot_lock_out_a_client(tmp_path: Path, log300: FakeLog) -> None:
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()])
    limits = ServerLimits(header_timeout=30, idle_timeout=30, body_timeout=30, max_connections=4)
    with witness_serving(w, limits=limits) as srv, ExitStack() as stack:
        idle = [stack.enter_context(connect(srv)) for _ in range(4)]
        # A fifth client over the limit is served: the oldest idle socket makes room.
        with connect(srv) as s:
            s.sendall(b"GET /evidence HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_all(s).startswith(b"HTTP/1.1 200 ")
        assert read_all(idle[0]) == b""  # evicted (closed by the server)


def test_client_that_never_reads_is_reset(server: WitnessHTTPServer) -> None:
    # A slow reader: 200 pipelined /metrics requests (~400 KB of answers) and not one byte
    # read. The server's kernel send buffer is shrunk (accepted sockets inherit it from the
    # listening one) so the answers back up into the server's own buffer; after
    # write_timeout the connection is reset and the buffered answers dropped.
    server._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s = slow_reader(server.server_address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
    with s:
        assert wait_reset(s), "a client that never reads was never disconnected"
    r = httpx.get(server.url + "/healthz")  # and everyone else is still served
    assert r.status_code == 200


def test_the_limit_evicts_idle_sockets_before_a_client_that_sent_its_head(
    tmp_path: Path, log300: FakeLog
) -> None:
    """ops31: over the limit, the connection that has sent the least of its request for the
    longest goes first, not the oldest. A client that sent most of its head at once (a
    large head still arriving) and then four idle sockets, limit 4: the oldest idle one is
    evicted, and the client's request, finished after, is answered. Before, the oldest
    connection was evicted whatever it had sent: the client's (a reconnecting slow-loris
    flood keeps its own connections younger than a real client's, red team 30)."""
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()])
    limits = ServerLimits(header_timeout=30, idle_timeout=30, body_timeout=30, max_connections=4)
    with witness_serving(w, limits=limits) as srv, ExitStack() as stack:
        client = stack.enter_context(connect(srv))
        client.sendall(b"GET /evidence HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2000)
        idle = [stack.enter_context(connect(srv)) for _ in range(4)]
        assert read_all(idle[0]) == b""  # the oldest idle socket made room
        client.sendall(b"\r\nConnection: close\r\n\r\n")
        answer = read_all(client)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"evidence": []' in answer, answer


def test_the_limit_a_served_keep_alive_client_outlasts_one_byte_sockets(
    tmp_path: Path, log300: FakeLog
) -> None:
    """Review 40a: a client idle between keep-alive requests has proved itself with a whole
    request, so sockets that never completed one go before it, whatever they have sent. Two
    sockets that sent one byte, a client served once, two more such sockets (limit 4): a
    one-byte socket is evicted, and the client's second request on its connection is
    answered. Under ops31's rate of bytes the idle client (no bytes since its request) went
    first."""
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()])
    limits = ServerLimits(header_timeout=30, idle_timeout=30, body_timeout=30, max_connections=4)
    request = b"GET /evidence HTTP/1.1\r\nHost: x\r\n\r\n"
    with witness_serving(w, limits=limits) as srv, ExitStack() as stack:
        flood = []
        for _ in range(2):
            flood.append(stack.enter_context(connect(srv)))
            flood[-1].sendall(b"G")
        client = stack.enter_context(connect(srv))
        client.sendall(request)
        got = b""
        while b'"evidence": []' not in got:
            chunk = client.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 "), got
        for _ in range(2):
            flood.append(stack.enter_context(connect(srv)))
            flood[-1].sendall(b"G")
        # one of the one-byte sockets made room (which one depends on whether its byte was
        # read before the last connection was accepted: one read, the oldest)
        closed, _, _ = select.select(flood + [client], [], [], 10)
        assert len(closed) == 1 and closed[0] is not client, closed
        client.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        answer = read_all(client)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"evidence": []' in answer, answer


def test_a_refused_transfer_coding_after_a_keep_alive_request_is_answered_501(
    server: WitnessHTTPServer,
) -> None:
    """Red team 31 refused a ``Transfer-Encoding`` other than ``chunked`` with 501, but only
    on a connection's first request: after an earlier request the connection was just
    closed (review 40b). Now the 501 follows the earlier answer."""
    with connect(server) as s:
        s.sendall(b"GET /evidence HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b'"evidence": []' not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        s.sendall(
            b"POST /evidence HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"0\r\n\r\n"
        )
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 501 "), answer
