"""``tlog scim-proxy``: an auditing reverse proxy for SCIM service providers in any language.

The proxy forwards every request to ``--upstream`` unchanged (method, path and query bytes,
body, headers but the hop-by-hop ones, repeated ones repeated) over HTTP/1.1 with
keep-alive, and streams the answer back unchanged (status, headers in their order, body
bytes, content encoding, errors; header names are case-insensitive, and ASGI servers
lower-case them), inside the same
:class:`client.adapters.middleware.AuditMiddleware` an in-process Python SP would use. So the
SCIM client sees the SP's own answers, plus ``X-Request-Id`` and the ``Tlog-*`` receipt
headers on writes.

Paths are not rewritten: ``--upstream http://sp:8080/scim/v2`` means clients use
``http://<proxy>/scim/v2/...``, and ``/scim/v2`` is the SCIM base for the audit records.
``Host`` is the upstream's (``--preserve-host`` keeps the client's) and ``X-Forwarded-For``,
``-Proto`` and ``-Host`` tell the SP who asked (``--no-forwarded`` leaves them out); an SP
that builds ``meta.location`` from them (scim2-server ``--reverse-proxy``) then answers with
the proxy's URLs.

The proxy's own answers: 502 (SCIM error) if the upstream cannot be reached, 504 if it does
not answer within ``--upstream-timeout``; a write that got one of those is recorded as a
failure with that status, since the proxy cannot know whether the SP applied it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import h11
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from client.adapters.exchange import SCIM_ERROR_URN
from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from client.adapters.pseudonyms import LogPseudonyms
from client.adapters.relay import Relay
from client.runtime.serving import run_hardened
from tlog.config import ProxyConfig
from tlog.metrics import proxy_routes

__all__ = [
    "Forwarder",
    "LogUnreachable",
    "ProxySettings",
    "StartupError",
    "UpstreamError",
    "build_proxy",
    "check_log",
    "main_proxy",
]

_log = logging.getLogger("tlog.scim_proxy")

# The proxy's own endpoint (not forwarded): the audit backlog as JSON.
STATUS_PATH = "/.tlog/status"

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


class StartupError(Exception):
    """The proxy must not start: its log, token or tenant do not fit together."""


class LogUnreachable(StartupError):
    """The log could not be asked at start-up (down, or answering 5xx). Not a mismatch: the
    proxy starts and queues events in its durable outbox, since refusing to start during a log
    outage would stop provisioning the outbox exists to keep going."""


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
            await _scim_error(send, 400, f"request cannot be forwarded: {exc}")
            return
        conn: _Conn | None = None
        response: h11.Response | None = None
        for attempt in (1, 2):
            try:
                conn = await self._acquire()
            except UpstreamError as exc:
                _log.warning("upstream unreachable for %s %s: %s", method, scope["path"], exc)
                await _scim_error(send, 502, "the SCIM service provider cannot be reached")
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
                await _scim_error(send, 504, "the SCIM service provider did not answer in time")
                return
            except (OSError, h11.ProtocolError) as exc:
                conn.close()
                # A reused connection the upstream had closed: the request never reached it.
                if attempt == 1 and conn.reused and conn.received == 0:
                    continue
                _log.warning("upstream failed for %s %s: %r", method, scope["path"], exc)
                await _scim_error(send, 502, "the SCIM service provider broke the connection")
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


async def _scim_error(send: Send, status: int, detail: str) -> None:
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


_P = ProxyConfig()  # the defaults, defined once in tlog.config


@dataclass(frozen=True)
class ProxySettings:
    """What :func:`build_proxy` needs: :class:`tlog.config.ProxyConfig` resolved (the token
    read from its file, the outbox cap in bytes)."""

    upstream: str
    log_url: str
    token: str
    tenant: str
    sp_id: str
    outbox: Path = _P.outbox
    fail_open: bool = _P.fail_open
    receipt_timeout: float = _P.receipt_timeout
    base_path: str | None = None
    preserve_host: bool = _P.preserve_host
    forwarded: bool = _P.forwarded
    upstream_timeout: float = _P.upstream_timeout
    upstream_connections: int = _P.upstream_connections
    outbox_max_bytes: int | None = None
    log_origin: str | None = None


def check_log(s: ProxySettings, *, http: httpx.Client | None = None) -> dict[str, Any]:
    """Start-up checks: the log answers as a tlog log (and has ``log_origin`` if given), the
    token is valid there, is a ``submitter`` token, and is bound to ``tenant``. Raises
    :class:`StartupError` naming what does not fit; a proxy that started anyway would answer
    ``queued`` while its relay loops on 401/403. Returns the log's ``/v1/log`` answer."""
    client = http if http is not None else httpx.Client(timeout=10.0)
    base = s.log_url.rstrip("/")
    try:
        r = client.get(base + "/v1/log")
        if r.status_code >= 500:
            raise LogUnreachable(f"{base}/v1/log answered {r.status_code}")
        if r.status_code != 200:
            raise StartupError(f"{base}/v1/log answered {r.status_code}: is this a tlog log?")
        info = r.json()
        if not isinstance(info, dict) or not isinstance(info.get("origin"), str):
            raise StartupError(f"{base}/v1/log is not a tlog log description")
        if s.log_origin is not None and info["origin"] != s.log_origin:
            raise StartupError(f"the log at {base} is {info['origin']!r}, not {s.log_origin!r}")
        r = client.get(base + "/v1/scim/whoami", headers={"Authorization": f"Bearer {s.token}"})
        if r.status_code in (401, 403):
            raise StartupError(f"the log refuses the token ({r.status_code}): wrong or revoked")
        if r.status_code != 200:
            raise StartupError(f"{base}/v1/scim/whoami answered {r.status_code}")
        who = r.json()
        if not isinstance(who, dict) or who.get("role") != "submitter":
            role = who.get("role") if isinstance(who, dict) else None
            raise StartupError(f"the token has the role {role!r}; the proxy needs a submitter")
        if who.get("tenant") != s.tenant:
            raise StartupError(
                f"the token is bound to tenant {who.get('tenant')!r}, not --tenant {s.tenant!r}"
            )
    except httpx.HTTPError as exc:
        raise LogUnreachable(f"the log at {base} cannot be reached: {exc}") from None
    except ValueError:
        raise StartupError(f"the log at {base} answered something that is not JSON") from None
    finally:
        if http is None:
            client.close()
    return info


