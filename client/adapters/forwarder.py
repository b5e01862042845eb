"""The forwarder of ``tlog scim-proxy``: a pure ASGI app that passes each request to the SCIM
service provider upstream and streams its answer back unchanged.

Method, path and query bytes, body, and headers but the hop-by-hop ones (repeated ones
repeated) go upstream over HTTP/1.1 with keep-alive; status, headers in their order, body
bytes, content encoding and errors come back. 502 (SCIM error) if the upstream cannot be
reached, 504 if it does not answer in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import ssl
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from client.adapters.body import BodyTooLarge, read_request_body
from client.adapters.exchange import SCIM_ERROR_URN
from client.adapters.middleware import Receive, Scope, Send
from client.runtime.logredact import redact_target

__all__ = ["HOP_BY_HOP", "Forwarder", "UpstreamError", "scim_error"]

_log = logging.getLogger("client.adapters.forwarder")

# RFC 9110 §7.6.1: connection-specific fields are not forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named = {
        t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")
    }
    return HOP_BY_HOP | named


# Response header names that need a second look: the hop-by-hop ones (dropped, with what a
# Connection header names) and the two that frame the body.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NOTED = HOP_BY_HOP | _FRAMING


def _logged(scope: Scope) -> str:
    """The request's path as a log line may show it: resource ids (user names, e-mail
    addresses) as ``{id}`` (:func:`client.runtime.logredact.redact_target`)."""
    return redact_target(str(scope.get("path", "")))


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange before its answer started."""


class _ProtocolError(Exception):
    """The upstream's answer is not HTTP/1.1 the proxy can pass on."""


