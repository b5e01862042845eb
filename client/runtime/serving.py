"""Run an ASGI app under uvicorn so that slow, idle or greedy clients cannot exhaust it.

:func:`run_hardened` is the one server runner of ``tlog serve``, ``tlog scim-proxy`` and
``tlog-witness serve``. It lives in ``client/`` so the witness can use it; it imports uvicorn
only when called, so importing this module pulls in no server dependency.

What uvicorn does not do, and this adds (documented in docs/operations.md, "Limits and
timeouts"):

* **Header timeout.** The request head (request line and headers) must be complete within
  ``header_timeout`` seconds of the connection opening or of the previous response. A
  connection that sent nothing is closed; one that sent part of a head gets ``408`` and is
  closed (slowloris). uvicorn only times out a connection that is idle *after* a response
  (``keep_alive``), never a fresh one, and never a half-sent head.
* **Body timeout.** Once the head is in, the body must be complete within ``body_timeout``
  seconds (unless the app has stopped reading it). Otherwise the connection is closed and
  the app sees ``http.disconnect``.
* **Write timeout (slow readers).** A response the client does not take is not kept
  forever: when the connection's send buffer (beyond what the kernel's socket buffers
  hold) has data that has not drained below the low-water mark for ``write_timeout``
  seconds, the connection is aborted (reset, its buffered response dropped). Without this,
  a client that asks for a 16 MiB entry bundle and never reads would pin the bundle in
  memory and its connection forever, and a response streaming to it would hold its
  request "in progress", so the connection limit could not evict it. Any reading client,
  however slow its link, drains the buffer below the mark again and again, which resets
  the clock.
* **Head size.** More than ``max_head_bytes`` of request line and headers: ``431`` and close
  (httptools, uvicorn's fast parser, has no such limit of its own).
* **Framing as h11 frames it.** (httptools) A ``Transfer-Encoding`` other than exactly
  ``chunked`` (``gzip, chunked``, which llhttp takes as chunked) is answered ``501`` and
  closed before the app sees it; the trailer fields of a chunked body are discarded (llhttp
  reports them as header fields, and uvicorn would append them to the headers the app holds
  already, mid-request). llhttp itself refuses the other ambiguous framings with ``400``:
  ``Content-Length`` with ``Transfer-Encoding``, two ``Content-Length`` values, ``chunked``
  not last, obs-fold lines, spaces before a header name's colon, bare CR or LF line ends.
* **Connection limit that favours real work.** At most ``max_connections`` connections
  (clamped below the process's file-descriptor limit, which is raised to its hard limit).
  A new connection over the limit evicts one of the connections that are idle or still
  sending their request: one that has never completed a request before a client between
  keep-alive requests, one that has sent nothing before one sending its head, the oldest
  first among equals; only when every connection has a request in progress is the new one
  refused with ``503``. A few hundred idle or half-sent sockets therefore never lock out a
  new client, and the limit never closes a request that is being answered.

The timers are checked once a second from uvicorn's own tick, so the request path carries
no per-request timer; each expiry is at most a second late.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import ipaddress
import logging
import resource
import socket
import struct
import sys
import termios
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from client.runtime.server_limits import ServerLimits

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

__all__ = [
    "ServerLimits",
    "ServerStartError",
    "ServingThread",
    "add_limit_arguments",
    "hardened_config",
    "hardened_server",
    "limits_from_args",
    "parse_forwarded_allow_ips",
    "run_hardened",
]

log = logging.getLogger("tlog.serving")

_FD_RESERVE = 128  # descriptors kept for storage, key files, outgoing HTTP clients, logs

_R408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_R431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
_R501 = b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_R503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)

# Phases of a connection, in eviction order (idle or sending a head first, never "app").
HEAD, BODY, APP = 0, 1, 2


class _CoalescingTransport:
    """A transport whose writes during one event-loop iteration leave as one ``write``.

    uvicorn writes an answer's status line and headers (``http.response.start``) and its
    body (``http.response.body``) separately, and an asyncio transport sends each at once:
    two ``send`` calls, two TCP segments, and the client woken twice, for an answer that
    fits in one segment. Here the writes are buffered and joined at the end of the loop
    iteration (``call_soon``); ``close``, ``write_eof`` and the write-buffer size account
    for what is buffered; ``abort`` drops it. Everything else is the wrapped transport's.
    """

    __slots__ = ("_buf", "_loop", "_t")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._t = transport
        self._loop = asyncio.get_running_loop()
        self._buf: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._buf is None:
            self._buf = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            self._buf.append(bytes(data))

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def _flush(self) -> None:
        buf, self._buf = self._buf, None
        if buf and not self._t.is_closing():
            self._t.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def get_write_buffer_size(self) -> int:
        pending = sum(len(b) for b in self._buf) if self._buf else 0
        return self._t.get_write_buffer_size() + pending

    def write_eof(self) -> None:
        self._flush()
        self._t.write_eof()

    def close(self) -> None:
        self._flush()
        self._t.close()

    def abort(self) -> None:
        self._buf = None
        self._t.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


# How many victims :meth:`_Guard._make_room` may pass over because bytes wait for them unread.
_EVICTION_LOOKS = 4


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head refused there (over the size
    limit, or framed by a transfer coding other than ``chunked``)."""