def build_proxy(
    s: ProxySettings, *, log_transport: httpx.BaseTransport | None = None
) -> AuditMiddleware:
    """The proxy as an ASGI app: audit middleware around a Starlette app that forwards.

    The middleware owns the outbox and the relay: ASGI lifespan startup starts the relay,
    shutdown drains it (2 s), stops it and closes the outbox.
    """
    forwarder = Forwarder(
        s.upstream,
        timeout=s.upstream_timeout,
        preserve_host=s.preserve_host,
        forwarded=s.forwarded,
        max_connections=s.upstream_connections,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await forwarder.aclose()

    holder: list[AuditMiddleware] = []

    async def status(request: Request) -> Response:
        mw = holder[0]
        got = await asyncio.get_running_loop().run_in_executor(None, mw.backlog)
        return JSONResponse({"upstream": s.upstream, "log": s.log_url, **got})

    inner = Starlette(
        routes=[
            Route(STATUS_PATH, status, methods=["GET"]),
            *proxy_routes(
                lambda: holder[0].backlog(),
                max_bytes=s.outbox_max_bytes,
                receipt_timeout=s.receipt_timeout,
            ),
            Route("/{path:path}", forwarder),
        ],
        lifespan=lifespan,
    )
    base = forwarder.base_path if s.base_path is None else s.base_path.rstrip("/")
    # Group members are pseudonymised under their own keys at the log, so shredding a user
    # also unlinks them from group events (never recorded in plaintext instead).
    pids = LogPseudonyms(
        s.log_url,
        s.token,
        http=httpx.Client(transport=log_transport, timeout=2.0) if log_transport else None,
    )
    config = AuditConfig(
        tenant=s.tenant,
        sp_id=s.sp_id,
        sp_base=s.upstream,
        base_path=base,
        fail_open=s.fail_open,
        receipt_timeout=s.receipt_timeout,
        ref_pid=pids,
    )
    outbox = Outbox(s.outbox, max_bytes=s.outbox_max_bytes)
    relay = Relay(outbox, s.log_url, s.token, transport=log_transport)
    mw = AuditMiddleware(inner, config, outbox, relay, own=True)
    holder.append(mw)
    return mw


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen must be host:port, e.g. 127.0.0.1:8081, not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main_proxy(cfg: ProxyConfig) -> int:
    """Run the proxy under uvicorn until interrupted (settings: :class:`tlog.config.ProxyConfig`,
    its required fields already checked)."""
    from client.runtime.logs import uvicorn_log_config

    log_config = uvicorn_log_config(cfg.log_level, cfg.log_format)
    logging.config.dictConfig(log_config)
    assert cfg.token_file is not None and cfg.upstream is not None and cfg.log_url is not None
    assert cfg.tenant is not None and cfg.sp_id is not None
    token = cfg.token_file.read_text("utf-8").strip()
    if not token:
        print(f"tlog: {cfg.token_file} is empty", file=sys.stderr)
        return 1
    host, port = _listen(cfg.listen)
    settings = ProxySettings(
        upstream=cfg.upstream,
        log_url=cfg.log_url,
        token=token,
        tenant=cfg.tenant,
        sp_id=cfg.sp_id,
        outbox=cfg.outbox,
        fail_open=cfg.fail_open,
        receipt_timeout=cfg.receipt_timeout,
        base_path=cfg.base_path,
        preserve_host=cfg.preserve_host,
        forwarded=cfg.forwarded,
        upstream_timeout=cfg.upstream_timeout,
        upstream_connections=cfg.upstream_connections,
        outbox_max_bytes=(
            None if cfg.outbox_max_mb is None else int(cfg.outbox_max_mb * (1 << 20))
        ),
        log_origin=cfg.log_origin,
    )
    try:
        info = check_log(settings)
    except LogUnreachable as exc:
        _log.warning(
            "%s; starting anyway: events queue in the outbox until the log answers "
            "(the token and tenant are not checked until then)",
            exc,
        )
    except StartupError as exc:
        print(f"tlog scim-proxy: refusing to start: {exc}", file=sys.stderr)
        return 2
    else:
        _log.info(
            "log %s (tree size %s) accepts this token for tenant %s",
            info["origin"],
            info.get("tree_size"),
            settings.tenant,
        )
    app = build_proxy(settings)
    mode = "fail-open" if cfg.fail_open else "fail-closed"
    banner = (
        f"tlog scim-proxy: listening on http://{host}:{port} -> {cfg.upstream} ({mode}), "
        f"events to {cfg.log_url} via {cfg.outbox}"
    )

    started = run_hardened(
        app,
        host,
        port,
        cfg.server,
        on_started=lambda: print(banner, flush=True),
        log_level=cfg.log_level,
        access_log=False,
        log_config=log_config,
        server_header=False,
        date_header=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0 if started else 1
