"""``tlog scim-proxy``: an auditing reverse proxy for SCIM service providers in any language.

The proxy forwards every request to ``--upstream`` unchanged (method, path and query bytes,
body, headers but the hop-by-hop ones, repeated ones repeated) over HTTP/1.1 with
keep-alive, and streams the answer back unchanged (status, headers in their order, body
bytes, content encoding, errors; header names are case-insensitive, and ASGI servers
lower-case them), inside the same
:class:`client.adapters.middleware.AuditMiddleware` an in-process Python SP would use
(:class:`client.adapters.forwarder.Forwarder` is the forwarding app). So the
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
failure with that status, since the proxy cannot know whether the SP applied it. An answer
that breaks off after its start is a 502 too, its event recorded with the SP's status and
``x.answer`` saying so.

Requests the SP might read otherwise than the audit does are refused with 400 before the
audit and the SP see them (:class:`_ProxyMiddleware`): a header name with ``_`` (CGI and
WSGI servers, scim2-server's wsgiref among them, read ``Transfer_Encoding`` as
``Transfer-Encoding``) and the method-override headers (``X-HTTP-Method-Override`` and its
kin: an SP that honours one would apply a DELETE the audit took for a GET). Framing the
parsers would read two ways is refused by the server runner (:mod:`client.runtime.serving`).

The proxy's own endpoints, under ``/.tlog/`` so that no SCIM path of the upstream is
shadowed: ``status`` (the audit backlog as JSON), ``healthz``, ``readyz`` and ``metrics``
(Prometheus). They and the forwarder are dispatched by a few lines of plain ASGI (no web
framework on the request path), and the program runs under the hardened uvicorn runner
(:mod:`client.runtime.serving`), which imports uvicorn only when called. Its configuration
object, :class:`ProxyConfig`, is defined beside it (:mod:`client.adapters.proxy_config`,
which imports none of the proxy, so that ``tlog`` builds its command line without loading
it); ``tlog scim-proxy`` (:mod:`tlog.cli`) only fills it in from flags, environment and
file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.config
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from client.adapters.exchange import MAX_INTENT_WAIT, check_intent_wait
from client.adapters.forwarder import Forwarder, UpstreamError, scim_error
from client.adapters.middleware import AuditConfig, AuditMiddleware, Receive, Scope, Send
from client.adapters.opsread import OpsReads
from client.adapters.outbox import Outbox, OutboxError
from client.adapters.proxy_config import ProxyConfig
from client.adapters.pseudonyms import MAX_TIMEOUT, LogPseudonyms
from client.adapters.relay import Relay
from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Verifier, FormatError
from client.net.core import HTTPCore, StatusError, Unreachable
from client.net.logclient import LogClient
from client.runtime.serving import run_hardened

__all__ = [
    "OPS_PREFIX",
    "STATUS_PATH",
    "Forwarder",
    "LogUnreachable",
    "ProxyConfig",
    "ProxySettings",
    "StartupError",
    "UpstreamError",
    "build_proxy",
    "check_log",
    "main_proxy",
]

_log = logging.getLogger("client.adapters.proxy")

# The proxy's own endpoints (not forwarded).
OPS_PREFIX = "/.tlog"
STATUS_PATH = OPS_PREFIX + "/status"

_INFO_LIMIT = 1 << 20  # bytes of a /v1/log or /v1/scim/whoami answer at start-up


class StartupError(Exception):
    """The proxy must not start: its log, token or tenant do not fit together."""


class LogUnreachable(StartupError):
    """The log could not be asked at start-up (down, or answering 5xx). Not a mismatch: the
    proxy starts and queues events in its durable outbox, since refusing to start during a log
    outage would stop provisioning the outbox exists to keep going."""


_P = ProxyConfig()  # the defaults, defined once above


@dataclass(frozen=True)
class ProxySettings:
    """What :func:`build_proxy` needs: :class:`ProxyConfig` resolved (the token read from its
    file, the outbox cap in bytes)."""

    upstream: str
    log_url: str
    token: str
    tenant: str
    sp_id: str
    outbox: Path = _P.outbox
    fail_open: bool = _P.fail_open
    durable_intents: bool = _P.durable_intents
    intent_wait: float = _P.intent_wait
    receipt_timeout: float = _P.receipt_timeout
    base_path: str | None = None
    preserve_host: bool = _P.preserve_host
    forwarded: bool = _P.forwarded
    upstream_timeout: float = _P.upstream_timeout
    pseudonym_timeout: float = _P.pseudonym_timeout
    upstream_connections: int = _P.upstream_connections
    outbox_max_bytes: int | None = None
    log_origin: str | None = None
    log_key: str | None = None  # None: receipts unverified, unless log_key_tofu
    log_key_tofu: bool = False


def _check_key(s: ProxySettings, core: HTTPCore, info: dict[str, Any]) -> None:
    """The log's checkpoint verifies under ``--log-key`` (or, trusting on first use, under
    the key the log names)."""
    if s.log_key is None and not s.log_key_tofu:
        return  # receipts unverified (build_proxy's relay warns); the CLI refuses this
    key = s.log_key if s.log_key is not None else info.get("vkey")
    if not isinstance(key, str):
        raise StartupError(f"{core.url}/v1/log names no verifier key to trust on first use")
    try:
        verifier = Ed25519Verifier.from_vkey(key)
    except (FormatError, ValueError) as exc:
        raise StartupError(f"--log-key is not a verifier key: {exc}") from None
    if s.log_key is not None and info.get("vkey") != s.log_key:
        raise StartupError(
            f"the log at {core.url} names another key than --log-key: {info.get('vkey')!r}"
        )
    try:
        LogClient(core.url, verifier, http=core.http, timeout=10.0).checkpoint()
    except (VerificationError, FormatError) as exc:
        raise StartupError(
            f"the log's checkpoint at {core.url} does not verify under the key: {exc}"
        ) from None
    except StatusError as exc:
        raise StartupError(f"{core.url}/checkpoint answered {exc.status}") from None


def check_log(s: ProxySettings, *, http: httpx.Client | None = None) -> dict[str, Any]:
    """Start-up checks: the log answers as a tlog log (and has ``log_origin`` if given), its
    ``/checkpoint`` verifies under ``log_key`` (or, with ``log_key_tofu``, under the key it
    names in ``/v1/log``), the token is valid there, is a ``submitter`` token, and is bound
    to ``tenant``. Raises :class:`StartupError` naming what does not fit; a proxy that
    started anyway would answer ``queued`` while its relay loops on 401/403 or refuses every
    receipt. Returns the log's ``/v1/log`` answer."""
    base = s.log_url.rstrip("/")
    with HTTPCore(base, http, timeout=10.0) as core:
        try:
            r = core.send("GET", "/v1/log", limit=_INFO_LIMIT)
            if r.status >= 500:
                raise LogUnreachable(f"{base}/v1/log answered {r.status}")
            if r.status != 200:
                raise StartupError(f"{base}/v1/log answered {r.status}: is this a tlog log?")
            info = r.json()
            if not isinstance(info, dict) or not isinstance(info.get("origin"), str):
                raise StartupError(f"{base}/v1/log is not a tlog log description")
            if s.log_origin is not None and info["origin"] != s.log_origin:
                raise StartupError(f"the log at {base} is {info['origin']!r}, not {s.log_origin!r}")
            r = core.send(
                "GET",
                "/v1/scim/whoami",
                limit=_INFO_LIMIT,
                headers={"Authorization": f"Bearer {s.token}"},
            )
            if r.status in (401, 403):
                raise StartupError(f"the log refuses the token ({r.status}): wrong or revoked")
            if r.status != 200:
                raise StartupError(f"{base}/v1/scim/whoami answered {r.status}")
            who = r.json()
            if isinstance(who, dict) and who.get("role") == "submitter":
                _check_key(s, core, info)
        except Unreachable as exc:
            raise LogUnreachable(f"the log at {base} cannot be reached: {exc}") from None
        except FormatError:
            raise StartupError(f"the log at {base} answered something that is not JSON") from None
    if not isinstance(who, dict) or who.get("role") != "submitter":
        role = who.get("role") if isinstance(who, dict) else None
        raise StartupError(f"the token has the role {role!r}; the proxy needs a submitter")
    if who.get("tenant") != s.tenant:
        raise StartupError(
            f"the token is bound to tenant {who.get('tenant')!r}, not --tenant {s.tenant!r}"
        )
    return info


