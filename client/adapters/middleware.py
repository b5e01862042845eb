"""ASGI middleware that records every SCIM write as an audit event (SCIM.md §2.2).

Wrap any ASGI SCIM service provider (or :mod:`tlog.scim_proxy`'s forwarder) in
:class:`AuditMiddleware`. For each request it:

1. takes the correlation id from ``X-Request-Id`` (or generates one, passes it to the app and
   echoes it in the response) and W3C ``traceparent``;
2. for a **write** (POST except ``.../.search``, PUT, PATCH, DELETE) buffers the request body,
   runs the app, and buffers the response;
3. turns the exchange into events (:func:`client.scim.event.new_event`): one per request on
   a resource endpoint, one per operation of a ``/Bulk`` request (``corr.bulk_req``,
   ``corr.seq``, ``corr.bulk_id``), successes and failures alike, with the request digest
   (SHA-256 of the raw body), ``If-Match`` (``ver.pre``), the response status, ``ETag``
   (``ver.post``), ``Location``, the SCIM error ``scimType``/``detail``, and the intent
   (``patch``/``mods``/``refs``/``acts``) parsed from the body by
   :func:`client.scim.actions.parse_request`, marked ``"intent": true``;
4. writes the events to the durable :class:`~client.adapters.outbox.Outbox` (fsynced) *before*
   releasing the response, optionally waits up to ``receipt_timeout`` for the relay to
   deliver them, and adds receipt headers (:data:`RECEIPT_HEADERS`).

What is **not** a provisioning event (SCIM.md §2.2 step 4) goes to the ``on_access`` hook
(default: the ``client.scim.access`` logger), never to the log: writes answered 401/403,
writes to the discovery endpoints (``/ServiceProviderConfig``, ``/ResourceTypes``,
``/Schemas``: 405), writes to an unknown endpoint answered 404 or 405, PUT/PATCH/DELETE with
no resource id, bodies over ``max_body`` (413 from the middleware itself) and bulk requests
whose body is not a bulk request. A DELETE answered 404 on a real resource endpoint *is* an
event, with outcome ``skipped`` (the resource is already gone: nothing changed; SCIM.md §2.5
"audit noise"), as is every other failure (outcome ``failure``).

Failure policy (``fail_open``):

* **fail-closed** (default): the response is held until the events are durably in the outbox.
  If the outbox write fails, the events are sent straight to the log (within
  ``receipt_timeout``, at least 2 s); if that fails too the client gets **503** with
  ``Retry-After`` and a SCIM error, and the app's response is discarded. The SP has *already
  applied* the change at that point: a reverse proxy or middleware cannot undo it. SCIM.md
  §2.5 is explicit that a post-hoc append can fail after the SP committed, that the IdP will
  retry (and a retried create then gets 409), and that only a transactional outbox written
  inside the SP's own ``storage.operation()`` closes that gap. To bound the damage, after
  one failed write the middleware probes the outbox (an fsynced write the size of the one
  that failed) before forwarding each further write, and answers 503 *without calling the
  app* while the probe fails and the log cannot be reached directly either, so at most the
  requests in flight at the onset of the fault are applied unrecorded.
* **fail-open**: a failed write is logged at ERROR and the response passes through
  (``Tlog-Status: unrecorded``).

Only asyncio servers are supported (uvicorn, hypercorn, daphne). Events carry request data
(attribute values in ``mods``), which is why they go to a log that encrypts them per
subject; ``password`` (``secret_attrs``) is recorded only as changed, and bearer tokens only
as their SHA-256 thumbprint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import http
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from client.adapters.body import Decoded, decode_body
from client.adapters.outbox import Outbox, OutboxError, OutboxRecord, Receipt
from client.adapters.pseudonyms import PidCollector, substitute_pids
from client.adapters.relay import DeliveryError, Relay
from client.scim.actions import RequestIntent, action, action_prefix, op_for_method, parse_request
from client.scim.cbor import EventFormatError, dumps_det
from client.scim.event import BYTES_FIELDS, MAX_EVENT_SIZE, Event, new_event

__all__ = [
    "RECEIPT_HEADERS",
    "AuditConfig",
    "AuditMiddleware",
    "default_actor",
    "event_json",
    "log_access",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ActorHook = Callable[[Scope], Mapping[str, Any] | None]
AccessHook = Callable[[Mapping[str, Any]], None]

_log = logging.getLogger("client.adapters.middleware")
_access_log = logging.getLogger("client.scim.access")

RECEIPT_HEADERS = (
    "Tlog-Status",  # logged | queued | unrecorded
    "Tlog-Event-Count",  # events recorded for this request (bulk: one per operation)
    "Tlog-Event-Id",  # their eids, comma-separated (omitted above MAX_HEADER_EVENTS)
    "Tlog-Index",  # leaf indices, same order (only when logged)
    "Tlog-Leaf-Hash",  # base64 leaf hashes, same order (only when logged)
    "Tlog-Tree-Size",  # the tree size of the checkpoint covering them (only when logged)
    "Tlog-Checkpoint",  # that signed checkpoint note, base64 (only when logged)
)
MAX_HEADER_EVENTS = 32

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DISCOVERY_ENDPOINTS = frozenset({"serviceproviderconfig", "resourcetypes", "schemas"})
SCIM_ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
_MAX_JSON = 4 << 20  # response bodies parsed for ids and errors
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# --- hooks --------------------------------------------------------------------------------


def default_actor(scope: Scope) -> dict[str, Any]:
    """The caller, as the app authenticated it.

    ``scope["state"]["tlog_actor"]`` (Starlette: ``request.state.tlog_actor``) wins when the
    app's auth layer put a verified principal there (a mapping in the event's ``actor``
    shape). Otherwise: a bearer token becomes ``{"kind": "bearer", "tok_d": SHA-256(token)}``
    (never the token), HTTP Basic ``{"kind": "user", "id": <user name>}`` (never the
    password), and no credentials ``{"kind": "anonymous"}``. The middleware calls this only
    for requests the app did not answer with 401/403, i.e. after the app verified them.
    """
    state = scope.get("state")
    if isinstance(state, Mapping) and isinstance(state.get("tlog_actor"), Mapping):
        return dict(state["tlog_actor"])
    return _credential_actor(scope)


def _credential_actor(scope: Scope) -> dict[str, Any]:
    auth = _header(scope.get("headers", ()), b"authorization")
    if auth is not None:
        scheme, _, cred = auth.strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() == "bearer" and cred:
            return {"kind": "bearer", "tok_d": hashlib.sha256(cred.encode("latin-1")).digest()}
        if scheme.lower() == "basic" and cred:
            try:
                user = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                user = ""
            if _ident(user, 512):
                return {"kind": "user", "id": user}
    return {"kind": "anonymous"}


def log_access(record: Mapping[str, Any]) -> None:
    """Default ``on_access`` hook: one line on the ``client.scim.access`` logger."""
    level = logging.WARNING if record.get("reason") == "auth" else logging.INFO
    _access_log.log(level, "%s", json.dumps(record, sort_keys=True, default=str))


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditConfig:
    """What the middleware records and how it behaves. Only ``tenant`` and ``sp_id`` are needed.

    * ``base_path``: the SCIM base path as the app sees it (``/v2``, ``/scim/v2``); it is
      stripped when present (scim2-server also serves without it), and ``req.p`` is
      relative to it.
    * ``resource_types``: endpoint → resource type (``Users`` → ``User``); an endpoint not
      listed is recorded under its own name unless the app answers 404/405 (routing).
    * ``receipt_timeout``: seconds to wait for the relay to deliver the events so the
      response carries ``Tlog-Index``/``Tlog-Leaf-Hash``; 0 never waits (``queued``).
    * ``actor``/``on_access``: see :func:`default_actor`, :func:`log_access`.
    * ``secret_attrs``/``digest_attrs``/``ref_pid``/``ocsf``: passed to
      :func:`client.scim.actions.parse_request`.
    * ``trust_forwarded``: take ``src.ip`` from ``X-Forwarded-For`` (only behind a proxy
      you run); ``record_src``: record ``src`` (client IP, User-Agent) at all.
    """

    tenant: str
    sp_id: str
    sp_base: str | None = None
    idp: Mapping[str, str] | None = None
    base_path: str = "/v2"
    resource_types: Mapping[str, str] = field(
        default_factory=lambda: {"Users": "User", "Groups": "Group"}
    )
    me_resource_type: str = "User"
    fail_open: bool = False
    receipt_timeout: float = 0.0
    direct_timeout: float = 2.0
    retry_after: int = 5
    max_body: int = 16 << 20
    actor: ActorHook = default_actor
    on_access: AccessHook | None = log_access
    secret_attrs: Collection[str] = ("password",)
    digest_attrs: Collection[str] = ()
    ref_pid: Callable[[str, str], bytes] | None = None
    ocsf: str = "1.8"
    trust_forwarded: bool = False
    record_src: bool = True

    def __post_init__(self) -> None:
        if not _ident(self.tenant, 256) or not _ident(self.sp_id, 256):
            raise ValueError("tenant and sp_id must be non-empty identifiers (<= 256 bytes)")
        if self.base_path and (not self.base_path.startswith("/") or self.base_path.endswith("/")):
            raise ValueError("base_path must start with '/' and not end with one (or be '')")


# --- small helpers ------------------------------------------------------------------------


def _header(headers: Sequence[tuple[bytes, bytes]] | Any, name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None


def _ident(value: object, max_bytes: int) -> str | None:
    """``value`` if it is a valid event identifier (non-empty, no controls, bounded)."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        return None
    try:
        if len(value.encode("utf-8")) > max_bytes:
            return None
    except UnicodeEncodeError:
        return None
    return value


