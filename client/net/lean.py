"""One kept-alive HTTP/1.1 connection for a client's hot request: the relay's batch POST.

httpx (with httpcore and h11 under it) costs about 0.9-2 ms of CPU a request, most of it in
its general machinery (the client's auth, redirect and cookie steps, h11's event parsing);
the standard library's :mod:`http.client` does the same exchange in about a fifth of that
(docs/performance-history.md, "Proxy CPU, proxy13 round"). :class:`LeanPoster` answers as
:meth:`client.net.core.HTTPCore.send` does, with the same bounds:

* every socket operation (connect, TLS handshake, each send and read, the head's included)
  ends by the thread's :func:`~client.net.core.answer_deadline` as well as by the per-read
  ``timeout``, so a server dripping its answer cannot hold the caller (the same
  ``deadline_left`` as :func:`~client.net.core.http_client`'s sockets);
* the body is read in chunks and refused past ``limit`` bytes (:class:`FormatError`),
  whatever its framing claims (a ``Content-Length`` or a chunk size of 2**64 included);
  the head is bounded by :mod:`http.client` itself: a status, header or chunk-size line
  over ``_MAXLINE`` (64 KiB) or more than ``_MAXHEADERS`` (100) headers is a protocol
  failure, and an endless run of ``100 Continue`` answers (which http.client passes over)
  ends by the deadline; memory stays within those bounds however much a server floods
  (red team 11: ``tests/net/test_redteam11_hostile_answers.py``);
* TLS is verified with the SSL context the caller's httpx transport uses (the same trust
  store and settings);
* it asks for no content coding (``Accept-Encoding: identity``); an answer that has one
  anyway (a front compressing the log's answers) is decoded as httpx decodes it (``gzip``,
  ``deflate``; another is :class:`FormatError`), the size bound applying to the decoded
  bytes, so no decoded size goes unbounded (before ops30 every coded answer was refused,
  and the relay sent its batch again without end);
* an answer cut short (the connection closed before its ``Content-Length`` or its last
  chunk) is a protocol failure, as in httpx, never a shorter body;
* informational answers (``100 Continue``, ``103 Early Hints``, any 1xx but ``101``) are
  passed over, as httpx does (before ops30 any but ``100`` was a protocol failure, and a
  front sending early hints kept the relay from ever delivering);
* a transport or protocol failure is :class:`Unreachable` and drops the connection; a
  connection the server closed while idle (readable before the request) is replaced
  before sending, as httpcore's pool does;
* that look and the server's idle close (``--keep-alive``) race: a close that arrives just
  after the look meets the request in flight, and no answer comes. So a request on a
  *reused* connection that fails before one byte of its answer, other than by a timeout,
  is sent once more at once on a fresh connection, within the same deadline (httpcore's
  pool does not: httpx raises ``RemoteProtocolError``, "Server disconnected without
  sending a response", and its users add such a retry). Safe for the relay's batch: the
  log deduplicates it by
  eid (a retry answers the original's receipt and adds no leaf, docs/api.md). A fresh
  connection's failure, or a second one, is :class:`Unreachable` (red team 11:
  ``tests/net/test_redteam11_keepalive.py``).

Only plain ``http``/``https`` URLs without user info or query take this path
(:func:`lean_url`); anything else stays on httpx. One request at a time: :meth:`post`
returns None when the connection is busy, and the caller sends through httpx instead.
"""

from __future__ import annotations

import functools
import http.client
import io
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import httpx

from client.formats.note import FormatError
from client.net.core import (
    ANSWER_TIME_FACTOR,
    Answer,
    Unreachable,
    answer_deadline,
    deadline_left,
    read_body,
)

__all__ = ["LeanPoster", "lean_url"]

_CHUNK = 1 << 16