# --- the proxy's own endpoints ---------------------------------------------------------------

_Endpoint = Callable[[], Awaitable[tuple[int, bytes, bytes]]]  # status, media type, body


def _json(status: int, doc: Any) -> tuple[int, bytes, bytes]:
    return status, b"application/json", json.dumps(doc).encode()


def _journal_metrics(b: dict[str, Any]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    yield GaugeMetricFamily(
        "tlog_proxy_disk_stalled",
        "1 while the outbox's disk has not answered within the intent wait: the intent "
        "journal's writer, or a read of the outbox, held by its file system",
        value=1 if b.get("disk_stalled") else 0,
    )
    yield GaugeMetricFamily(
        "tlog_proxy_disk_slow",
        "1 while a read of the outbox has taken longer than the intent wait but its disk "
        "answers (slow, not stalled): the figures are those of the last reading",
        value=1 if b.get("disk_slow") else 0,
    )
    yield GaugeMetricFamily(
        "tlog_proxy_intent_journal_stalled",
        "1 while the write-ahead intent journal's writer has been held by its file system "
        "longer than a write waits for its intent (writes refused, not applied)",
        value=1 if b.get("intent_journal_stalled") else 0,
    )
    yield GaugeMetricFamily(
        "tlog_proxy_intent_journal_open",
        "0 while the write-ahead intent journal cannot be opened (writes refused, not "
        "applied; the reason in /.tlog/readyz)",
        value=0 if b.get("intent_journal_error") else 1,
    )
    yield CounterMetricFamily(
        "tlog_proxy_intent_stalls",
        "writes refused (503, not forwarded) because their write-ahead intent was not "
        "written within the bound (a stalled disk)",
        value=b.get("intent_stalls") or 0,
    )


class _StallCollector(Collector):
    """While the journal's disk stalls (the outbox on it may not answer a read): the
    intent journal's metrics only, read without touching the disk."""

    def __init__(self, journal: Callable[[], dict[str, Any]]) -> None:
        self.journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from _journal_metrics(self.journal())


class _ProxyCollector(Collector):
    """The proxy's audit backlog, read from the outbox when scraped."""

    def __init__(self, backlog: Callable[[], dict[str, Any]]) -> None:
        self.backlog = backlog

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        b = self.backlog()
        yield GaugeMetricFamily(
            "tlog_proxy_outbox_pending_events",
            "events in the outbox not yet in the log",
            value=b.get("pending") or 0,
        )
        yield GaugeMetricFamily(
            "tlog_proxy_outbox_pending_bytes",
            "bytes of the events not yet in the log",
            value=b.get("pending_bytes") or 0,
        )
        oldest = b.get("oldest_ms")
        yield GaugeMetricFamily(
            "tlog_proxy_outbox_oldest_age_seconds",
            "age of the oldest event not yet in the log (0 when none)",
            value=0 if oldest is None else oldest / 1000.0,
        )
        yield GaugeMetricFamily(
            "tlog_proxy_outbox_rejected_events",
            "events the log refused for good (kept for inspection)",
            value=b.get("rejected") or 0,
        )
        yield GaugeMetricFamily(
            "tlog_proxy_writes_taken",
            "0 while fail-closed refuses writes: the outbox refused its last add (a full "
            "disk) and the log takes no events directly either",
            value=0 if b.get("writes_taken") is False else 1,
        )
        yield from _journal_metrics(b)
        healthy = b.get("relay_healthy")
        yield GaugeMetricFamily(
            "tlog_proxy_relay_healthy",
            "1 while the relay's last delivery to the log worked",
            value=1 if healthy else 0,
        )
        yield CounterMetricFamily(
            "tlog_proxy_receipts_unverified",
            "answers of the log whose receipts did not verify (nothing of them marked delivered)",
            value=b.get("receipts_unverified") or 0,
        )
        yield CounterMetricFamily(
            "tlog_proxy_receipts_content_unproven",
            "receipts for retries the log answered without a nonce (their bodies erased since): "
            "inclusion proven, content not",
            value=b.get("receipts_content_unproven") or 0,
        )
        yield CounterMetricFamily(
            "tlog_proxy_intent_lines_damaged",
            "write-ahead intent journal lines of dead adapters that failed their check when "
            "recovered (skipped: a write one stood for has no event)",
            value=b.get("intents_damaged") or 0,
        )
        events = CounterMetricFamily(
            "tlog_proxy_events", "audit records by kind since start", labels=["kind"]
        )
        for kind in ("events", "access", "unrecorded", "refused", "recovered"):
            events.add_metric([kind], b.get(kind) or 0)
        yield events


def _ops_endpoints(ops: Callable[[], OpsReads], s: ProxySettings) -> dict[str, _Endpoint]:
    """``/.tlog/status``, ``healthz``, ``readyz`` and ``metrics``. Ready while the outbox
    takes events (below ``outbox_max_bytes``, and writes not refused after a failed add:
    ``writes_taken``) and the intent journal is open and not stalled; the relay's health
    gates readiness only when writes wait for the log's receipt (``receipt_timeout`` > 0).

    None of them waits on the disk much longer than ``intent_wait``: the outbox is read in
    a thread of its own (``ops``, the middleware's :class:`OpsReads`), and while its disk
    stalls (that read's thread held in one wait, or the journal's writer held, longer than
    the bound) each answers at once saying so: status with ``disk_stalled``, healthz 200
    (alive) and readyz 503 with the reason, metrics with ``tlog_proxy_disk_stalled`` 1 (and
    no figure that needs the disk). A read that is slow but moves is not a stall (ops30):
    status says ``disk_slow`` with the last reading and its age, readiness is judged on
    that reading, metrics have ``tlog_proxy_disk_slow`` 1."""

    def stall() -> dict[str, Any] | None:
        return ops().stall()

    async def read() -> dict[str, Any]:
        """The backlog, or what a stalled disk's answers say (``disk_stalled``), or the
        last reading of a slow one (``disk_slow``): :meth:`OpsReads.state`."""
        return await ops().state()

    async def status() -> tuple[int, bytes, bytes]:
        try:
            got = await read()
        except OutboxError as exc:  # removed, replaced or damaged: said, never a 500
            return _json(503, {"upstream": s.upstream, "log": s.log_url, "error": str(exc)})
        return _json(200, {"upstream": s.upstream, "log": s.log_url, **got})

    async def healthz() -> tuple[int, bytes, bytes]:
        # The loop answers: alive. A stalled disk is said (nothing is applied until it
        # answers) but stays 200: healthz is the liveness probe, and a restart cannot help a
        # frozen disk (the old process holds its port and journal lock until the thaw);
        # without one the proxy resumes at the thaw. readyz and the metrics are the signal
        # (review 38: stall29 had made it 503).
        stalled = stall()
        if stalled is not None:
            return _json(
                200, {"status": "ok", "intent_journal": "stalled", "error": stalled["error"]}
            )
        return _json(200, {"status": "ok"})

    async def readyz() -> tuple[int, bytes, bytes]:
        try:
            b = await read()
        except OutboxError as exc:
            doc = {"status": "not ready", "checks": {"outbox": {"ok": False, "error": str(exc)}}}
            return _json(503, doc)
        if b.get("disk_stalled"):  # said at once: the outbox's disk may not answer a read now
            doc = {
                "status": "not ready",
                "checks": {
                    "disk": {"ok": False, "error": b.get("error")},
                    "intent_journal": {"ok": False},
                },
            }
            return _json(503, doc)
        if b.get("disk_slow") and "pending" not in b:  # slow, and no reading of it yet
            doc = {
                "status": "not ready",
                "checks": {"disk": {"ok": False, "slow": True, "error": b.get("error")}},
            }
            return _json(503, doc)
        cap = s.outbox_max_bytes
        full = cap is not None and (b.get("pending_bytes") or 0) >= cap
        taken = b.get("writes_taken", True) is not False
        relay_ok = bool(b.get("relay_healthy"))
        journal_error = b.get("intent_journal_error")
        journal_check: dict[str, Any] = {"ok": not b.get("intent_journal_stalled")}
        if journal_error:
            journal_check = {"ok": False, "error": f"cannot be opened: {journal_error}"}
        if b.get("intent_journal_in_doubt"):
            journal_check = {"ok": False, "error": b["intent_journal_in_doubt"]}
        checks: dict[str, dict[str, Any]] = {
            "outbox": {
                "ok": not full and taken,
                "writes_taken": taken,
                "pending": b.get("pending"),
                "pending_bytes": b.get("pending_bytes"),
                "limit_bytes": cap,
                "oldest_ms": b.get("oldest_ms"),
            },
            "relay": {"ok": relay_ok or s.receipt_timeout <= 0, "healthy": relay_ok},
            "intent_journal": journal_check,
        }
        if b.get("disk_slow"):  # judged on the last reading, said with its age
            checks["disk"] = {"ok": True, "slow": True, "reading_age_ms": b["reading_age_ms"]}
        ok = all(c["ok"] for c in checks.values())
        doc = {"status": "ready" if ok else "not ready", "checks": checks}
        return _json(200 if ok else 503, doc)

    async def metrics() -> tuple[int, bytes, bytes]:
        try:
            b = await read()
        except OutboxError as exc:
            return _json(503, {"error": str(exc)})
        registry = CollectorRegistry(auto_describe=False)
        if b.get("disk_stalled") or "pending" not in b:  # the journal's figures only
            registry.register(_StallCollector(lambda: b))
        else:
            registry.register(_ProxyCollector(lambda: b))
        return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)

    return {
        STATUS_PATH: status,
        OPS_PREFIX + "/healthz": healthz,
        OPS_PREFIX + "/readyz": readyz,
        OPS_PREFIX + "/metrics": metrics,
    }