def _text(value: str, max_bytes: int) -> str | None:
    """Free text cut to ``max_bytes`` of UTF-8, controls (but tab/LF/CR) removed."""
    value = _TEXT_CONTROL.sub("", value)
    data = value.encode("utf-8", "replace")[:max_bytes]
    out = data.decode("utf-8", "ignore").strip()
    return out or None


def _path_text(value: str) -> str:
    """A request path for ``req.p``: no control characters, at most 4096 bytes."""
    value = _CONTROL.sub("", value)
    return value.encode("utf-8", "replace")[:4096].decode("utf-8", "ignore") or "/"


def _rid(value: str) -> str:
    """A resource id for the event; an id the schema cannot hold is replaced by its digest."""
    return (
        _ident(value, 256)
        or "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()
    )


def _get_ci(obj: Mapping[str, Any], name: str) -> Any:
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == name:
            return v
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _b64(v: object) -> object:
    return base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v


def event_json(event: Event) -> str:
    """The JSON form of an event that :func:`new_event` already validated.

    Byte for byte what :func:`client.scim.event.event_to_json` returns, without validating
    the event a second time (the middleware's hot path): the ``BYTES_FIELDS`` as standard
    base64, keys sorted, compact, UTF-8 unescaped.
    """
    out = dict(event)
    for spec in BYTES_FIELDS:
        head, _, leaf = spec.partition(".")
        if head.endswith("[]"):
            items = out.get(head[:-2])
            if isinstance(items, list):
                out[head[:-2]] = [
                    {**it, leaf: _b64(it[leaf])} if isinstance(it, dict) and leaf in it else it
                    for it in items
                ]
        else:
            sub = out.get(head)
            if isinstance(sub, dict) and leaf in sub:
                out[head] = {**sub, leaf: _b64(sub[leaf])}
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- routing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    kind: str  # resource | bulk | discovery | unknown | search | none
    rt: str = ""
    rid: str | None = None
    me: bool = False