# What may be sent (RFC 9110 §5.6.2 token, §5.5 field value, as h11 checks them).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+")
# Header names already checked against _TOKEN (a few dozen in practice; bounded).
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_MAX = 1024
_MAX_HEAD = 64 * 1024  # bytes of a response head (status line and headers)
_HIGH_WATER = 1 << 20  # response body bytes buffered before reading from the upstream pauses


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection to the upstream: an asyncio protocol whose answers are parsed
    by httptools (llhttp, the C parser under uvicorn), a fresh parser per exchange.

    The exchange's state is plain attributes; the forwarder waits (:meth:`head`,
    :meth:`more`) on a future that the callbacks set when the head is complete, body bytes
    arrived, the answer ended or the connection broke. The per-read timeout is one timer
    per wait, due ``timeout`` seconds after the last bytes came from the upstream (``last``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.reused = False
        self.received = 0  # response bytes read in the current exchange
        self.last = loop.time()
        self.deadline = math.inf  # when the whole answer must have come (loop time)
        self.head_method = False
        self._wake: asyncio.Future[Any] | None = None
        self._reading_paused = False
        self._paused_at = 0.0  # loop time reading was paused at (backpressure)
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.hop = False  # a hop-by-hop header (Connection included) is among them
        self.length = False  # Content-Length or Transfer-Encoding is among them
        self.head_bytes = 0
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.framed = False  # Content-Length or chunked: the end is not the connection's

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.last = self.loop.time()
        if self.done or (self.head_method and self.head_done):
            self._fail(_ProtocolError("bytes after the end of the answer"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_ProtocolError(f"bad answer: {exc}"))
            return
        except httptools.HttpParserUpgrade:  # a 101 never asked for (no Upgrade is forwarded)
            self._fail(_ProtocolError("bad answer: a protocol switch"))
            return
        if not self.head_done and self.received > 2 * _MAX_HEAD:
            self._fail(_ProtocolError("answer head too large"))
            return
        if self.buffered > _HIGH_WATER and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._paused_at = self.last
            self.transport.pause_reading()
        self._notify()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.done and not self.framed and not self.head_method:
            self.done = True  # a body delimited by the connection's end (RFC 9112 §6.3)
        elif not self.done and self.error is None:
            self.error = exc or ConnectionResetError("the upstream closed the connection")
        self._notify()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.head_done:  # a second answer in the same read: the upstream is out of step
            raise _ProtocolError("bytes after the end of the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:  # a trailer field: not a header field (RFC 9110 §6.5), dropped
            return
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD:
            raise _ProtocolError("answer head too large")  # feed_data raises, see there
        self.headers.append((name, value))
        lk = name.lower()
        if lk in _NOTED:
            if lk in _FRAMING:
                self.length = True
            if lk in HOP_BY_HOP:  # Transfer-Encoding is both
                self.hop = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:  # RFC 9110 §15: no status an ASGI server can send
            raise _ProtocolError(f"bad answer: status {status}")
        if status < 200:  # 1xx: skipped (101 is never asked for: Upgrade is not forwarded)
            self.headers = []
            self.hop = self.length = False
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self.framed = status in (204, 304) or self.length

    def answer_headers(self) -> list[tuple[bytes, bytes]]:
        """The answer's headers as passed to the client: in their order, but the hop-by-hop
        ones and those a ``Connection`` header names (:func:`_hop_by_hop`). The list itself
        when there is none of those (the common answer: nothing to filter)."""
        if not self.hop:
            return self.headers
        drop = _hop_by_hop(self.headers)
        return [(k, v) for k, v in self.headers if k.lower() not in drop]

    def on_body(self, data: bytes) -> None:
        if self.head_done:
            self.body.append(data)
            self.buffered += len(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True

    # the forwarder's side

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.close()
        self._notify()

    def _notify(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    def usable(self) -> bool:
        t = self.transport
        return not self.closed and self.error is None and t is not None and not t.is_closing()

    def reusable(self) -> bool:
        """The answer ended cleanly and the upstream keeps the connection open."""
        return (self.done or (self.head_method and self.head_done)) and (
            self.keep_alive and self.usable()
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def start(self, data: bytes, head_method: bool, deadline: float = math.inf) -> None:
        """Send a request; the answer's state starts afresh; it must have come whole by
        ``deadline`` (loop time)."""
        self._reset()
        self.received = 0
        self.head_method = head_method
        self.last = self.loop.time()
        self.deadline = deadline
        if self.transport is None:  # pragma: no cover - connected before use
            raise ConnectionResetError("not connected")
        self.transport.write(data)

    async def _next(self, timeout: float) -> None:
        """Until the callbacks report something, or TimeoutError after ``timeout`` seconds
        without a byte from the upstream, or at the answer's deadline (an upstream that
        trickles bytes never goes ``timeout`` seconds without one)."""
        deadline = self.deadline
        if deadline != math.inf and self.loop.time() >= deadline:
            raise TimeoutError  # (bytes that keep coming would always wake it first)
        self._wake = w = self.loop.create_future()
        timer = self.loop.call_at(min(self.last + timeout, deadline), _expire, w)
        try:
            await w
        finally:
            timer.cancel()
            self._wake = None
        if w.result() is _TIMEOUT:
            now = self.loop.time()
            if now - self.last >= timeout or now >= self.deadline:
                raise TimeoutError

    async def head(self, timeout: float) -> None:
        """Until the answer's head is complete (1xx skipped)."""
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._next(timeout)

    async def more(self, timeout: float) -> None:
        """Until body bytes are buffered or the answer ended."""
        while not self.body and not self.done:
            if self.error is not None:
                raise self.error
            await self._next(timeout)

    def take_body(self) -> bytes:
        data = b"".join(self.body)
        self.body = []
        self.buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            # The wait for the client to take the buffered bytes is the client's, not the
            # upstream's silence: neither the per-read timeout nor the answer's deadline
            # counts it (a large answer sent at full speed to a slow client is not cut).
            now = self.loop.time()
            self.deadline += now - self._paused_at
            self.last = now
            self.transport.resume_reading()
        return data


_TIMEOUT: Any = object()


def _expire(w: asyncio.Future[Any]) -> None:
    if not w.done():
        w.set_result(_TIMEOUT)


class Forwarder:
    """A pure ASGI app that forwards each HTTP request to ``upstream`` (see the module doc).

    The upstream client is an asyncio protocol with httptools (llhttp, the C parser uvicorn
    uses) and a keep-alive pool, rather than an HTTP client library: a client layer would
    keep one cookie jar for all the proxy's users (replaying one caller's ``Set-Cookie`` on
    another's requests), may add default headers or decompress, and costs CPU per request
    that a proxy sharing a machine with its SP takes from the SP (measured,
    ``bench/scim_proxy.py`` and docs/performance-history.md: h11 on asyncio streams, aiohttp's
    client and this). A request on a reused idle connection that the upstream closed before
    answering a single byte is retried once on a new connection (the request never reached
    the SP); nothing else is retried.
    """

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        preserve_host: bool = False,
        forwarded: bool = True,
        max_idle: int = 64,
        max_connections: int = 64,
        max_body: int = 16 << 20,
        answer_timeout: float | None = None,
    ) -> None:
        u = urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        default = (u.scheme == "https" and self.port == 443) or (
            u.scheme == "http" and self.port == 80
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default else f"{host}:{self.port}").encode("idna")
        self.base_path = u.path.rstrip("/")
        self.preserve_host = preserve_host
        self.forwarded = forwarded
        self.timeout = timeout
        # The whole answer (head and body) within this, however the upstream trickles it.
        self.answer_timeout = 10 * timeout if answer_timeout is None else answer_timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        # Request bytes held per request (a write's are bounded by the audit middleware
        # already; a read's, a .search's or an unknown method's only here). Then 413.
        self.max_body = max_body
        self._idle: list[_Conn] = []
        # Never forwarded as the client sent them (Host: unless preserve_host).
        self._drop = HOP_BY_HOP | {b"content-length", b"expect"}
        if not preserve_host:
            self._drop |= {b"host"}
        # Bounds the upstream's concurrency: excess requests wait here, not in the SP's
        # listen queue (a full one drops SYNs, which costs the client a 1 s retransmit).
        self._slots = asyncio.Semaphore(max_connections)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # --- connections -------------------------------------------------------------------------

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError:
            raise UpstreamError("connect timeout") from None
        except OSError as exc:
            raise UpstreamError(f"connect failed: {exc}") from None
        return conn

    async def _acquire(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            conn.close()
        return await self._connect()

    def _release(self, conn: _Conn) -> None:
        if conn.reusable() and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    # --- the request -------------------------------------------------------------------------

    def _request_headers(self, scope: Scope, body: bytes) -> list[tuple[bytes, bytes]]:
        """The headers sent upstream: the client's but the hop-by-hop ones (and those its
        ``Connection`` names), ``Content-Length`` and ``Expect``; ``Host`` first (the
        upstream's unless ``preserve_host``); ``Content-Length``; then, if ``forwarded``,
        ``X-Forwarded-For`` (the client's chain plus its peer, last), ``-Proto`` and
        ``-Host`` unless the client sent them. One pass over the client's headers when none
        is ``Connection`` (the usual request); else a first pass reads what the
        ``Connection`` headers name, and the second drops those too."""
        got = self._pass(scope, body, self._drop, True)
        if got is None:
            named: set[bytes] = set()  # one union with the dropped names: not per header
            for k, v in scope.get("headers", ()):
                if bytes(k).lower() == b"connection":
                    named.update([t.strip().lower() for t in bytes(v).split(b",")])
            got = self._pass(scope, body, self._drop | named if named else self._drop, False)
        return [] if got is None else got  # (None only where a stop is asked)

    def _pass(
        self, scope: Scope, body: bytes, drop: frozenset[bytes], stop: bool
    ) -> list[tuple[bytes, bytes]] | None:
        """The upstream headers of :meth:`_request_headers` with the client's named in
        ``drop`` left out; None when ``stop`` and a ``Connection`` header is met (it may
        name more to drop)."""
        client = scope.get("client") if self.forwarded else None
        out: list[tuple[bytes, bytes]] = []
        prior: list[bytes] = []  # X-Forwarded-For values, when a peer is appended
        host = None  # the client's first Host, for X-Forwarded-Host (kept or not)
        has_host = has_proto = has_fhost = False
        for k, v in scope.get("headers", ()):
            k = bytes(k)
            lk = k.lower()
            if lk == b"host" and host is None:
                host = bytes(v)
            if lk in drop:
                if stop and lk == b"connection":
                    return None
                continue
            v = bytes(v)
            if lk == b"x-forwarded-for" and client:
                prior.append(v)
                continue
            if lk == b"host":
                has_host = True
            elif lk == b"x-forwarded-proto":
                has_proto = True
            elif lk == b"x-forwarded-host":
                has_fhost = True
            out.append((k, v))
        return self._finish_headers(
            scope, body, out, prior, client, host, has_host, has_proto, has_fhost
        )

    def _finish_headers(
        self,
        scope: Scope,
        body: bytes,
        out: list[tuple[bytes, bytes]],
        prior: list[bytes],
        client: Any,
        host: bytes | None,
        has_host: bool,
        has_proto: bool,
        has_fhost: bool,
    ) -> list[tuple[bytes, bytes]]:
        """The headers the proxy adds to the client's ``out``: ``Host`` first (unless the
        client's is kept), ``Content-Length``, the ``X-Forwarded-*`` ones."""
        if not self.preserve_host or not has_host:
            out.insert(0, (b"host", self.host_header))
        if body or str(scope["method"]) in ("POST", "PUT", "PATCH"):
            out.append((b"content-length", str(len(body)).encode()))
        if self.forwarded:
            if client:
                prior.append(str(client[0]).encode("latin-1"))
                out.append((b"x-forwarded-for", b", ".join(prior)))
            if not has_proto:
                out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
            if host is not None and not has_fhost:
                out.append((b"x-forwarded-host", host))
        return out

    @staticmethod
    def _target(scope: Scope) -> bytes:
        raw_path = scope.get("raw_path") or quote(str(scope["path"])).encode("ascii")
        qs = scope.get("query_string") or b""
        return bytes(raw_path) + (b"?" + bytes(qs) if qs else b"")

    @staticmethod
    def _request_bytes(
        method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        """The request as HTTP/1.1 bytes; ValueError naming what cannot be sent."""
        m = method.encode("ascii", "replace")
        if not _TOKEN.fullmatch(m):
            raise ValueError("illegal method characters")
        if not _TARGET.fullmatch(target):
            raise ValueError("illegal target characters")
        parts = [m, b" ", target, b" HTTP/1.1\r\n"]
        good = _GOOD_NAMES
        for k, v in headers:
            if k not in good:
                if not _TOKEN.fullmatch(k):
                    raise ValueError("illegal header name")
                if len(good) < _GOOD_NAMES_MAX:
                    good.add(k)
            if not _FIELD_VALUE.fullmatch(v):
                raise ValueError("illegal header value")
            parts += (k, b": ", v, b"\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets are not SCIM
            return
        try:
            body = await read_request_body(receive, self.max_body)
        except BodyTooLarge:
            await scim_error(send, 413, "request body too large for the proxy")
            return
        if body is None:
            return
        async with self._slots:
            await self._forward(scope, send, body)

    async def _forward(self, scope: Scope, send: Send, body: bytes) -> None:
        method = str(scope["method"])
        try:
            data = self._request_bytes(
                method, self._target(scope), self._request_headers(scope, body), body
            )
        except ValueError as exc:
            await scim_error(send, 400, f"request cannot be forwarded: {exc}")
            return
        head_method = method == "HEAD"
        conn: _Conn | None = None
        deadline = math.inf
        for attempt in (1, 2):
            try:
                conn = await self._acquire()
            except UpstreamError as exc:
                _log.warning("upstream unreachable for %s %s: %s", method, _logged(scope), exc)
                await scim_error(send, 502, "the SCIM service provider cannot be reached")
                return
            try:
                if deadline == math.inf:  # from the first attempt on
                    deadline = conn.loop.time() + self.answer_timeout
                conn.start(data, head_method, deadline)
                await conn.head(self.timeout)
                break
            except asyncio.CancelledError:
                conn.close()
                raise
            except TimeoutError:
                conn.close()
                _log.warning("upstream timeout for %s %s", method, _logged(scope))
                await scim_error(send, 504, "the SCIM service provider did not answer in time")
                return
            except (OSError, _ProtocolError) as exc:
                conn.close()
                # A reused connection the upstream had closed: the request never reached it.
                if attempt == 1 and conn.reused and conn.received == 0:
                    continue
                _log.warning("upstream failed for %s %s: %r", method, _logged(scope), exc)
                await scim_error(send, 502, "the SCIM service provider broke the connection")
                return
        if conn is None:  # pragma: no cover - the loop returns or breaks
            return
        await send(
            {
                "type": "http.response.start",
                "status": conn.status,
                "headers": conn.answer_headers(),
            }
        )
        try:
            last = b""
            while not head_method:
                await conn.more(self.timeout)
                if conn.done:
                    last = conn.take_body()
                    break
                chunk = conn.take_body()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (OSError, TimeoutError, _ProtocolError) as exc:  # broke off mid-body
            _log.warning("upstream body error for %s %s: %r", method, _logged(scope), exc)
            conn.close()
            # The answer is left unfinished: an ASGI server then breaks the connection, so
            # the client sees the break (a chunked answer ended here would look whole), and
            # the audit middleware records a write's answer as broken off.
            return
        except BaseException:  # cancelled (client gone, shutdown): never pool a half-read one
            conn.close()
            raise
        else:
            self._release(conn)
        await send({"type": "http.response.body", "body": last, "more_body": False})


async def scim_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps(
        {"schemas": [SCIM_ERROR_URN], "status": str(status), "detail": detail}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/scim+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