class _ProxyApp:
    """The app inside the audit middleware: the ``/.tlog/`` endpoints (GET and HEAD), and
    everything else to the forwarder. Answers ASGI lifespan (closing the upstream pool on
    shutdown)."""

    def __init__(
        self,
        forwarder: Forwarder,
        endpoints: dict[str, _Endpoint],
        stop_reads: Callable[[], None] = lambda: None,
    ) -> None:
        self.forwarder = forwarder
        self.endpoints = endpoints
        self.stop_reads = stop_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            endpoint = self.endpoints.get(str(scope["path"]))
            if endpoint is None:
                await self.forwarder(scope, receive, send)
            else:
                await _serve(endpoint, scope, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.forwarder.aclose()
                    self.stop_reads()
                    await send({"type": "lifespan.shutdown.complete"})
                    return


async def _serve(endpoint: _Endpoint, scope: Scope, send: Send) -> None:
    method = str(scope["method"])
    if method in ("GET", "HEAD"):
        status, media, body = await endpoint()
        headers: list[tuple[bytes, bytes]] = []
    else:
        status, media, body = 405, b"application/json", b'{"error": "method not allowed"}'
        headers = [(b"allow", b"GET, HEAD")]
    headers += [
        (b"content-type", media),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if method == "HEAD":
        body = b""
    await send({"type": "http.response.body", "body": body, "more_body": False})


# Headers some frameworks take as the request's method instead of the request line's.
METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})