def _relative(path: str, base: str) -> str:
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base) :]
    return path.removesuffix(".scim") or "/"


def _route(rel: str, method: str, cfg: AuditConfig) -> _Target:
    segs = [s for s in rel.split("/") if s]
    if not segs:
        return _Target("none")
    if method == "POST" and segs[-1] == ".search":
        return _Target("search")
    ep = segs[0]
    low = ep.lower()
    if low == "bulk" and len(segs) == 1:
        return _Target("bulk")
    if low in DISCOVERY_ENDPOINTS:
        return _Target("discovery", rt=ep)
    rid = segs[1] if len(segs) > 1 else None
    if ep == "Me":
        return _Target("resource", rt=cfg.me_resource_type, rid=None, me=True)
    for name, rt in cfg.resource_types.items():
        if name.lower() == low:
            return _Target("resource", rt=rt, rid=rid)
    return _Target("unknown", rt=_ident(ep, 128) or "unknown", rid=rid)


def _routing_failure(target: _Target, op: str, status: int, rid: str | None) -> str | None:
    """Why an answered write is not a provisioning event, or None if it is one."""
    if status in (401, 403):
        return "auth"
    if target.kind in ("discovery", "none"):
        return "routing"
    if status == 405 or (target.kind == "unknown" and status == 404):
        return "routing"
    if op != "create" and rid is None:
        return "routing"
    return None


def _outcome(op: str, status: int) -> str:
    if 200 <= status < 300:
        return "success"
    if op == "delete" and status == 404:
        return "skipped"  # already gone: the desired state holds, nothing changed
    return "failure"