class _Guard:
    """Mixed in before a uvicorn HTTP protocol class (httptools or h11)."""

    # Set by uvicorn's protocol classes (declared for the type checker).
    connections: set[Any]
    cycle: Any
    transport: asyncio.Transport
    flow: Any

    limits: ServerLimits
    max_connections: int
    _phase: int
    _phase_key: object
    _since: float
    _head_bytes: int
    _head_tail: bytes
    _read_len: int
    _unchecked: int
    _head_refused: bool
    _write_since: float | None
    _trailers: bool

    coalesce_writes: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        if self.coalesce_writes:
            transport = _CoalescingTransport(transport)  # type: ignore[assignment]
        super().connection_made(transport)  # type: ignore[misc]
        self._phase, self._phase_key = HEAD, None
        self._write_since = None
        self._since = asyncio.get_running_loop().time()
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of a head still coming in (its end may span reads)
        self._read_len = 0  # bytes of the read being parsed
        self._unchecked = 0  # bytes read since the read in which the last head completed
        self._head_refused = False
        self._trailers = False  # (httptools) the current message's head is complete
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if (
            (cycle is None or cycle.response_complete)
            and self._head_bytes + len(data) > self.limits.max_head_bytes
            and not self.transport.is_closing()
        ):
            # A head that would go over the limit is refused before the parser sees it:
            # once parsed whole (it may arrive in one read), the app would already run.
            # Its end: the blank line, which may have begun in the previous read.
            tail = self._head_tail
            split = (tail + data[:3]).find(b"\r\n\r\n")
            if split >= 0:
                end = split + 4 - len(tail)  # head bytes of this read
            else:
                found = data.find(b"\r\n\r\n")
                end = -1 if found < 0 else found + 4
            if end < 0 or self._head_bytes + end > self.limits.max_head_bytes:
                self._refuse(_R431)
                return
        self._read_len = len(data)
        self._unchecked += len(data)
        try:
            super().data_received(data)  # type: ignore[misc]
        except _HeadTooLarge:  # pragma: no cover - uvicorn's parser errors are caught there
            return
        if self._head_refused:
            return
        if self.cycle is cycle and (cycle is None or cycle.response_complete):
            # Still no complete head: count what it has sent so far.
            self._head_bytes += len(data)
            self._head_tail = (self._head_tail + data)[-3:]
            if self._head_bytes > self.limits.max_head_bytes and not self.transport.is_closing():
                self._refuse(_R431)
        else:
            self._head_bytes = 0
            self._head_tail = b""

    def on_message_begin(self) -> None:
        """(httptools) A new request: its header fields are taken until its head ends."""
        self._trailers = False
        super().on_message_begin()  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        """(httptools) A header field, or a trailer field of a chunked body: llhttp reports
        both alike and uvicorn appends both to the request's headers, which the app holds
        already, so a trailer would appear among them mid-request (an app or a proxy that
        reads them before and after the body would see two different requests, e.g.
        ``Authorization`` or ``Content-Type`` sent as a trailer). Trailer fields are
        discarded, as RFC 9112 §7.1.2 lets a recipient do (h11 does not pass them on)."""
        if not self._trailers:
            super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        """(httptools) A complete head, before uvicorn makes it a request: measured when the
        bytes read since the last head could hold one over the limit. That catches a head
        the checks in :meth:`data_received` cannot see: one pipelined behind another in the
        same read, or sent while an earlier request is still being answered. Refused with
        431 (after an earlier request: just closed), and the app never sees it."""
        lim = self.limits.max_head_bytes
        hb: Any = self
        if self._unchecked > lim:
            size = _head_size(hb.url, hb.headers)
            if size > lim:
                self._head_refused = True
                if not self.transport.is_closing():
                    self._refuse(_R431)
                raise _HeadTooLarge
        self._unchecked = self._read_len  # the rest of this read may hold the next head
        codings = [
            c.strip().lower()
            for k, v in hb.headers
            if k == b"transfer-encoding"
            for c in v.split(b",")
        ]
        if codings and codings != [b"chunked"]:
            # llhttp takes "gzip, chunked" as chunked and passes the body on still gzipped
            # under no coding the app can see; h11 answers 501 to anything but "chunked".
            # So does this (RFC 9112 §6.1: a coding the server does not understand), before
            # the app sees the request.
            self._head_refused = True
            if not self.transport.is_closing():
                cycle = self.cycle
                if cycle is not None and cycle.response_complete and not cycle.more_body:
                    # after an earlier request answered whole: the 501 follows its answer
                    # (review 40b: only a first request was answered, later ones just closed)
                    self.transport.write(_R501)
                    self.transport.close()
                else:
                    self._refuse(_R501)
            raise _HeadTooLarge
        super().on_headers_complete()  # type: ignore[misc]
        self._trailers = True

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:  # the parser's error is our refusal: answered already
            return
        super().send_400_response(msg)  # type: ignore[misc]

    def resume_writing(self) -> None:
        # The send buffer drained below the low-water mark: the client is reading.
        self._write_since = None
        super().resume_writing()  # type: ignore[misc]

    def _check_write(self, now: float) -> bool:
        """Abort a connection whose client has not taken its response for write_timeout."""
        if not self.transport.get_write_buffer_size():
            self._write_since = None
            return False
        if self._write_since is None:
            self._write_since = now
            return False
        if now - self._write_since <= self.limits.write_timeout:
            return False
        log.warning(
            "closing a connection whose client has not read its response for %g s "
            "(%d bytes unsent)",
            self.limits.write_timeout,
            self.transport.get_write_buffer_size(),
        )
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # reset, not FIN: the kernel drops the unsent bytes at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        return True

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` and close; just close after an earlier request on this
        connection (its leftover body may still be arriving: no stray second answer)."""
        if self.cycle is None:
            self.transport.write(response)
        self.transport.close()

    def _current_phase(self) -> tuple[int, object]:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return HEAD, cycle
        if cycle.more_body and not getattr(self.flow, "read_paused", False):
            return BODY, cycle
        return APP, cycle

    def _check(self, now: float) -> None:
        """Advance this connection's phase clock; close it if its phase has run out."""
        if self._check_write(now) or self.transport.is_closing():
            return  # a closing transport still flushing is covered by the write timeout
        phase, key = self._current_phase()
        if phase != self._phase or key is not self._phase_key:
            self._phase, self._phase_key, self._since = phase, key, now
            return
        if phase == HEAD and now - self._since > self.limits.header_timeout:
            if self._head_bytes:
                self._refuse(_R408)
            else:
                self.transport.close()
        elif phase == BODY and now - self._since > self.limits.body_timeout:
            self.transport.close()

    def _unread(self) -> int:
        """Bytes waiting in the kernel's receive buffer unread (``FIONREAD``; 0 when it
        cannot be asked)."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return 0
        try:
            got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        return int(struct.unpack("i", got)[0])

    def _make_room(self) -> None:
        """Over the limit: close a connection that is idle or sending its request, else
        this one. Ranked by what an attacker cannot have cheaply, the oldest first within a
        rank: a connection sending a head before one sending a body; one that has never
        completed a request before one that has (a client between its keep-alive requests
        has proved itself with a whole request, which the app answered); of those that have
        not, one that has sent nothing of a head before one that has begun one. A flood of
        idle or dribbling sockets, however young it keeps them, therefore goes before a
        client that has been served or is sending its request.

        The scan is paid at each connection over the limit, which is every connection of a
        flood, so it makes no system call per connection: only the victim chosen as having
        sent nothing is asked whether bytes wait for it unread (a head that arrived in the
        same loop turn as the burst of connections; then the next is chosen, a few times at
        most).

        (ops31 ranked by the bytes sent a second, counting unread bytes with an ``ioctl``
        of every candidate: a socket that sent one byte outranked an idle keep-alive client,
        bytes cost an attacker nothing up to the head limit, and each scan cost ~9x more;
        review 40a. Before ops31 the oldest went first whatever it had done.)"""
        victim: _Guard | None = None
        begun: set[int] = set()  # chosen as having sent nothing, but bytes wait unread
        for _ in range(_EVICTION_LOOKS):
            victim = None
            best: tuple[int, bool, bool, float] = (APP, True, True, 0.0)
            for c in self.connections:
                if c is self or not isinstance(c, _Guard) or c.transport.is_closing():
                    continue
                phase, cycle = c._current_phase()
                if phase == APP:
                    continue
                key = (phase, cycle is not None, c._head_bytes > 0 or id(c) in begun, c._since)
                if victim is None or key < best:
                    victim, best = c, key
            if victim is None or best[1] or best[2] or not victim._unread():
                break
            begun.add(id(victim))
        if victim is not None:
            if victim._head_bytes:
                victim._refuse(_R503)
            else:
                victim.transport.close()
            return
        self.transport.write(_R503)
        self.transport.close()


def _head_size(target: bytes, headers: Any) -> int:
    """A head's size as both parsers' guards measure it: target, names, values, 4 a field."""
    return len(target) + sum(len(k) + len(v) + 4 for k, v in headers)


class _H11Guard(_Guard):
    """(h11) h11 buffers a head pipelined behind a request and parses it only once that
    request is answered; ``h11_max_incomplete_event_size`` bounds only a head still
    incomplete, so a complete one over the limit would reach the app. Each request h11
    produces is measured as it comes out of the parser: one over the limit closes the
    connection (431 if it is the first request) and the app never sees it."""

    conn: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import h11

        guard = self
        limit = self.limits.max_head_bytes

        class _Conn(h11.Connection):
            def next_event(self) -> Any:
                event = super().next_event()
                if isinstance(event, h11.Request) and (
                    _head_size(event.target, event.headers.raw_items()) > limit
                ):
                    guard._head_refused = True
                    if not guard.transport.is_closing():
                        guard._refuse(_R431)
                    return h11.PAUSED  # uvicorn stops handling events: nothing more is read
                return event

        self.conn = _Conn(h11.SERVER, limit)  # what hardened_config gives h11 anyway


def _fd_budget(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one; the connections it leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < target:
        new = target if hard == resource.RLIM_INFINITY else min(target, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):  # pragma: no cover - not allowed here
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - _FD_RESERVE))


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class HardenedServer(uvicorn.Server):
        """The start-up and the timers of every hardened server (:func:`hardened_server`)."""

        freeze_heap = False  # gc.freeze what start-up built (run_hardened: the processes)
        on_started: Callable[[], None] | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                if self.freeze_heap:
                    gc.collect()
                    gc.freeze()
                if self.on_started is not None:
                    self.on_started()

        async def on_tick(self, counter: int) -> bool:
            if counter % 10 == 0:  # uvicorn ticks every 0.1 s
                now = asyncio.get_running_loop().time()
                for c in list(self.server_state.connections):
                    if isinstance(c, _Guard):
                        c._check(now)
            return await super().on_tick(counter)

    return HardenedServer


_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_forwarded_allow_ips(text: str) -> tuple[str, ...]:
    """The proxies whose ``X-Forwarded-For``/``X-Forwarded-Proto`` a server believes, from a
    comma-separated list of IP addresses and networks (``10.0.0.1, 10.1.0.0/16, ::1``), or
    ``*`` alone (everyone). An empty text: nobody (the default of every program).

    Strict, unlike uvicorn's own parsing (which takes anything it cannot parse as a literal
    that never matches, so a typo silently trusts nobody, or a host name silently nothing):
    a host name, an empty item, a network with host bits set (``10.0.0.1/8``) or ``*`` next
    to other items is a :class:`ValueError` naming the item. The addresses come back in
    their canonical form; an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) also as its
    IPv4 address (the peer address it arrives with), an IPv4-mapped network
    (``::ffff:10.0.0.0/104``) also as its IPv4 network (``10.0.0.0/8``)."""
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        return ()
    if "*" in items:
        if len(items) != 1:
            raise ValueError("'*' (trust every peer) cannot be combined with other entries")
        return ("*",)
    out: list[str] = []
    for item in items:
        if not item:
            raise ValueError(f"empty entry in {text!r} (a comma too many?)")
        try:
            if "/" in item:
                net = ipaddress.ip_network(item, strict=True)
                out.append(str(net))
                if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_MAPPED):
                    # ``::ffff:a.b.c.0/120`` is that IPv4 network, for the reason below
                    out.append(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
            else:
                addr = ipaddress.ip_address(item)
                out.append(str(addr))
                mapped = getattr(addr, "ipv4_mapped", None)
                if mapped is not None:
                    # ``::ffff:a.b.c.d`` is that IPv4 peer: the servers listen with
                    # IPV6_V6ONLY (asyncio), so it arrives as ``a.b.c.d``, which uvicorn
                    # (comparing address objects) would not take for the mapped form
                    out.append(str(mapped))
        except ValueError as exc:
            raise ValueError(
                f"{item!r} is not an IP address or network (CIDR, no host bits set): {exc}"
            ) from None
    return tuple(out)


class _WebSocketsOnFirstUse(asyncio.Protocol):
    """uvicorn's own ``ws="auto"`` protocol, imported when a connection first asks to
    upgrade instead of at every start: loading it (the ``websockets`` package and, through
    it, ``importlib.metadata``) cost each ``tlog serve``, proxy and witness start ~16-20 ms
    of CPU, and none of them serves WebSockets. The class answers as ``auto`` does (the
    app's router then refuses the socket: 403, or 400 without a key); constructing this
    class gives uvicorn an instance of that protocol."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

        assert AutoWebSocketsProtocol is not None  # only used when a library is installed
        return AutoWebSocketsProtocol(*args, **kwargs)


def _ws_auto_available() -> bool:
    """Whether uvicorn's ``ws="auto"`` finds a WebSocket library (then it loads a protocol;
    without one it has none, and an upgrade request is served as plain HTTP)."""
    from importlib.util import find_spec

    return find_spec("websockets") is not None or find_spec("wsproto") is not None


def hardened_config(
    app: Any, host: str, port: int, limits: ServerLimits | None = None, **kwargs: Any
) -> uvicorn.Config:
    """A uvicorn Config whose HTTP protocol enforces ``limits`` (see the module docstring).

    ``kwargs`` go to :class:`uvicorn.Config` (``log_level``, ``access_log``, ...); ``http``
    may name the base protocol ("httptools", the default when installed, or "h11");
    ``coalesce_writes=True`` sends each answer's head and body in one write
    (:class:`_CoalescingTransport`).

    ``forwarded_allow_ips`` (from :func:`parse_forwarded_allow_ips`, or a text it parses,
    its errors raised as ValueError): the peers whose
    ``X-Forwarded-For``/``-Proto`` replace the connection's client address and scheme.
    Empty (the default): no forwarding header counts, from anyone. uvicorn's own default
    trusts 127.0.0.1 (or ``$FORWARDED_ALLOW_IPS``), so any local process could choose the
    address the access log records; here it is off unless named. ``*`` is logged as a
    WARNING (every client then chooses its own address).
    """
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    allow = kwargs.pop("forwarded_allow_ips", None) or ()
    # A string (uvicorn's own form) is parsed: tuple() of it would trust its characters,
    # i.e. nobody, silently
    trusted = parse_forwarded_allow_ips(allow) if isinstance(allow, str) else tuple(allow)
    if not kwargs.pop("proxy_headers", True):
        trusted = ()
    if trusted == ("*",):
        log.warning(
            "forwarded_allow_ips is '*': X-Forwarded-For and X-Forwarded-Proto are believed "
            "from EVERY client, so any client chooses the address it is logged under; name "
            "the reverse proxies' addresses instead"
        )
    kwargs["proxy_headers"] = bool(trusted)
    if trusted:
        kwargs["forwarded_allow_ips"] = list(trusted)
    lim = limits or ServerLimits()
    coalesce = bool(kwargs.pop("coalesce_writes", False))
    base: type[asyncio.Protocol]
    if kwargs.pop("http", "auto") == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    else:
        base = AutoHTTPProtocol
    protocol = type(
        f"Hardened{base.__name__}",
        (_H11Guard if base.__name__ == "H11Protocol" else _Guard, base),
        {
            "limits": lim,
            "max_connections": _fd_budget(lim.max_connections),
            "coalesce_writes": coalesce,
        },
    )
    kwargs.setdefault("server_header", False)
    if "ws" not in kwargs and _ws_auto_available():  # an explicit "auto" is uvicorn's own
        kwargs["ws"] = _WebSocketsOnFirstUse
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=lim.keep_alive,
        h11_max_incomplete_event_size=lim.max_head_bytes,
        backlog=lim.backlog,
        **kwargs,
    )


def hardened_server(
    config: uvicorn.Config,
    *,
    on_started: Callable[[], None] | None = None,
    freeze_heap: bool = False,
) -> uvicorn.Server:
    """A uvicorn Server for a :func:`hardened_config` that runs the limit timers.

    Its start-up is the one :func:`run_hardened` runs: ``on_started`` is called once the
    socket is bound and the app started (never when the bind or the app's start-up fails);
    ``freeze_heap`` then moves what start-up built out of the collector's reach first
    (``gc.freeze``, see :func:`run_hardened`). For callers that serve pre-bound sockets
    (``server.serve(sockets=[...])``) or run the server in a thread (:class:`ServingThread`),
    such as ``tlog-witness``, and the tests, which so run the start-up and the limits of
    ``tlog serve`` and ``tlog scim-proxy`` in their own process.
    """
    server = _server_class()(config)
    server.on_started = on_started  # type: ignore[attr-defined]
    server.freeze_heap = freeze_heap  # type: ignore[attr-defined]
    return server


class ServerStartError(RuntimeError):
    """An in-process server did not start: its thread ended first (the exception it ended
    with is the ``__cause__``), or start-up did not finish in time (the message shows
    where its thread was)."""


class ServingThread:
    """A uvicorn server (:func:`hardened_server`, or any ``uvicorn.Server``) served in a
    daemon thread, on pre-bound ``sockets`` or, without them, on its config's host and port.

    :meth:`start` returns only once uvicorn has started (a :class:`threading.Event` set from
    the serving thread when ``server.started`` is), so a caller never talks to a server that
    is not listening yet, and a server that cannot start is an error at once, not a client
    timeout later: start-up that fails (an exception, or uvicorn's ``sys.exit`` on a startup
    failure, which a thread would otherwise swallow) raises :class:`ServerStartError` from
    that exception, and start-up that hangs raises it after ``timeout`` seconds with the
    serving thread's stack in the message. :meth:`stop` asks the server to exit and waits
    for its thread. ``loop_factory``: the event loop to run (default: asyncio's).

    Given a :func:`hardened_server`, the server runs the start-up code of
    :func:`run_hardened` (``tlog serve``, ``tlog scim-proxy``): the confirmation here only
    observes it. What differs from ``run_hardened`` is what a thread cannot or must not do:
    ``Server.run`` blocks its caller and installs signal handlers (the main thread's only,
    so uvicorn skips them in a thread), and a test process does not ``gc.freeze`` its heap
    (``freeze_heap``: the objects of every earlier test would stay uncollectable for the
    rest of the run); the freeze is tested on ``run_hardened`` itself in a child process.
    """

    def __init__(
        self,
        server: uvicorn.Server,
        sockets: Sequence[socket.socket] | None = None,
        name: str = "uvicorn",
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.server = server
        self.name = name
        self.error: BaseException | None = None
        self._sockets = None if sockets is None else list(sockets)
        self._loop_factory = loop_factory
        self._ready = threading.Event()  # started, or the thread ended
        self._ended = threading.Event()
        startup = server.startup

        async def confirmed_startup(sockets: Any = None) -> None:
            await startup(sockets=sockets)
            if server.started:
                self._ready.set()

        server.startup = confirmed_startup  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self._loop_factory) as runner:
                runner.run(self.server.serve(sockets=self._sockets))
        except BaseException as exc:  # SystemExit included: uvicorn's startup failure
            self.error = exc
        finally:
            self._ended.set()
            self._ready.set()  # wake start(): it tells "ended" from "started"

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; return once the server listens (see the class docstring)."""
        self.thread.start()
        if not self._ready.wait(timeout):
            where = self.stack()
            self.server.should_exit = True  # it may still come up: then it stops at once
            raise ServerStartError(
                f"{self.name}: the server did not start within {timeout:g} s; "
                f"its thread is at:\n{where}\nthe other threads (innermost frames; one "
                f"may hold what it waits for):\n{self.others()}"
            )
        if self._ended.is_set() or not self.server.started:
            err = self.error
            detail = "" if err is None else f": {type(err).__name__}: {err}"
            raise ServerStartError(
                f"{self.name}: the server stopped before it started{detail}"
            ) from err

    def stack(self) -> str:
        """Where the serving thread is now (for a start-up that hangs)."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        if frame is None:
            return "(the thread is not running)"
        return "".join(traceback.format_stack(frame))

    def others(self, depth: int = 4) -> str:
        """The other threads of the process and their ``depth`` innermost frames."""
        names = {t.ident: t.name for t in threading.enumerate()}
        lines: list[str] = []
        for ident, frame in sys._current_frames().items():
            if ident == self.thread.ident:
                continue
            lines.append(f"-- {names.get(ident, '?')} ({ident})\n")
            lines += traceback.format_stack(frame)[-depth:]
        return "".join(lines) or "(none)\n"

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the server to exit; whether its thread ended within ``timeout`` seconds."""
        self.server.should_exit = True
        if self.thread.ident is None:
            return True
        return self._ended.wait(timeout)


def run_hardened(
    app: Any,
    host: str,
    port: int,
    limits: ServerLimits | None = None,
    *,
    on_started: Callable[[], None] | None = None,
    **kwargs: Any,
) -> bool:
    """Serve ``app`` on ``host:port`` until SIGINT/SIGTERM, with ``limits`` enforced.

    ``on_started`` runs once the socket is bound and the app started (a "listening" banner:
    never printed when the bind fails). Returns whether the server started. Extra keyword
    arguments go to :class:`uvicorn.Config` (``log_level``, ``access_log``,
    ``timeout_graceful_shutdown``, ``log_config``, ...).

    Once started, what start-up built (modules, uvicorn, the app, the store's handles) lives
    as long as the process: it is collected once and moved out of the garbage collector's
    reach (``gc.freeze``), so the full collections of a busy server stop walking those tens
    of thousands of objects every time (docs/performance-history.md, ``batch5`` and ``proxy5``
    rounds). Everything created later is collected as before.
    """
    config = hardened_config(app, host, port, limits, **kwargs)
    server = hardened_server(config, on_started=on_started, freeze_heap=True)
    server.run()
    return bool(server.started)


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--header-timeout`` ... ``--max-connections`` flags of every hardened server."""
    d = ServerLimits()
    p.add_argument(
        "--header-timeout",
        type=float,
        default=d.header_timeout,
        help="seconds a client has to send a complete request head, counted from "
        f"the connection or the previous response (default {d.header_timeout:g})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=d.body_timeout,
        help="seconds a client has to send a request body after its head "
        f"(default {d.body_timeout:g})",
    )
    p.add_argument(
        "--keep-alive",
        type=int,
        default=d.keep_alive,
        help=f"seconds an idle keep-alive connection stays open (default {d.keep_alive})",
    )
    p.add_argument(
        "--write-timeout",
        type=float,
        default=d.write_timeout,
        help="seconds a client may leave a response unread before the connection is "
        f"reset (default {d.write_timeout:g})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open connections at most; over it an idle or half-sent one is closed (one "
        "never served first, then one that sent nothing, the oldest first; default "
        f"{d.max_connections})",
    )


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    for name in (
        "header_timeout",
        "body_timeout",
        "keep_alive",
        "write_timeout",
        "max_connections",
    ):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return ServerLimits(
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive=args.keep_alive,
        write_timeout=args.write_timeout,
        max_connections=args.max_connections,
    )