def ambiguous_header(headers: Any) -> str | None:
    """Why a request with these headers is refused before the audit and the SP, or None.

    * A header name with ``_``: CGI and WSGI servers (scim2-server's wsgiref among them)
      turn ``-`` into ``_`` to name a header, so ``Transfer_Encoding``, ``Content_Type``
      or ``X_Request_Id`` reach the SP as the header the proxy read under the other
      spelling, or joined with it; the proxy cannot know which the SP acts on.
    * A method-override header: an SP honouring it would apply a method (DELETE) other
      than the one the audit read (GET: no event at all).
    """
    for k, _ in headers:
        k = bytes(k)
        if b"_" in k:
            return "header names with '_' are refused (a service provider may read them as '-')"
        if k.lower() in METHOD_OVERRIDES:
            return "method-override headers are refused (the audit records the request's method)"
    return None


class _ProxyMiddleware(AuditMiddleware):
    """The audit middleware, which first refuses (400, SCIM error) a request whose headers
    the SP might read otherwise than the audit (:func:`ambiguous_header`): no intent, no
    event, nothing sent upstream."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            why = ambiguous_header(scope.get("headers", ()))
            if why is not None:
                await scim_error(send, 400, why)
                return
        await super().__call__(scope, receive, send)


def build_proxy(
    s: ProxySettings, *, log_transport: httpx.BaseTransport | None = None
) -> AuditMiddleware:
    """The proxy as an ASGI app: audit middleware around the forwarder and the ``/.tlog/``
    endpoints.

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
    holder: list[AuditMiddleware] = []
    endpoints = _ops_endpoints(lambda: holder[0].ops_reads, s)
    inner = _ProxyApp(forwarder, endpoints, lambda: holder[0].ops_reads.stop())
    base = forwarder.base_path if s.base_path is None else s.base_path.rstrip("/")
    # Group members are pseudonymised under their own keys at the log, so shredding a user
    # also unlinks them from group events (never recorded in plaintext instead).
    pids = LogPseudonyms(
        s.log_url,
        s.token,
        http=(
            httpx.Client(transport=log_transport, timeout=s.pseudonym_timeout)
            if log_transport
            else None
        ),
        timeout=s.pseudonym_timeout,
    )
    config = AuditConfig(
        tenant=s.tenant,
        sp_id=s.sp_id,
        sp_base=s.upstream,
        base_path=base,
        fail_open=s.fail_open,
        durable_intents=s.durable_intents,
        intent_wait=s.intent_wait,
        receipt_timeout=s.receipt_timeout,
        ref_pid=pids,
    )
    outbox = Outbox(s.outbox, max_bytes=s.outbox_max_bytes)
    try:
        _check_outbox_tenant(outbox, s.tenant)
    except OutboxError:
        outbox.close()
        raise
    relay = Relay(
        outbox,
        s.log_url,
        s.token,
        transport=log_transport,
        log_key=s.log_key,
        trust_on_first_use=s.log_key_tofu,
    )
    mw = _ProxyMiddleware(inner, config, outbox, relay, own=True)
    holder.append(mw)
    return mw