def _error(status: int, body: Any, default_reason: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": str(status)}
    if isinstance(body, Mapping):
        st = _get_ci(body, "scimtype")
        if isinstance(st, str) and _ident(st, 64):
            err["scim_type"] = st
        detail = _get_ci(body, "detail")
        if isinstance(detail, str) and detail:
            err["reason"] = _text(detail, 4096)
    if not err.get("reason"):
        reason = default_reason
        if reason is None:
            with contextlib.suppress(ValueError):
                reason = http.HTTPStatus(status).phrase
        err["reason"] = reason
    return err


# --- the exchange -------------------------------------------------------------------------


@dataclass
class _Exchange:
    scope: Scope
    method: str
    rel: str
    req_id: str
    trace: str | None
    body: bytes
    t0_ns: int
    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    resp_body: bytes = b""
    t1_ns: int = 0

    def req_header(self, name: bytes) -> str | None:
        return _header(self.scope.get("headers", ()), name)

    def resp_header(self, name: bytes) -> str | None:
        return _header(self.headers, name)


@dataclass
class _Recorded:
    events: list[Event]
    access: list[dict[str, Any]]


class _Builder:
    """Builds the events of one exchange; every method is pure (no I/O)."""

    def __init__(
        self, cfg: AuditConfig, x: _Exchange, ref_pid: Callable[[str, str], bytes] | None = None
    ) -> None:
        self.cfg = cfg
        self.x = x
        self.ref_pid = ref_pid
        self.ts = x.t1_ns // 1_000_000
        self.dur = max(0, (x.t1_ns - x.t0_ns) // 1_000_000)
        self.dig = hashlib.sha256(x.body).digest()
        self._actor: dict[str, Any] | None = None
        # Read like the SP reads it: content coding, charset/BOM, duplicate keys last-wins.
        self.req = decode_body(
            x.body,
            content_type=x.req_header(b"content-type"),
            content_encoding=x.req_header(b"content-encoding"),
            max_size=cfg.max_body,
        )
        self._resp: Decoded | None = None
        self.result: dict[str, Any] | None = None  # resulting values the SP returned

    def resp(self) -> Any:
        """The SP's answer body as JSON (decoded like the request), or None."""
        if self._resp is None:
            if len(self.x.resp_body) > _MAX_JSON:
                self._resp = Decoded(None, "response too large")
            else:
                self._resp = decode_body(
                    self.x.resp_body,
                    content_type=self.x.resp_header(b"content-type"),
                    content_encoding=self.x.resp_header(b"content-encoding"),
                    max_size=_MAX_JSON,
                )
        return self._resp.value

    # shared fields

    def actor(self) -> dict[str, Any]:
        if self._actor is None:
            try:
                got = self.cfg.actor(self.x.scope)
            except Exception:
                _log.exception("actor hook failed; recording the credential thumbprint")
                got = None
            self._actor = dict(got) if got else _credential_actor(self.x.scope)
        return self._actor

    def src(self) -> dict[str, Any] | None:
        if not self.cfg.record_src:
            return None
        out: dict[str, Any] = {}
        ip: str | None = None
        if self.cfg.trust_forwarded:
            fwd = self.x.req_header(b"x-forwarded-for")
            if fwd:
                ip = fwd.split(",")[0].strip()
        client = self.x.scope.get("client")
        if ip is None and client:
            ip = str(client[0])
        if ip:
            with contextlib.suppress(ValueError):
                out["ip"] = str(ipaddress.ip_address(ip))
        ua = self.x.req_header(b"user-agent")
        if ua:
            text = _text(ua, 1024)
            if text:
                out["ua"] = text
        return out or None

    def corr(self, bulk: tuple[int, str | None] | None = None) -> dict[str, Any]:
        c: dict[str, Any] = {"req": self.x.req_id}
        if self.x.trace:
            c["trace"] = self.x.trace
        if bulk is not None:
            c["bulk_req"] = self.x.req_id
            c["seq"] = bulk[0]
            if bulk[1] is not None and _ident(bulk[1], 256):
                c["bulk_id"] = bulk[1]
        return c

    def common(self) -> dict[str, Any]:
        sp: dict[str, Any] = {"id": self.cfg.sp_id}
        if self.cfg.sp_base:
            sp["base"] = self.cfg.sp_base
        return {
            "tenant": self.cfg.tenant,
            "sp": sp,
            "ts": self.ts,
            "dur": self.dur,
            "idp": dict(self.cfg.idp) if self.cfg.idp else None,
            "src": self.src(),
            "ocsf": self.cfg.ocsf,
        }

    def intent(self, op: str, rt: str, body: Any) -> tuple[RequestIntent | None, str | None]:
        """What the body asks for, or why it cannot be read (never a silent bare update)."""
        if op != "delete" and not isinstance(body, Mapping):
            return None, "request body is not a JSON object"
        try:
            return parse_request(
                op,
                rt,
                None if op == "delete" else body,
                ocsf=self.cfg.ocsf,
                secret_attrs=self.cfg.secret_attrs,
                digest_attrs=self.cfg.digest_attrs,
                ref_pid=self.ref_pid,
            ), None
        except EventFormatError as exc:
            return None, _text(str(exc), 200) or "request body not understood"

    def body_intent(self, op: str, rt: str) -> tuple[RequestIntent | None, str | None]:
        if op == "delete":
            return self.intent(op, rt, None)
        if not self.req.ok:
            return None, self.req.error
        return self.intent(op, rt, self.req.value)

    def make(
        self, fields: dict[str, Any], intent: RequestIntent | None, unparsed: str | None = None
    ) -> list[Event]:
        """The event(s) of one operation. Never loses what is known about the request:

        * a body that could not be read gives an event that says so (``x.uninterpretable``,
          action ``<rt>.uninterpretable`` on success), with the request digest;
        * how the body was read (content coding, charset, BOM, duplicate keys) is in
          ``x.body``;
        * an intent too large for one event is split into linked parts (same ``corr.req``,
          ``x.part``/``x.parts``/``x.first``), so no member reference is dropped.
        """
        success = fields["outcome"] == "success"
        xs: dict[str, Any] = {}
        if self.req.notes:
            xs["body"] = dict(self.req.notes)
        if unparsed is not None:
            xs["uninterpretable"] = unparsed
        if success and self.result:
            xs["result"] = self.result
        last: EventFormatError | None = None
        if intent is not None:
            full: dict[str, Any] = {
                "patch": intent.patch,
                "mods": intent.mods,
                "refs": intent.refs,
                "x": xs or None,
            }
            if success:
                full["acts"] = intent.acts
            try:
                return [new_event(**fields, **full, intent=True)]
            except EventFormatError as exc:
                last = exc
            try:
                return self._split(fields, intent, xs, success)
            except EventFormatError as exc:
                last = exc
                xs["uninterpretable"] = "request too large to record: " + (
                    _text(str(exc), 160) or ""
                )
        extra: dict[str, Any] = {"x": xs or None}
        if success and "uninterpretable" in xs:
            extra["acts"] = [
                action(f"{action_prefix(fields['rt'])}.uninterpretable", self.cfg.ocsf)
            ]
        try:
            return [new_event(**fields, **extra, intent=True)]
        except EventFormatError as exc:
            last = exc
        # Last resort: drop everything the hooks or the request supplied beyond the minimum.
        minimal = dict(fields)
        minimal["actor"] = _credential_actor(self.x.scope)
        minimal["src"] = None
        minimal["idp"] = None
        minimal["req"] = {k: v for k, v in fields["req"].items() if k != "if_match"}
        minimal["ver"] = None
        _log.error(
            "event for request %s did not validate (%s); recording a minimal one",
            self.x.req_id,
            last,
        )
        acts = None
        if success:
            acts = [action(f"{action_prefix(fields['rt'])}.uninterpretable", self.cfg.ocsf)]
        return [
            new_event(
                **minimal,
                acts=acts,
                x={"uninterpretable": "invalid fields", "dropped": "invalid fields"},
                intent=True,
            )
        ]

    def _split(
        self, fields: dict[str, Any], intent: RequestIntent, xs: dict[str, Any], success: bool
    ) -> list[Event]:
        """Pack patch items, mods and refs into as many events as needed."""
        items: list[tuple[str, dict[str, Any]]] = [
            *(("patch", p) for p in intent.patch or ()),
            *(("mods", m) for m in intent.mods or ()),
            *(("refs", r) for r in intent.refs or ()),
        ]
        limits = {"patch": 1000, "mods": 1000, "refs": 4096}
        base = new_event(
            **fields,
            acts=intent.acts if success else None,
            x={**xs, "part": 0, "parts": 0, "first": "0" * 36},
            intent=True,
        )
        budget = MAX_EVENT_SIZE - len(dumps_det(base)) - 1024
        parts: list[dict[str, Any]] = []
        cur: dict[str, Any] = {}
        used = 0
        for kind, item in items:
            size = len(dumps_det(item)) + 1
            if cur and (used + size > budget or len(cur.get(kind, ())) >= limits[kind]):
                parts.append(cur)
                cur, used = {}, 0
            cur.setdefault(kind, []).append(item)
            used += size
        if cur or not parts:
            parts.append(cur)
        out: list[Event] = []
        for i, part in enumerate(parts):
            x = {**xs, "part": i, "parts": len(parts)}
            if out:
                x["first"] = out[0]["eid"]
            out.append(
                new_event(**fields, **part, acts=intent.acts if success else None, x=x, intent=True)
            )
        return out

    def access(self, reason: str, method: str, path: str, status: int) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "ts": self.ts,
            "req": self.x.req_id,
            "m": method,
            "p": path,
            "st": status,
            "reason": reason,
            "tenant": self.cfg.tenant,
            "sp": self.cfg.sp_id,
        }
        src = self.src()
        if src and "ip" in src:
            rec["ip"] = src["ip"]
        return rec

    # single requests

    def single(self) -> _Recorded:
        x = self.x
        target = _route(x.rel, x.method, self.cfg)
        op = op_for_method(x.method)
        resp = self.resp()
        status = x.status
        rid = None if target.rid is None else _rid(target.rid)
        if target.me and isinstance(resp, Mapping) and isinstance(resp.get("id"), str):
            rid = _rid(resp["id"])
        elif target.me:
            rid = "Me"
        if op == "create" and 200 <= status < 300 and rid is None:
            rid = self._created_id(resp, x.resp_header(b"location"))
        why = _routing_failure(target, op, status, rid)
        if why is not None:
            return _Recorded([], [self.access(why, x.method, x.rel, status)])
        outcome = _outcome(op, status)
        req: dict[str, Any] = {
            "m": x.method,
            "p": _path_text(x.rel),
            "dig": self.dig,
            "len": len(x.body),
        }
        if_match = x.req_header(b"if-match")
        if if_match and _ident(if_match, 1024):
            req["if_match"] = if_match
        etag = x.resp_header(b"etag")
        etag = etag if etag and _ident(etag, 256) else None
        loc = x.resp_header(b"location")
        loc = loc if loc and _ident(loc, 2048) else None
        pre = if_match if if_match and if_match.strip() != "*" and _ident(if_match, 256) else None
        body_obj = self.req.value
        fields = {
            **self.common(),
            "op": op,
            "rt": target.rt,
            "rid": None if op == "create" and outcome != "success" else rid,
            "xid": self._xid(resp, body_obj),
            "ver": {"pre": pre, "post": etag},
            "actor": self.actor(),
            "corr": self.corr(),
            "req": req,
            "res": {"st": status, "etag": etag, "loc": loc},
            "outcome": outcome,
            "err": None if outcome == "success" else _error(status, resp),
        }
        intent, unparsed = self.body_intent(op, target.rt)
        if outcome == "success":
            self.result = _resulting_values(target.rt, resp)
        return _Recorded(self.make(fields, intent, unparsed), [])

    @staticmethod
    def _created_id(resp: Any, location: str | None) -> str:
        if isinstance(resp, Mapping) and isinstance(resp.get("id"), str) and resp["id"]:
            return _rid(resp["id"])
        if location:
            last = location.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if last:
                return _rid(last)
        return "-"  # the SP's answer named no id

    @staticmethod
    def _xid(resp: Any, body: Any) -> str | None:
        for obj in (resp, body):
            if isinstance(obj, Mapping):
                v = obj.get("externalId")
                if isinstance(v, str) and _ident(v, 1024):
                    return v
        return None

    # bulk

    def bulk(self) -> _Recorded:
        x = self.x
        if x.status in (401, 403):
            return _Recorded([], [self.access("auth", x.method, x.rel, x.status)])
        req_obj = self.req.value
        ops = _get_ci(req_obj, "operations") if isinstance(req_obj, Mapping) else None
        if not isinstance(ops, list) or not all(isinstance(o, Mapping) for o in ops):
            return _Recorded([], [self.access("not a bulk request", x.method, x.rel, x.status)])
        resp = self.resp()
        resp_ops = _get_ci(resp, "operations") if isinstance(resp, Mapping) else None
        if not (200 <= x.status < 300) or not isinstance(resp_ops, list):
            resp_ops = []
        matched = _align(ops, [r for r in resp_ops if isinstance(r, Mapping)])
        created: dict[str, str] = {}  # bulkId -> id, from the POSTs that succeeded
        for op_req, op_resp in zip(ops, matched, strict=True):
            if op_resp is None or str(_get_ci(op_req, "method") or "").upper() != "POST":
                continue
            bid = _get_ci(op_req, "bulkid")
            loc = op_resp.get("location")
            if isinstance(bid, str) and isinstance(loc, str) and loc:
                created[bid] = loc.rstrip("/").rsplit("/", 1)[-1]
        out = _Recorded([], [])
        for seq, (op_req, op_resp) in enumerate(zip(ops, matched, strict=True)):
            self._bulk_op(seq, op_req, op_resp, resp if x.status >= 300 else None, created, out)
        return out

    def _bulk_op(
        self,
        seq: int,
        op_req: Mapping[str, Any],
        op_resp: Mapping[str, Any] | None,
        http_error: Any,
        created: Mapping[str, str],
        out: _Recorded,
    ) -> None:
        x = self.x
        method = str(_get_ci(op_req, "method") or "").upper()
        path = _get_ci(op_req, "path")
        path = path if isinstance(path, str) else ""
        if method not in WRITE_METHODS:
            out.access.append(
                self.access("bulk operation is not a write", method or "?", path, x.status)
            )
            return
        op = op_for_method(method)
        target = _route(_relative(path, self.cfg.base_path), method, self.cfg)
        bulk_id = _get_ci(op_req, "bulkid")
        bulk_id = bulk_id if isinstance(bulk_id, str) else None
        version = _get_ci(op_req, "version")
        version = version if isinstance(version, str) and _ident(version, 256) else None
        rid = target.rid
        if rid is not None and rid.startswith("bulkId:"):
            rid = created.get(rid.removeprefix("bulkId:"), rid)
        loc = rversion = None
        resp_err: Any = None
        if op_resp is not None:
            try:
                status = int(str(op_resp.get("status")))
            except ValueError:
                status = 500
            if not 100 <= status <= 599:
                status = 500
            loc = op_resp.get("location") if isinstance(op_resp.get("location"), str) else None
            rv = op_resp.get("version")
            rversion = rv if isinstance(rv, str) and _ident(rv, 256) else None
            resp_err = op_resp.get("response")
            if op == "create" and 200 <= status < 300:
                rid = self._created_id(None, loc)
            outcome = _outcome(op, status)
            err = None if outcome == "success" else _error(status, resp_err)
        elif x.status >= 300:
            status = x.status
            outcome = "failure"
            err = _error(status, http_error)
        else:
            status = x.status
            outcome = "skipped"
            err = {
                "code": "not_processed",
                "reason": "the bulk request stopped (failOnErrors) before this operation",
            }
        rid_v = None if rid is None else _rid(rid)
        why = _routing_failure(target, op, status, rid_v)
        if why is not None and op_resp is not None:
            out.access.append(self.access(why, method, path, status))
            return
        if rid_v is None and op != "create":
            out.access.append(self.access("routing", method, path, status))
            return
        if op == "create" and outcome != "success":
            rid_v = None
        data = _get_ci(op_req, "data")
        req: dict[str, Any] = {
            "m": method,
            "p": _path_text(path),
            "dig": self.dig,
            "len": len(x.body),
        }
        if version:
            req["if_match"] = version
        loc_v = loc if loc and _ident(loc, 2048) else None
        xid = data.get("externalId") if isinstance(data, Mapping) else None
        fields = {
            **self.common(),
            "op": op,
            "rt": target.rt or "unknown",
            "rid": rid_v,
            "xid": xid if isinstance(xid, str) and _ident(xid, 1024) else None,
            "ver": {"pre": version if version and version != "*" else None, "post": rversion},
            "actor": self.actor(),
            "corr": self.corr((seq, bulk_id)),
            "req": req,
            "res": {"st": status, "etag": rversion, "loc": loc_v},
            "outcome": outcome,
            "err": err,
        }
        if isinstance(data, Mapping) and created:
            data = _resolve_bulk_ids(data, created)
        intent, unparsed = self.intent(op, target.rt or "unknown", data)
        out.events.extend(self.make(fields, intent, unparsed))


def _resulting_values(rt: str, resp: Any) -> dict[str, Any] | None:
    """The security-relevant values of a User the SP returned after the write (``x.result``):
    ``active`` and the ``value`` of each role and entitlement. The log's state takes them as
    the truth (tlog.scim.effects). None when the answer holds no resource."""
    if rt != "User" or not isinstance(resp, Mapping) or not isinstance(resp.get("id"), str):
        return None
    out: dict[str, Any] = {}
    active = _get_ci(resp, "active")
    if isinstance(active, bool):
        out["active"] = active
    for name in ("roles", "entitlements"):
        items = _get_ci(resp, name)
        if isinstance(items, list) and len(items) <= 256:
            vals = [_get_ci(i, "value") if isinstance(i, Mapping) else i for i in items]
            if all(isinstance(v, str) and 0 < len(v) <= 256 for v in vals):
                out[name] = vals
    if len(json.dumps(out)) > 4096:  # keep the event small; the state then follows the intent
        out = {k: v for k, v in out.items() if k == "active"}
    return out or None


def _resolve_bulk_ids(value: Any, created: Mapping[str, str]) -> Any:
    """``"bulkId:<id>"`` references in an operation's data replaced by the created ids
    (RFC 7644 §3.7.2), as the SP resolves them; unknown ones stay as they are."""
    if isinstance(value, str) and value.startswith("bulkId:"):
        return created.get(value[len("bulkId:") :], value)
    if isinstance(value, Mapping):
        return {k: _resolve_bulk_ids(v, created) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_bulk_ids(v, created) for v in value]
    return value


def _align(
    ops: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any] | None]:
    """Pair each bulk operation with its result. The results are those of the operations
    that ran, in request order (RFC 7644 §3.7.3), so a greedy walk matches them."""
    out: list[Mapping[str, Any] | None] = []
    j = 0
    for op in ops:
        if j < len(results) and _compatible(op, results[j]):
            out.append(results[j])
            j += 1
        else:
            out.append(None)
    return out