def lean_url(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path prefix) of a URL the lean path can serve, else None."""
    try:
        s = urlsplit(url)
        port = s.port
    except ValueError:
        return None
    if s.scheme not in ("http", "https") or not s.hostname or s.username or s.password:
        return None
    if s.query or s.fragment:
        return None
    return s.scheme, s.hostname, port or (443 if s.scheme == "https" else 80), s.path.rstrip("/")


class _Reader(io.RawIOBase):
    """The socket's reads for http.client's buffered file, each bounded by the deadline."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        sock = self._owner.sock
        sock.settimeout(deadline_left(TimeoutError, self._owner.timeout))
        n = sock.recv_into(b)
        self._owner.received += n
        return n

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.release()


class _DeadlineSocket:
    """What http.client uses of its socket (``sendall``, ``makefile``, ``close``), every
    operation ending by the thread's deadline."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self.sock = sock
        self.timeout = timeout
        self.received = 0  # answer bytes read on this connection
        self._readers = 0
        self._closed = False

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(deadline_left(TimeoutError, self.timeout))
        self.sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        assert mode == "rb"
        self._readers += 1
        return io.BufferedReader(_Reader(self))

    def fileno(self) -> int:
        return self.sock.fileno()

    def release(self) -> None:
        self._readers -= 1
        if self._closed and self._readers == 0:
            self.sock.close()

    def close(self) -> None:
        """Closed once the answer being read is too (http.client drops a connection that
        will close before its answer's body is read, as a socket's ``makefile`` allows)."""
        self._closed = True
        if self._readers == 0:
            self.sock.close()


class _Response(http.client.HTTPResponse):
    """http.client's answer, which passes over every informational answer before the final
    one (RFC 9110 §15.2: ``103 Early Hints`` included, as httpx does), not ``100 Continue``
    alone. Each one's head is read with http.client's own bounds; an endless run of them
    ends by the deadline."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if status >= 200 or status in (100, 101):  # (100: http.client passes it over)
                return version, status, reason
            http.client.parse_headers(self.fp)  # its fields: not the answer's


