"""The relay's kept-alive http.client POST (:mod:`client.net.lean`) answers as httpx does.

Each answer a scripted server sends (any status, framing by length, chunks or close, sent in
pieces, a server that drops the kept-alive connection while idle, an answer over the size
bound, one with a content coding) is read by :class:`LeanPoster` and by
:meth:`HTTPCore.send` (httpx) in turn: the same status, headers and body, or the same kind
of error; and the server received the same request from both. The deadline and TLS cases
reuse the slow-answer tests' servers (``tests/net/helpers.py``).
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.adapters.outbox import Outbox
from client.adapters.relay import Relay
from client.formats.note import FormatError
from client.net.core import Answer, HTTPCore, Unreachable
from client.net.lean import LeanPoster, lean_url
from harness.scim import event_record
from tests.net.helpers import (
    DRIP_BODY,
    DRIP_HEAD,
    answering_tls,
    dripping,
    ends,
    read_request,
    serving,
)

from ..support import wait_for

HEADERS = {"Authorization": "Bearer t0k", "Content-Type": "application/json"}


@dataclass
class _Script:
    """What the server answers next (raw bytes in pieces; then close the connection or
    not), and the requests it received (head lines without Host/User-Agent/Accept*, body)."""

    pieces: list[bytes] = field(default_factory=list)
    close: bool = False
    closed: int = 0  # connections the server has closed (after the client left, too)
    dropped: int = 0  # of those, closed by the server after a request, as scripted
    got: list[tuple[list[bytes], bytes]] = field(default_factory=list)


def _read_request(conn: socket.socket, buf: bytearray) -> tuple[list[bytes], bytes] | None:
    got = read_request(conn, buf)
    if got is None:
        return None
    lines = got[0].split(b"\r\n")
    kept = [lines[0]] + sorted(
        line.lower()
        for line in lines[1:]
        if line.split(b":")[0].lower()
        in (b"authorization", b"content-type", b"content-length", b"transfer-encoding")
    )
    return kept, got[1]


@contextmanager
def _scripted() -> Iterator[tuple[str, _Script]]:
    script = _Script()

    def one(conn: socket.socket, stop: threading.Event) -> None:
        buf = bytearray()
        dropping = False
        try:
            with conn:
                while (req := _read_request(conn, buf)) is not None:
                    # what to answer, read as the request arrives (the test sets it before
                    # sending, and sets the next one only once this answer is read)
                    pieces, close = script.pieces, script.close
                    # counted even when the client left first (a send then fails)
                    dropping = close
                    script.got.append(req)
                    for piece in pieces:
                        conn.sendall(piece)
                    if close:
                        return
        except OSError:
            pass
        finally:  # after the socket is closed
            script.closed += 1
            script.dropped += dropping

    with serving(one) as url:
        yield url, script


def _outcome(answer: Answer | None) -> object:
    assert answer is not None
    return answer.status, list(answer.headers.multi_items()), answer.body


def _lean(poster: LeanPoster, body: bytes, limit: int) -> object:
    try:
        return _outcome(poster.post("/v1/scim/events/batch", body, limit=limit))
    except (FormatError, Unreachable) as exc:
        return type(exc)


def _httpx(core: HTTPCore, body: bytes, limit: int) -> object:
    try:
        return _outcome(core.send("POST", "/v1/scim/events/batch", limit=limit, content=body))
    except (FormatError, Unreachable) as exc:
        return type(exc)


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@st.composite
def _answers(draw: st.DrawFn) -> tuple[list[bytes], bool, bool, int]:
    status = draw(st.sampled_from([200, 201, 204, 400, 401, 413, 422, 429, 500, 503]))
    body = (
        b""
        if status == 204
        else draw(st.binary(max_size=3000) | st.binary(min_size=500, max_size=3000))
    )
    # the size bound: none, just at the body's size, one byte under it, half of it
    limit = draw(st.sampled_from([1 << 20, len(body), max(len(body) - 1, 0), len(body) // 2]))
    # a front compressing the answer though it was not asked to: decoded by both (ops30;
    # before, the lean path refused it), the bound on the decoded bytes
    coded = status == 200 and draw(st.integers(0, 9)) == 0
    plain, body = body, (gzip.compress(body, mtime=0) if coded else body)
    headers = [(b"X-" + draw(_TOKEN).encode(), draw(_TOKEN).encode()) for _ in range(3)]
    headers = headers[: draw(st.integers(0, 3))]
    if status in (429, 503) and draw(st.booleans()):
        headers.append((b"Retry-After", str(draw(st.integers(0, 99))).encode()))
    headers.append((b"Content-Type", b"application/json"))
    framing = "length" if status == 204 else draw(st.sampled_from(["length", "chunked", "eof"]))
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
        payload = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
    else:
        headers.append((b"Connection", b"close"))
        payload = body
    if draw(st.booleans()) and framing != "eof":
        headers.append((b"Connection", b"close"))
    if coded:
        headers.append((b"Content-Encoding", b"gzip"))
    # informational answers before the answer: passed over by both (ops30: the lean path
    # refused any but 100 Continue)
    raw = draw(
        st.sampled_from(
            [
                b"",
                b"",
                b"",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
            ]
        )
    )
    raw += b"HTTP/1.1 %d X\r\n" % status
    raw += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + payload
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    # a server that closes even a kept-alive connection after this answer (idle expiry)
    close = framing == "eof" or draw(st.booleans())
    del plain  # (what both read when it is coded)
    return [p for p in pieces if p], close, coded, limit


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answers=st.lists(_answers(), min_size=1, max_size=4), data=st.data())
def test_lean_answers_equal_httpx(
    answers: list[tuple[list[bytes], bool, bool, int]], data: st.DataObject
) -> None:
    """Several requests in a row on each client's kept-alive connection (a closed one is
    noticed and replaced by both): every answer read the same, every request sent the same.
    An answer with a content coding the lean path did not ask for (gzip) is decoded by both,
    and informational answers (100, 102, 103) are passed over by both."""
    with _scripted() as (url, script):
        poster = LeanPoster(url, timeout=5.0, headers=HEADERS, context=None)
        core = HTTPCore(url, timeout=5.0, headers=HEADERS)
        try:
            for pieces, close, coded, limit in answers:
                body = data.draw(st.binary(max_size=2000))
                script.pieces, script.close = pieces, close
                dropped, asked = script.dropped, len(script.got)
                lean = _lean(poster, body, limit)
                # closed after the answer: not while the next request is on its way (only
                # the scripted closes count: a connection a client left ends at any time)
                if close and len(script.got) > asked:
                    wait_for(lambda n=dropped: script.dropped > n, 10)
                via_httpx = _httpx(core, body, limit)
                if close and len(script.got) > asked + 1:
                    wait_for(lambda n=dropped: script.dropped > n + 1, 10)
                assert lean == via_httpx, coded
                (lean_req, httpx_req) = script.got[-2:]
                assert lean_req == httpx_req
                assert lean_req[1] == body
                script.got.clear()
        finally:
            poster.close()
            core.close()


def test_a_connection_closed_while_idle_is_replaced_not_an_error() -> None:
    """The server drops the kept-alive connection after an answer that did not say so (an
    idle expiry): the next POST connects again and is answered."""
    with _scripted() as (url, script):
        poster = LeanPoster(url, timeout=5.0, headers=HEADERS, context=None)
        script.pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"]
        script.close = True
        for i in range(3):
            got = poster.post("/x", b"{}", limit=100)
            assert got is not None and got.status == 200 and got.body == b"{}"
            wait_for(lambda n=i: script.closed == n + 1, 10)
        assert len(script.got) == 3
        poster.close()


def _post_keep(poster: LeanPoster) -> BaseException | Answer | None:
    try:
        return poster.post("/v1/scim/events/batch", b"{}", limit=1 << 30)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("drip", [DRIP_HEAD, DRIP_BODY], ids=["head", "body"])
def test_a_dripping_answer_is_cut_off(drip: tuple[bytes, bytes]) -> None:
    """Each read ends by the whole answer's deadline: a byte every 50 ms never trips the
    0.3 s read timeout, the deadline (3 x 0.3 s) ends it."""
    with dripping(*drip) as url:
        poster = LeanPoster(url, timeout=0.3, headers=HEADERS, context=None)
        got = ends(_post_keep, poster)
        poster.close()
    assert isinstance(got, Unreachable), got


def test_tls_is_verified_with_the_context_given(tmp_path: Path) -> None:
    with answering_tls(tmp_path) as (tls_url, cert):
        trusting = ssl.create_default_context(cafile=str(cert))
        poster = LeanPoster(tls_url, timeout=2.0, headers=HEADERS, context=trusting)
        got = ends(_post_keep, poster)
        assert isinstance(got, Answer) and got.body == b"ok", got
        poster.close()
        # The default trust store does not know this certificate: refused, as httpx does.
        stranger = LeanPoster(
            tls_url, timeout=2.0, headers=HEADERS, context=httpx.create_ssl_context()
        )
        got = ends(_post_keep, stranger)
        assert isinstance(got, Unreachable) and "CERTIFICATE_VERIFY_FAILED" in str(got), got
        stranger.close()
    with pytest.raises(ValueError, match="SSL context"):
        LeanPoster(tls_url, timeout=2.0, headers=HEADERS, context=None)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhel",
    ],
    ids=["length-half", "length-none", "chunked-no-last", "chunked-mid"],
)
def test_an_answer_cut_short_is_refused_as_httpx_refuses_it(answer: bytes) -> None:
    """The server closes before the announced length or the last chunk: refused
    (:class:`Unreachable`) by both, never read as a shorter body (``http.client``'s
    ``read(n)`` ends quietly at the end of the stream; the lean path checks what is left)."""
    with _scripted() as (url, script):
        script.pieces, script.close = [answer], True
        poster = LeanPoster(url, timeout=5.0, headers=HEADERS, context=None)
        core = HTTPCore(url, timeout=5.0, headers=HEADERS)
        try:
            assert _lean(poster, b"{}", 1 << 20) is Unreachable
            assert _httpx(core, b"{}", 1 << 20) is Unreachable
        finally:
            poster.close()
            core.close()


def test_the_host_header_names_the_port_only_when_not_the_schemes_own() -> None:
    """As httpx sends it: ``Host: log.example`` for https on 443 and http on 80, the port
    otherwise."""
    tls = ssl.create_default_context()
    for url, host in [
        ("https://log.example/", b"log.example"),
        ("https://log.example:8443/", b"log.example:8443"),
        ("http://log.example/", b"log.example"),
        ("http://log.example:8080/", b"log.example:8080"),
        ("http://log.example:443/", b"log.example:443"),
    ]:
        poster = LeanPoster(url, timeout=1.0, headers=HEADERS, context=tls)
        conn = poster._conn
        conn.putrequest("POST", "/x")
        conn.endheaders()
        head = b"".join(conn.held)
        assert b"\r\nHost: " + host + b"\r\n" in head, (url, head)
        assert httpx.Request("POST", url).headers["host"].encode() == host
        conn.held.clear()
        poster.close()


def test_only_plain_urls_take_the_lean_path() -> None:
    assert lean_url("http://127.0.0.1:8080/") == ("http", "127.0.0.1", 8080, "")
    assert lean_url("https://log.example/base/") == ("https", "log.example", 443, "/base")
    assert lean_url("http://[::1]:81") == ("http", "::1", 81, "")
    for url in ("http://u:p@log.example", "http://log.example/?a=1", "ftp://x", "http://x:99999"):
        assert lean_url(url) is None, url


def test_the_relay_posts_its_batches_on_the_lean_path(tmp_path: Path) -> None:
    """A relay without a test transport sends its batches on the lean path (the scripted
    log sees them); with a test transport it keeps httpx."""
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.put([event_record(i) for i in range(3)])
    with _scripted() as (url, script):
        script.pieces = [b"HTTP/1.1 503 Busy\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n"]
        relay = Relay(outbox, url, "t0k", backoff_min=0.001, backoff_max=0.01)
        assert relay._lean is not None
        relay.start()
        wait_for(lambda: len(script.got) >= 3)
        relay.stop()
    head, body = script.got[0]
    assert head[0] == b"POST /v1/scim/events/batch HTTP/1.1"
    assert b"authorization: bearer t0k" in head
    assert body.startswith(b'{"events":[') and body.count(b'"eid"') == 3
    assert outbox.counts()["pending"] == 3
    mocked = Relay(outbox, url, "t", transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    assert mocked._lean is None
    outbox.close()


def test_a_coded_answer_is_decoded_within_the_bound_and_an_unknown_coding_refused() -> None:
    """A gzip answer of a few KiB that inflates to 4 MiB ends at the size bound on the
    decoded bytes (:class:`FormatError`, as a plain answer over it), never held whole; a
    coding httpx does not decode without optional packages (``br``) is refused, a damaged
    stream too; a deflate (zlib) answer reads as its plain body (ops30: every coded answer
    was refused)."""
    bomb = gzip.compress(b"\0" * (4 << 20), mtime=0)
    cases = [
        (b"gzip", bomb, 1 << 16, FormatError),
        (b"br", b"\x0b\x02\x80{}\x03", 1 << 16, FormatError),
        (b"gzip", bomb[: len(bomb) // 2], 8 << 20, FormatError),
        (b"deflate", zlib.compress(b'{"ok": true}'), 1 << 16, b'{"ok": true}'),
    ]
    with _scripted() as (url, script):
        poster = LeanPoster(url, timeout=5.0, headers=HEADERS, context=None)
        try:
            for coding, payload, limit, want in cases:
                script.pieces = [
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (coding, len(payload), payload)
                ]
                got = _lean(poster, b"{}", limit)
                if isinstance(want, bytes):
                    assert isinstance(got, tuple) and got[2] == want, got
                else:
                    assert got is want, (coding, got)
        finally:
            poster.close()
