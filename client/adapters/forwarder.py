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
import ssl
from typing import Any
from urllib.parse import quote, urlsplit

import h11

from client.adapters.exchange import SCIM_ERROR_URN
from client.adapters.middleware import Receive, Scope, Send

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


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange before its answer started."""


class _Conn:
    """One HTTP/1.1 connection to the upstream, driven by h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.reused = False
        self.received = 0  # response bytes read in the current exchange

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Forwarder:
    """A pure ASGI app that forwards each HTTP request to ``upstream`` (see the module doc).

    The upstream client is h11 (the HTTP/1.1 engine under httpx and uvicorn) on asyncio
    streams with a keep-alive pool, rather than an ``httpx.AsyncClient``: the client layer
    would keep one cookie jar for all the proxy's users (replaying one caller's
    ``Set-Cookie`` on another's requests), may add default headers, and costs about 1 ms of
    CPU per request more (measured, ``bench/scim_proxy.py``), which is what limits a proxy
    sharing a machine with its SP. A request on a reused idle connection that the upstream
    closed before answering a single byte is retried once on a new connection (the request
    never reached the SP); nothing else is retried.
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
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        # Bounds the upstream's concurrency: excess requests wait here, not in the SP's
        # listen queue (a full one drops SYNs, which costs the client a 1 s retransmit).
        self._slots = asyncio.Semaphore(max_connections)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # --- connections -------------------------------------------------------------------------

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, limit=1 << 20
                )
        except TimeoutError:
            raise UpstreamError("connect timeout") from None
        except OSError as exc:
            raise UpstreamError(f"connect failed: {exc}") from None
        return _Conn(reader, writer)

    async def _acquire(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            conn.close()
        return await self._connect()

    def _release(self, conn: _Conn) -> None:
        h = conn.h11
        if (
            h.our_state is h11.DONE
            and h.their_state is h11.DONE
            and len(self._idle) < self.max_idle
            and conn.usable()
        ):
            h.start_next_cycle()
            conn.received = 0
            self._idle.append(conn)
        else:
            conn.close()

    async def _next_event(self, conn: _Conn) -> Any:
        while True:
            event = conn.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(self.timeout):
                data = await conn.reader.read(65536)
            conn.received += len(data)
            conn.h11.receive_data(data)  # b"" = EOF, which h11 turns into an event or error

    async def _exchange(self, conn: _Conn, request: h11.Request, body: bytes) -> h11.Response:
        """Send the request; return the response head (1xx skipped)."""
        h = conn.h11
        data = h.send(request) or b""
        if body:
            data += h.send(h11.Data(data=body)) or b""
        data += h.send(h11.EndOfMessage()) or b""
        conn.writer.write(data)
        async with asyncio.timeout(self.timeout):
            await conn.writer.drain()
        while True:
            event = await self._next_event(conn)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    # --- the request -------------------------------------------------------------------------

    def _request_headers(self, scope: Scope, body: bytes) -> list[tuple[bytes, bytes]]:
        raw = [(bytes(k), bytes(v)) for k, v in scope.get("headers", ())]
        drop = _hop_by_hop(raw) | {b"content-length", b"expect"}
        if not self.preserve_host:
            drop |= {b"host"}
        out = [(k, v) for k, v in raw if k.lower() not in drop]
        if not self.preserve_host or not any(k.lower() == b"host" for k, _ in out):
            out.insert(0, (b"host", self.host_header))
        if body or str(scope["method"]) in ("POST", "PUT", "PATCH"):
            out.append((b"content-length", str(len(body)).encode()))
        if self.forwarded:
            client = scope.get("client")
            host = next((v for k, v in raw if k.lower() == b"host"), None)
            if client:
                prior = [v for k, v in out if k.lower() == b"x-forwarded-for"]
                ip = str(client[0]).encode("latin-1")
                chain = b", ".join([*prior, ip])
                out = [(k, v) for k, v in out if k.lower() != b"x-forwarded-for"]
                out.append((b"x-forwarded-for", chain))
            if not any(k.lower() == b"x-forwarded-proto" for k, _ in out):
                out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
            if host is not None and not any(k.lower() == b"x-forwarded-host" for k, _ in out):
                out.append((b"x-forwarded-host", host))
        return out

    @staticmethod
    def _target(scope: Scope) -> bytes:
        raw_path = scope.get("raw_path") or quote(str(scope["path"])).encode("ascii")
        qs = scope.get("query_string") or b""
        return bytes(raw_path) + (b"?" + bytes(qs) if qs else b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets are not SCIM
            return
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        async with self._slots:
            await self._forward(scope, send, body)

    async def _forward(self, scope: Scope, send: Send, body: bytes) -> None:
        method = str(scope["method"])
        try:
            request = h11.Request(
                method=method,
                target=self._target(scope),
                headers=self._request_headers(scope, body),
            )
        except h11.LocalProtocolError as exc:
            await scim_error(send, 400, f"request cannot be forwarded: {exc}")
            return
        conn: _Conn | None = None
        response: h11.Response | None = None
        for attempt in (1, 2):
            try:
                conn = await self._acquire()
            except UpstreamError as exc:
                _log.warning("upstream unreachable for %s %s: %s", method, scope["path"], exc)
                await scim_error(send, 502, "the SCIM service provider cannot be reached")
                return
            try:
                response = await self._exchange(conn, request, body)
                break
            except asyncio.CancelledError:
                conn.close()
                raise
            except TimeoutError:
                conn.close()
                _log.warning("upstream timeout for %s %s", method, scope["path"])
                await scim_error(send, 504, "the SCIM service provider did not answer in time")
                return
            except (OSError, h11.ProtocolError) as exc:
                conn.close()
                # A reused connection the upstream had closed: the request never reached it.
                if attempt == 1 and conn.reused and conn.received == 0:
                    continue
                _log.warning("upstream failed for %s %s: %r", method, scope["path"], exc)
                await scim_error(send, 502, "the SCIM service provider broke the connection")
                return
        if conn is None or response is None:  # pragma: no cover - the loop returns or breaks
            return
        drop = _hop_by_hop(list(response.headers.raw_items()))
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (k, v) for k, v in response.headers.raw_items() if k.lower() not in drop
                ],
            }
        )
        try:
            while True:
                event = await self._next_event(conn)
                if isinstance(event, h11.Data):
                    await send(
                        {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                    )
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except (OSError, TimeoutError, h11.ProtocolError) as exc:  # broke off mid-body
            _log.warning("upstream body error for %s %s: %r", method, scope["path"], exc)
            conn.close()
        except BaseException:  # cancelled (client gone, shutdown): never pool a half-read one
            conn.close()
            raise
        else:
            self._release(conn)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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