def _warn_if_loose(token_file: Path) -> None:
    """Say loudly when the submitter token's file is readable by group or others: whoever
    reads it can append events to the log in this adapter's name. (A warning, not a
    refusal: secrets mounted by container runtimes are often 0644 or 0444.)"""
    try:
        mode = token_file.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        _log.warning(
            "the token file %s is readable by group or others (mode %o): whoever can read "
            "it can append events to the log as this adapter; chmod 600 it",
            token_file,
            mode,
        )


def _check_outbox_tenant(outbox: Outbox, tenant: str) -> None:
    """Refuse an outbox that holds undelivered events of another tenant (another proxy's
    outbox, or ``--tenant`` changed across a restart): the log refuses every batch holding
    one (403), so the relay would retry it for ever and deliver nothing behind it."""
    # (a body without a tenant is for the log to refuse alone: 400, moved out as rejected)
    others = {t: n for t, n in outbox.pending_tenants().items() if t not in (tenant, None)}
    if others:
        named = ", ".join(sorted(repr(t) for t in others)[:3])
        raise OutboxError(
            f"the outbox {outbox.path} holds {sum(others.values())} undelivered event(s) of "
            f"another tenant than {tenant!r} ({named}): the log would refuse every batch "
            "holding one and nothing would be delivered; deliver them with a proxy of their "
            "tenant (its --tenant and token), or move the file away"
        )


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen must be host:port, e.g. 127.0.0.1:8081, not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main_proxy(cfg: ProxyConfig) -> int:
    """Run the proxy under uvicorn until interrupted (``cfg``'s required fields already
    checked)."""
    from client.runtime.logs import uvicorn_log_config

    log_config = uvicorn_log_config(cfg.log_level, cfg.log_format)
    logging.config.dictConfig(log_config)
    assert cfg.token_file is not None and cfg.upstream is not None and cfg.log_url is not None
    assert cfg.tenant is not None and cfg.sp_id is not None
    token = cfg.token_file.read_text("utf-8").strip()
    if not token:
        print(f"tlog: {cfg.token_file} is empty", file=sys.stderr)
        return 1
    _warn_if_loose(cfg.token_file)
    if (cfg.log_key is None) == (not cfg.log_key_tofu):
        print(
            "tlog scim-proxy: refusing to start: give the log's verifier key with --log-key "
            "(or, to trust the key the log names on first contact, --log-key-tofu; not both)",
            file=sys.stderr,
        )
        return 2
    if not 0 < cfg.pseudonym_timeout <= MAX_TIMEOUT:
        print(
            "tlog scim-proxy: refusing to start: --pseudonym-timeout must be a number of "
            f"seconds above 0 and at most {MAX_TIMEOUT:g} (a day), not "
            f"{cfg.pseudonym_timeout!r}",
            file=sys.stderr,
        )
        return 2
    try:
        check_intent_wait(cfg.intent_wait)
    except ValueError:
        print(
            "tlog scim-proxy: refusing to start: --intent-wait must be a number of seconds "
            f"above 0 and at most {MAX_INTENT_WAIT:g}, not {cfg.intent_wait!r}",
            file=sys.stderr,
        )
        return 2
    host, port = _listen(cfg.listen)
    settings = ProxySettings(
        upstream=cfg.upstream,
        log_url=cfg.log_url,
        token=token,
        tenant=cfg.tenant,
        sp_id=cfg.sp_id,
        outbox=cfg.outbox,
        fail_open=cfg.fail_open,
        durable_intents=cfg.durable_intents,
        intent_wait=cfg.intent_wait,
        receipt_timeout=cfg.receipt_timeout,
        base_path=cfg.base_path,
        preserve_host=cfg.preserve_host,
        forwarded=cfg.forwarded,
        upstream_timeout=cfg.upstream_timeout,
        pseudonym_timeout=cfg.pseudonym_timeout,
        upstream_connections=cfg.upstream_connections,
        outbox_max_bytes=(
            None if cfg.outbox_max_mb is None else int(cfg.outbox_max_mb * (1 << 20))
        ),
        log_origin=cfg.log_origin,
        log_key=cfg.log_key,
        log_key_tofu=cfg.log_key_tofu,
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
        if settings.log_key is None:  # --log-key-tofu: pinned now, checked by check_log
            _log.warning("trusting the log's key on first use: %s", info["vkey"])
            settings = dataclasses.replace(settings, log_key=info["vkey"], log_key_tofu=False)
    try:
        app = build_proxy(settings)
    except OutboxError as exc:
        print(f"tlog scim-proxy: refusing to start: {exc}", file=sys.stderr)
        return 2
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
        # The forwarder appends the connecting peer to X-Forwarded-For itself; uvicorn must
        # not first replace that peer with what a client claims in the header.
        proxy_headers=False,
        # Each answer's head and body in one send (client.runtime.serving).
        coalesce_writes=True,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    if app.close_unfinished:
        # A stalled disk held the shutdown (said in the log): exit without joining the
        # threads that wait on it (the interpreter's exit would wait for the thaw). The
        # kernel still holds a thread that waits in the frozen file system until the thaw.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return 0 if started else 1
