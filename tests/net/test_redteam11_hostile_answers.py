"""Red team 11, part 3: hostile answers to the relay's kept-alive batch POST
(:class:`client.net.lean.LeanPoster`), which reads them with :mod:`http.client`.

A server floods, as fast as the client reads, an answer that never becomes valid: a status
line that never ends, a header line of megabytes, thousands of headers, a chunk size of
2**64 followed by endless data, a chunk-size line of megabytes, a Content-Length of 2**64,
``100 Continue`` answers for ever. Each must end in :class:`Unreachable` or
:class:`FormatError` within the answer deadline, with memory bounded by a few of
http.client's own limits (``_MAXLINE``, 64 KiB a line; ``_MAXHEADERS``, 100 headers) and
the POST's size bound, never by what the server sends. Memory is measured with
:mod:`tracemalloc` (the peak of Python allocations during the POST, the flooding server's
included).

And a token of the wrong tenant: the log's 403 reaches the caller as an answer (the relay
logs an ERROR naming the token and keeps the events), nothing is written."""

from __future__ import annotations

import http.client
import socket
import threading
import tracemalloc
from pathlib import Path

import httpx
import pytest

from client.adapters.outbox import Outbox
from client.adapters.relay import Relay
from client.formats.note import FormatError
from client.net.core import Unreachable
from client.net.lean import LeanPoster
from harness.scim import event_record
from tests.net.helpers import ends, serving
from tests.server.redteam8_load import make_token

from ..support import start_server, wait_for

BATCH = "/v1/scim/events/batch"
HEADERS = {"Authorization": "Bearer t0k", "Content-Type": "application/json"}
MEMORY_BOUND = 4 << 20  # far above the limits below, far below what the servers send

FLOODS = {
    # name: (what the answer starts with, what it repeats for ever, the error expected)
    "endless status line": (b"HTTP/1.1 200 ", b"A" * 4096, Unreachable),
    "header line of megabytes": (b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 4096, Unreachable),
    "ten thousand headers": (b"HTTP/1.1 200 OK\r\n", b"X-H: 1\r\n" * 512, Unreachable),
    "chunk size 2**64": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % 2**64,
        b"x" * 4096,
        FormatError,
    ),
    "chunk-size line of megabytes": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"f" * 4096,
        Unreachable,
    ),
    "content-length 2**64": (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % 2**64,
        b"x" * 4096,
        FormatError,
    ),
    "100 Continue for ever": (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 64, Unreachable),
}


def _flood(first: bytes, again: bytes, sent: list[int]):  # type: ignore[no-untyped-def]
    def one(conn: socket.socket, stop: threading.Event) -> None:
        try:
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(first)
                sent[0] += len(first)
                while not stop.is_set():
                    conn.sendall(again)
                    sent[0] += len(again)
        except OSError:
            pass

    return one


@pytest.mark.parametrize("name", list(FLOODS))
def test_a_flooded_answer_ends_bounded(name: str) -> None:
    first, again, error = FLOODS[name]
    sent = [0]
    with serving(_flood(first, again, sent)) as url:
        poster = LeanPoster(url, timeout=2, headers=HEADERS, context=None)
        tracemalloc.start()
        try:
            with pytest.raises(error) as got:
                ends(lambda: poster.post(BATCH, b'{"events":[]}', limit=1 << 20))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            poster.close()
    assert peak < MEMORY_BOUND, (name, peak, str(got.value))
    # The client stopped reading: the server could not push much past the limits.
    assert sent[0] < (64 << 20), (name, sent[0])


def test_http_clients_own_limits_are_what_holds() -> None:
    """The bounds above are http.client's: if a Python release changed them, the memory
    promise would move with them (then bound the lines in client/net/lean.py itself)."""
    assert http.client._MAXLINE == 65536
    assert http.client._MAXHEADERS == 100


def test_a_token_of_another_tenant_is_refused_and_nothing_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    srv = start_server(data, None)
    try:
        other = make_token(data, None, "--role", "submitter", "--tenant", "acme")
        size = httpx.get(srv.url + "/checkpoint", timeout=30).text.split("\n")[1]
        poster = LeanPoster(
            srv.url,
            timeout=10,
            headers={"Authorization": f"Bearer {other}", "Content-Type": "application/json"},
            context=None,
        )
        try:
            body = b'{"events":[' + event_record(1).body.encode() + b"]}"  # tenant t1
            got = poster.post(BATCH, body, limit=1 << 20)
        finally:
            poster.close()
        assert got is not None and got.status == 403, got
        assert other not in got.body.decode()

        outbox = Outbox(tmp_path / "o.sqlite")
        relay = Relay(outbox, srv.url, other, idle=0.05, backoff_min=0.05, backoff_max=0.1)
        try:
            outbox.add([event_record(2)]).result()
            relay.start()
            wait_for(lambda: relay.attempts >= 2, 30, "the relay trying again")
        finally:
            relay.stop()
        assert outbox.counts()["pending"] == 1  # kept, not dropped nor rejected
        assert "refused the relay's token" in caplog.text
        assert other not in caplog.text
        outbox.close()
        assert httpx.get(srv.url + "/checkpoint", timeout=30).text.split("\n")[1] == size
    finally:
        srv.stop()