class _Connection(http.client.HTTPConnection):
    response_class = _Response

    def __init__(
        self, host: str, port: int, timeout: float | None, context: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port)
        if context is not None:
            # The Host header names the port only when it is not the scheme's own
            # (http.client compares with default_port, 80 on this class): as httpx does.
            self.default_port = http.client.HTTPS_PORT
        self.per_read = timeout
        self.context = context
        self.held: list[bytes] = []

    def send(self, data: object) -> None:
        """http.client's writes of one request (its head, then its body), gathered: the
        request leaves in one write by :meth:`flush` (one packet, one TLS record when
        small; a server reading the head and body in one read gets both)."""
        assert isinstance(data, bytes)
        self.held.append(data)

    def flush(self) -> None:
        data = b"".join(self.held)
        self.held.clear()
        if self.sock is None:
            self.connect()
        self.sock.sendall(data)

    def connect(self) -> None:
        sock = socket.create_connection(
            (self.host, self.port), deadline_left(TimeoutError, self.per_read)
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock.settimeout(deadline_left(TimeoutError, self.per_read))
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(sock, self.per_read)


class LeanPoster:
    """POSTs to one server over one kept-alive connection (see the module docstring).
    ``headers`` are sent with every request; ``context`` verifies TLS (required for an
    ``https`` URL)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None,
        headers: Mapping[str, str],
        context: ssl.SSLContext | None,
    ) -> None:
        parts = lean_url(url)
        if parts is None:
            raise ValueError("not a URL the lean path serves")
        scheme, host, port, self._prefix = parts
        if scheme == "https" and context is None:
            raise ValueError("an https URL needs the SSL context to verify it with")
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._headers = dict(headers)
        self._conn = _Connection(host, port, timeout, context if scheme == "https" else None)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def post(
        self, path: str, content: bytes, *, limit: int, timeout: float | None = None
    ) -> Answer | None:
        """One POST, answered as :meth:`client.net.core.HTTPCore.send` answers; None when
        another thread is using the connection (send it another way)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._post(path, content, limit, self._timeout if timeout is None else timeout)
        finally:
            self._lock.release()

    def _post(self, path: str, content: bytes, limit: int, timeout: float | None) -> Answer:
        url = f"{self._url}/{path.lstrip('/')}"
        span = None if timeout is None else ANSWER_TIME_FACTOR * timeout
        at = None if span is None else time.monotonic() + span
        conn = self._conn
        conn.per_read = timeout
        with answer_deadline(span):
            if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
                conn.close()  # closed by the server while idle (or sent what none asked)
            reused: _DeadlineSocket | None = conn.sock  # type: ignore[assignment]
            seen = 0 if reused is None else reused.received
            try:
                return self._exchange(conn, path, content, limit, at, url)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if not _idle_close_race(reused, seen, exc):
                    raise Unreachable(f"POST {url}: {exc}") from exc
            # The server closed the kept-alive connection just after the look above: the
            # request went nowhere. Once more, at once, on a fresh connection.
            try:
                return self._exchange(conn, path, content, limit, at, url)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise Unreachable(f"POST {url}: {exc}") from exc

    def _exchange(
        self,
        conn: _Connection,
        path: str,
        content: bytes,
        limit: int,
        at: float | None,
        url: str,
    ) -> Answer:
        """One request and its answer on ``conn`` (connected first if it is not)."""
        conn.held.clear()
        conn.request("POST", f"{self._prefix}/{path.lstrip('/')}", content, self._headers)
        conn.flush()
        response = conn.getresponse()
        try:
            if response.status < 200:  # (101: a protocol switch never asked for)
                raise http.client.HTTPException(
                    f"an informational answer ({response.status}) in place of the answer"
                )
            chunks = iter(functools.partial(response.read, _CHUNK), b"")
            coding = response.getheader("content-encoding")
            if coding is not None and coding.strip().lower() not in ("", "identity"):
                chunks = _decoded(chunks, coding, path)
            body = read_body(chunks, limit, at, path, f"POST {url}")
            if response.length:  # http.client's read(n) ends quietly at EOF
                raise http.client.IncompleteRead(b"", response.length)
        except BaseException:
            conn.close()  # the rest of the answer is still on the connection
            raise
        finally:
            response.close()
        return Answer(response.status, httpx.Headers(response.getheaders()), body)


def _decoded(chunks: Iterator[bytes], coding: str, path: str) -> Iterator[bytes]:
    """The body ``chunks`` decoded from ``coding`` (``gzip``, ``x-gzip``, ``deflate``: what
    httpx decodes, but ``br`` and ``zstd``, which it decodes only with optional packages),
    at most ``_CHUNK`` bytes out of the decoder at a time, so that the caller's size bound
    (:func:`read_body`) stops a small body that inflates without end; :class:`FormatError`
    for another coding, a damaged or cut stream. Asked for with ``Accept-Encoding:
    identity``, but a front (a load balancer, a CDN) may compress the log's answers anyway:
    httpx decodes them, and the lean path answers the same (ops30)."""
    name = coding.strip().lower()
    if name in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif name == "deflate":
        d = zlib.decompressobj()  # zlib-wrapped (RFC 9110 §8.4.1.2)
    else:
        raise FormatError(f"{path}: cannot decode the answer: content coding {coding!r}")
    try:
        for chunk in chunks:
            data = chunk
            while data and not d.eof:
                out = d.decompress(data, _CHUNK)
                if out:
                    yield out
                data = d.unconsumed_tail
        if not d.eof:
            raise FormatError(f"{path}: the answer's {name} stream is cut short")
    except zlib.error as exc:
        raise FormatError(f"{path}: cannot decode the answer ({name}): {exc}") from None


def _idle_close_race(reused: _DeadlineSocket | None, seen: int, exc: BaseException) -> bool:
    """Whether a failed exchange on the kept-alive connection ``reused`` (None: it was a
    fresh one), which had read ``seen`` bytes before it, is the server's idle close met in
    flight: not one byte of an answer came, and it was no timeout (a server still working
    on the request may answer it yet)."""
    return reused is not None and reused.received == seen and not isinstance(exc, TimeoutError)