def _compatible(op: Mapping[str, Any], res: Mapping[str, Any]) -> bool:
    m1 = str(_get_ci(op, "method") or "").upper()
    m2 = str(res.get("method") or "").upper()
    if m1 != m2:
        return False
    b1, b2 = _get_ci(op, "bulkid"), res.get("bulkId")
    if (b1 or b2) and b1 != b2:
        return False
    path, loc = _get_ci(op, "path"), res.get("location")
    if m1 != "POST" and isinstance(path, str) and isinstance(loc, str):
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last and not last.startswith("bulkId:") and "/" in path.strip("/"):
            return loc.rstrip("/").endswith("/" + last)
    return True


# --- the middleware -----------------------------------------------------------------------


class AuditMiddleware:
    """Pure ASGI middleware; see the module docstring for what it records and when.

    ``outbox`` is required (durability); ``relay`` delivers it (without one, run a
    :class:`~client.adapters.relay.Relay` on the same outbox file elsewhere). With ``own=True``
    the middleware starts the relay on ASGI lifespan startup (or the first request) and on
    shutdown drains it for up to ``drain`` seconds, stops it and closes the outbox.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: AuditConfig,
        outbox: Outbox,
        relay: Relay | None = None,
        *,
        own: bool = False,
        drain: float = 2.0,
    ) -> None:
        self.app = app
        self.config = config
        self.outbox = outbox
        self.relay = relay
        self.own = own
        self.drain = drain
        self._started = False
        self._outbox_ok = True
        self._direct_ok = False  # the last direct delivery (outbox broken) worked
        self._failed_size = 0  # bytes of the last add the outbox refused
        self.stats = {"events": 0, "access": 0, "unrecorded": 0, "refused": 0}

    def backlog(self) -> dict[str, Any]:
        """The audit backlog, for monitoring (``tlog scim-proxy`` serves it at
        ``GET /.tlog/status``; metrics exporters can call this directly): the outbox's
        undelivered events (:meth:`Outbox.backlog`), whether the relay is healthy, and this
        process's counters (``events`` recorded, ``unrecorded``, ``refused``, ``access``)."""
        out: dict[str, Any] = dict(self.outbox.backlog())
        out["relay_healthy"] = None if self.relay is None else self.relay.healthy
        out.update(self.stats)
        return out

    # lifecycle

    def start(self) -> None:
        if not self._started:
            self._started = True
            if self.relay is not None:
                self.relay.start()

    def close(self) -> None:
        """Stop the relay (after draining) and close the outbox, if owned."""
        if not self.own:
            return
        if self.relay is not None:
            self.relay.stop(drain=self.drain)
        self.outbox.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.start()
        headers = list(scope.get("headers", ()))
        req_id = _header(headers, b"x-request-id")
        generated = req_id is None or not _REQUEST_ID.fullmatch(req_id)
        if generated:
            req_id = str(uuid.uuid4())
            headers = [(k, v) for k, v in headers if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", req_id.encode("ascii")))
        if req_id is None:  # pragma: no cover - set above
            raise AssertionError
        inner = dict(scope)
        inner["headers"] = headers
        inner.setdefault("state", {})
        method = str(scope.get("method", "")).upper()
        rel = _relative(str(scope.get("path", "/")), self.config.base_path)
        if method not in WRITE_METHODS or (
            method == "POST" and rel.rstrip("/").endswith("/.search")
        ):
            await self.app(inner, receive, _echo_request_id(send, req_id))
            return
        await self._write(inner, receive, send, method, rel, req_id)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recv() -> Message:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.start()
            elif msg["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
            return msg

        await self.app(scope, recv, send)

    async def _write(
        self, scope: Scope, receive: Receive, send: Send, method: str, rel: str, req_id: str
    ) -> None:
        cfg = self.config
        t0 = time.time_ns()
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cfg.max_body:
                await _send_error(send, 413, "request body too large for the audit adapter", req_id)
                self._access(rel, method, req_id, 413, "body too large")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        trace = _header(scope["headers"], b"traceparent")
        x = _Exchange(
            scope,
            method,
            rel,
            req_id,
            trace if trace and _TRACEPARENT.fullmatch(trace.strip()) else None,
            body,
            t0,
        )
        if (
            not self._outbox_ok
            and not cfg.fail_open
            and not self._direct_ok
            and not await self._probe()
        ):
            self.stats["refused"] += 1
            await _send_error(
                send,
                503,
                "audit outbox unavailable; the request was not applied",
                req_id,
                cfg.retry_after,
            )
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        start: Message | None = None
        body_parts: list[bytes] = []
        trailers: list[Message] = []

        async def capture(msg: Message) -> None:
            nonlocal start
            t = msg["type"]
            if t == "http.response.start":
                start = msg
                x.t1_ns = time.time_ns()
            elif t == "http.response.body":
                body_parts.append(msg.get("body", b""))
            else:
                trailers.append(msg)

        failure: BaseException | None = None
        try:
            await self.app(scope, replay, capture)
        except Exception as exc:
            failure = exc
        if start is None:
            x.status, x.headers, x.t1_ns = 500, [], time.time_ns()
        else:
            x.status = int(start["status"]) if 100 <= int(start["status"]) <= 599 else 500
            x.headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", ())]
        x.resp_body = b"".join(body_parts)

        extra, ok = await self._record(x)
        if failure is not None:
            raise failure
        if not ok:
            await _send_error(
                send,
                503,
                f"the service provider processed this request "
                f"(status {x.status}; a change may have been applied) but its "
                "audit event could not be recorded, so the answer is withheld",
                req_id,
                cfg.retry_after,
            )
            return
        if start is None:  # pragma: no cover - the app sent nothing and raised nothing
            await _send_error(send, 500, "no response from the service provider", req_id)
            return
        out_headers = list(x.headers)
        if not any(k.lower() == b"x-request-id" for k, _ in out_headers):
            out_headers.append((b"x-request-id", req_id.encode("ascii")))
        out_headers.extend(extra)
        await send({**start, "headers": out_headers})
        await send({"type": "http.response.body", "body": x.resp_body, "more_body": False})
        for msg in trailers:
            await send(msg)

    def _access(self, rel: str, method: str, req_id: str, status: int, reason: str) -> None:
        rec = {
            "ts": _now_ms(),
            "req": req_id,
            "m": method,
            "p": rel,
            "st": status,
            "reason": reason,
            "tenant": self.config.tenant,
            "sp": self.config.sp_id,
        }
        self._emit_access([rec])

    def _emit_access(self, records: Sequence[Mapping[str, Any]]) -> None:
        hook = self.config.on_access
        self.stats["access"] += len(records)
        if hook is None:
            return
        for rec in records:
            try:
                hook(rec)
            except Exception:
                _log.exception("on_access hook failed")

    async def _probe(self) -> bool:
        try:
            await asyncio.wrap_future(self.outbox.probe(max(8192, self._failed_size)))
        except OutboxError:
            return False
        self._outbox_ok = True
        return True

    def _build(self, x: _Exchange, ref_pid: Callable[[str, str], bytes] | None) -> _Recorded:
        b = _Builder(self.config, x, ref_pid)
        return b.bulk() if _route(x.rel, x.method, self.config).kind == "bulk" else b.single()

    @staticmethod
    def _outbox_records(x: _Exchange, rec: _Recorded) -> list[OutboxRecord]:
        return [OutboxRecord(str(e["eid"]), x.req_id, event_json(e)) for e in rec.events]

    def _build_records(
        self, x: _Exchange, ref_pid: Callable[[str, str], bytes] | None
    ) -> tuple[_Recorded, list[OutboxRecord] | None]:
        """Build the events and, unless placeholders wait for pseudonyms, their outbox
        records too: one worker-thread hop for the common request."""
        rec = self._build(x, ref_pid)
        if isinstance(ref_pid, PidCollector) and ref_pid.pairs:
            return rec, None
        return rec, self._outbox_records(x, rec)

    async def _events(self, x: _Exchange) -> tuple[_Recorded, list[OutboxRecord]]:
        """Build the events and their outbox records off the event loop; member pseudonyms
        in one batched call.

        With a ``ref_pid`` that can resolve in batches (``resolve``, as
        :class:`~client.adapters.pseudonyms.LogPseudonyms`), the events are built once with
        placeholders, every referenced subject is resolved in one call (in a worker thread),
        and the placeholders are replaced. A plain ``ref_pid`` is called from the worker.
        """
        loop = asyncio.get_running_loop()
        ref_pid = self.config.ref_pid
        resolve = getattr(ref_pid, "resolve", None)
        if ref_pid is None or not callable(resolve):
            rec, records = await loop.run_in_executor(None, self._build_records, x, ref_pid)
        else:
            collector = PidCollector()
            rec, records = await loop.run_in_executor(None, self._build_records, x, collector)
            if records is None:
                try:
                    real = await loop.run_in_executor(None, resolve, list(collector.pairs))
                except EventFormatError as exc:
                    _log.error("member pseudonyms unavailable for request %s: %s", x.req_id, exc)
                    rec, records = await loop.run_in_executor(
                        None, self._build_records, x, _pids_unavailable
                    )
                else:
                    substitute_pids(rec.events, collector.placeholders(real))
                    records = None
        if records is None:
            records = await loop.run_in_executor(None, self._outbox_records, x, rec)
        return rec, records

    async def _record(self, x: _Exchange) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Build and store the events; return the receipt headers and whether it worked."""
        try:
            rec, records = await self._events(x)
        except Exception:
            _log.exception("could not build the audit event of request %s", x.req_id)
            return self._unrecorded([])
        self._emit_access(rec.access)
        if not records:
            return [], True
        eids = [r.eid for r in records]
        waiting = self.relay is not None and self.config.receipt_timeout > 0
        futs = self.relay.watch(eids) if waiting and self.relay is not None else []
        try:
            try:
                await asyncio.wrap_future(self.outbox.add(records))
            except OutboxError as exc:
                self._outbox_ok = False
                self._failed_size = sum(len(r.body) for r in records)
                _log.error("audit outbox write failed for request %s: %s", x.req_id, exc)
                return await self._direct(records)
            self._outbox_ok = True
            self._direct_ok = False
            self.stats["events"] += len(records)
            receipts: dict[str, Receipt] = {}
            if self.relay is not None:
                self.relay.kick()
                if self.config.receipt_timeout > 0 and self.relay.healthy:
                    receipts = await _wait(futs, self.config.receipt_timeout)
            return _receipt_headers(eids, receipts), True
        finally:
            if waiting and self.relay is not None:
                self.relay.unwatch(eids)

    async def _direct(self, records: list[OutboxRecord]) -> tuple[list[tuple[bytes, bytes]], bool]:
        eids = [r.eid for r in records]
        # Fail-open does not make every request wait on a log that is known to be down.
        if self.relay is not None and (not self.config.fail_open or self.relay.healthy):
            timeout = max(self.config.receipt_timeout, self.config.direct_timeout)
            loop = asyncio.get_running_loop()
            try:
                got = await loop.run_in_executor(None, self.relay.deliver_now, records, timeout)
            except DeliveryError as exc:
                self._direct_ok = False
                _log.error("direct delivery to the log failed too: %s", exc)
            else:
                self._direct_ok = True
                self.stats["events"] += len(records)
                return _receipt_headers(eids, {r.eid: r for r in got}), True
        return self._unrecorded(eids)

    def _unrecorded(self, eids: Sequence[str]) -> tuple[list[tuple[bytes, bytes]], bool]:
        self.stats["unrecorded"] += max(1, len(eids))
        if self.config.fail_open:
            _log.error("fail-open: passing a SCIM response through with its audit event lost")
            return [(b"tlog-status", b"unrecorded")], True
        return [], False


def _pids_unavailable(rt: str, ref_id: str) -> bytes:
    raise EventFormatError("member pseudonyms unavailable (the log did not answer)")


async def _wait(futs: Sequence[Future[Receipt]], timeout: float) -> dict[str, Receipt]:
    wrapped = [asyncio.wrap_future(f) for f in futs]
    done, pending = await asyncio.wait(wrapped, timeout=timeout)
    for p in pending:
        p.cancel()
    out: dict[str, Receipt] = {}
    for d in done:
        if not d.cancelled() and d.exception() is None:
            r = d.result()
            out[r.eid] = r
    return out


def _receipt_headers(
    eids: Sequence[str], receipts: Mapping[str, Receipt]
) -> list[tuple[bytes, bytes]]:
    logged = bool(eids) and all(e in receipts for e in eids)
    h = [
        (b"tlog-status", b"logged" if logged else b"queued"),
        (b"tlog-event-count", str(len(eids)).encode()),
    ]
    if len(eids) <= MAX_HEADER_EVENTS:
        h.append((b"tlog-event-id", ", ".join(eids).encode("ascii")))
        if logged:
            rs = [receipts[e] for e in eids]
            h.append((b"tlog-index", ", ".join(str(r.index) for r in rs).encode("ascii")))
            h.append((b"tlog-leaf-hash", ", ".join(r.leaf_hash for r in rs).encode("ascii")))
    if logged:
        last = max((receipts[e] for e in eids), key=lambda r: r.tree_size)
        h.append((b"tlog-tree-size", str(last.tree_size).encode()))
        h.append((b"tlog-checkpoint", base64.b64encode(last.checkpoint.encode("utf-8"))))
    return h


def _echo_request_id(send: Send, req_id: str) -> Send:
    async def wrapped(msg: Message) -> None:
        if msg["type"] == "http.response.start":
            headers = list(msg.get("headers", ()))
            if not any(bytes(k).lower() == b"x-request-id" for k, _ in headers):
                headers.append((b"x-request-id", req_id.encode("ascii")))
                msg = {**msg, "headers": headers}
        await send(msg)

    return wrapped


async def _send_error(
    send: Send, status: int, detail: str, req_id: str, retry_after: int | None = None
) -> None:
    body = json.dumps(
        {"schemas": [SCIM_ERROR_URN], "status": str(status), "detail": detail}
    ).encode()
    headers = [
        (b"content-type", b"application/scim+json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", req_id.encode("ascii")),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
