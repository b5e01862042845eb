"""A hostile or broken SIEM behind ``tlog-client scim stream --to webhook:/hec:``.

The HTTP sink read the receiver's whole answer into memory, with only httpx's per-read
timeout: a receiver answering an endless (or huge) body grew the streamer's memory without
bound, and one dribbling a byte every few seconds held the run forever (each read came
within the timeout). A HEC receiver answering 2xx with JSON that is not an object (``[]``,
``"ok"``) crashed the run with a traceback. Now the sink reads at most
:data:`client.tools.stream.MAX_ANSWER` bytes of an answer, gives the whole answer
``timeout`` seconds, and takes a 2xx answer that is not a JSON object as taken (as it took
one that is not JSON); a slow or cut answer is a failed delivery (retried, then the run
fails without moving the cursor).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from client.tools import stream
from client.tools.stream import HttpSink, SinkError

RECORD: dict[str, Any] = {"time": 1_700_000_000_000, "class_uid": 3001, "x": "y"}


class RawReceiver:
    """An HTTP receiver that reads the request and then runs ``answer(conn)``."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.sent = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}/hook"
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += conn.recv(65536)
                try:
                    self.answer(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        # close() alone does not wake a thread blocked in accept() on Linux: the join then
        # waited out its 10 s bound after every test. shutdown() makes accept() fail now.
        try:
            self.srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.srv.close()
        self.t.join(10)
        assert not self.t.is_alive(), "the receiver's thread did not end"


@pytest.fixture
def make_receiver() -> Iterator[Callable[[Callable[[socket.socket], None]], RawReceiver]]:
    made: list[RawReceiver] = []

    def make(answer: Callable[[socket.socket], None]) -> RawReceiver:
        r = RawReceiver(answer)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _send_in_thread(sink: HttpSink) -> tuple[threading.Thread, list[BaseException | None]]:
    out: list[BaseException | None] = []

    def go() -> None:
        try:
            sink.send([RECORD])
            out.append(None)
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def test_a_huge_answer_is_not_read_whole(make_receiver: Any) -> None:
    total = 256 << 20
    rec: RawReceiver

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while rec.sent < total:
            conn.sendall(block)
            rec.sent += len(block)

    rec = make_receiver(answer)
    sink = HttpSink(rec.url, hec_token=None, origin="o", retries=0)
    try:
        t, out = _send_in_thread(sink)
        t.join(120)
        assert not t.is_alive()
    finally:
        sink.close()
    assert out == [None]  # a 2xx answer: taken, by its status
    # The sink stopped reading long before the end (socket buffers hold a few MiB at most).
    assert rec.sent < 32 << 20, rec.sent
    assert stream.MAX_ANSWER <= 1 << 20


@pytest.mark.parametrize(
    "where,start",
    [
        ("body", b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"),
        # The head too: the sink's own deadline only ran once the head was in, and each
        # byte came within httpx's per-read timeout, so the run was held as long as the
        # receiver liked. The sink now reads through the deadline-bound sockets of
        # client.net.core.http_client (client.net.core.answer_deadline).
        ("head", b"HTTP/1.1 200 OK\r\n"),
    ],
)
def test_a_dribbling_answer_ends_the_delivery(make_receiver: Any, where: str, start: bytes) -> None:
    def answer(conn: socket.socket) -> None:
        conn.sendall(start)
        for _ in range(100000):
            conn.sendall(b"x")
            time.sleep(0.05)

    rec = make_receiver(answer)
    sink = HttpSink(rec.url, hec_token=None, origin="o", retries=0, timeout=1.0)
    try:
        t, out = _send_in_thread(sink)
        t.join(60)  # a hang detector, not a timing bar: the answer would take 5000 s
        assert not t.is_alive(), f"the sink is still reading a dribbling {where}"
    finally:
        sink.close()
    assert isinstance(out[0], SinkError), out
    assert "answer" in str(out[0])


@pytest.mark.parametrize("body", [b"[]", b'"ok"', b"42", b"null"])
def test_a_hec_answer_that_is_not_an_object_is_no_crash(make_receiver: Any, body: bytes) -> None:
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    rec = make_receiver(answer)
    sink = HttpSink(rec.url, hec_token="t", origin="o", retries=0)
    try:
        sink.send([RECORD])  # taken, as a 2xx answer that is not JSON is
    finally:
        sink.close()


def test_a_hec_refusal_is_still_a_refusal(make_receiver: Any) -> None:
    body = b'{"text":"Invalid token","code":4}'

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    rec = make_receiver(answer)
    sink = HttpSink(rec.url, hec_token="t", origin="o", retries=0)
    try:
        with pytest.raises(SinkError, match="Invalid token"):
            sink.send([RECORD])
    finally:
        sink.close()


def test_a_failing_receivers_url_secret_is_not_printed(make_receiver: Any) -> None:
    """Many SIEM HTTP inputs carry their credential in the URL (a token in the path or the
    query string); a failed delivery printed the whole URL (to stderr, the journal)."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")

    rec = make_receiver(answer)
    base = rec.url.removesuffix("/hook")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    for url in (
        f"{base}/receiver/v1/http/S3CR3TPATH?token=S3CR3TQUERY",
        f"http://user:S3CR3TPASS@127.0.0.1:{dead_port}/x/S3CR3TPATH?k=S3CR3TQUERY",
    ):
        sink = HttpSink(url, hec_token=None, origin="o", retries=0)
        try:
            with pytest.raises(SinkError) as e:
                sink.send([RECORD])
        finally:
            sink.close()
        assert "S3CR3T" not in str(e.value), str(e.value)
        assert "127.0.0.1" in str(e.value)  # still says where


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"access": 3}', b"null"])
def test_a_malformed_answer_to_the_export_record_is_a_verification_failure(body: bytes) -> None:
    """The run's export record (``POST /v1/scim/exports``) answered 201 with a body that is
    not the expected object crashed the run with a traceback (a ``ValueError`` or an
    ``AttributeError`` on ``.get``); it is a failed verification (exit 2) like any other
    malformed answer from the log."""
    import httpx

    from client.formats.merkle import VerificationError
    from client.tools.stream import StreamResult, _record_export

    http = httpx.Client(
        transport=httpx.MockTransport(lambda req: httpx.Response(201, content=body))
    )
    try:
        rec = _record_export("http://log.example", "tok", "webhook", http)
        with pytest.raises(VerificationError):
            rec(StreamResult())
    finally:
        http.close()


def test_a_hec_answer_nested_too_deeply_is_no_crash(make_receiver: Any) -> None:
    """Red team 6: a HEC answer nested deeper than Python's recursion limit (``[[[[...]]]]``,
    within the 64 KiB the sink reads) crashed ``tlog-client scim stream`` with a
    ``RecursionError``; it is taken by its 2xx status, as any answer that is not JSON."""
    body = b"[" * 30_000 + b"]" * 30_000

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    sink = HttpSink(make_receiver(answer).url, hec_token="t", origin="o", retries=0)
    try:
        sink.send([RECORD])  # taken, as a 2xx answer that is not JSON is
    finally:
        sink.close()
