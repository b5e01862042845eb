"""The SCIM exchange, pure: one HTTP request and its answer in, audit events out.

No ASGI, no I/O: :class:`Builder` turns an :class:`Exchange` (method, path relative to the
SCIM base, request headers and raw body, response status, headers and body, timings) into
the events of SCIM.md §3.4 (:func:`client.scim.event.new_event`): one per request on a
resource endpoint, one per operation of a ``/Bulk`` request, successes and failures alike,
with the request digest, versions, the SCIM error, the intent parsed from the body
(:func:`client.scim.actions.parse_request`) and, where the SP answered with the resource,
its resulting values; plus the access records of what is not a provisioning event. The
routing rules (:func:`route`), the configuration (:class:`AuditConfig`) and the default
hooks live here too. The ASGI plumbing that feeds it (buffering, outbox, relay, fail-closed
policy) is :mod:`client.adapters.middleware`; the receipt headers are
:mod:`client.adapters.receipts`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import hashlib
import http
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard, Unpack

import msgspec

from client.adapters.body import MAX_FLAGGED_KEYS, Decoded, decode_body
from client.adapters.outbox import Canonical
from client.runtime.logredact import redact_target
from client.scim.actions import (
    RequestIntent,
    action,
    action_prefix,
    as_bool,
    kept_digest,
    op_for_method,
    parse_request,
    same_json,
)
from client.scim.cbor import EventFormatError, dumps_det
from client.scim.event import (
    BYTES_FIELDS,
    MAX_EVENT_SIZE,
    Event,
    EventFields,
    event_object,
    new_event,
    validate_event,
)
from client.scim.fastjson import check_event_json_canonical

__all__ = [
    "DISCOVERY_ENDPOINTS",
    "REQUEST_ID",
    "SCIM_ERROR_URN",
    "TRACEPARENT",
    "WRITE_METHODS",
    "AuditConfig",
    "Builder",
    "Exchange",
    "Recorded",
    "SpTypes",
    "default_actor",
    "event_json",
    "header",
    "header_map",
    "log_access",
    "now_ms",
    "raw_relative",
    "relative",
    "route",
    "sp_types",
    "validated_event",
    "wants_sp_types",
    "without_dot_segments",
]

Scope = MutableMapping[str, Any]
ActorHook = Callable[[Scope], Mapping[str, Any] | None]
AccessHook = Callable[[Mapping[str, Any]], None]

_log = logging.getLogger("client.adapters.exchange")
_access_log = logging.getLogger("client.scim.access")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DISCOVERY_ENDPOINTS = frozenset({"serviceproviderconfig", "resourcetypes", "schemas"})
SCIM_ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
_MAX_JSON = 4 << 20  # response bodies parsed for ids and errors
TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
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
    got = _state_actor(scope)
    return got if got is not None else credential_actor(scope)


def _state_actor(scope: Scope) -> dict[str, Any] | None:
    """``scope["state"]["tlog_actor"]`` as :func:`default_actor` takes it (a copy), if any."""
    state = scope.get("state")
    if _is_map(state) and _is_map(state.get("tlog_actor")):
        return dict(state["tlog_actor"])
    return None


def credential_actor(scope: Scope) -> dict[str, Any]:
    auth = header(scope.get("headers", ()), b"authorization")
    if auth is not None:
        scheme, _, cred = auth.strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() == "bearer" and cred:
            return {"kind": "bearer", "tok_d": hashlib.sha256(cred.encode("latin-1")).digest()}
        if scheme.lower() == "basic" and cred:
            try:
                user = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")[0]
            except (ValueError, UnicodeDecodeError):  # binascii.Error, or a non-ASCII text
                user = ""
            if ident(user, 512):
                return {"kind": "user", "id": user}
    return {"kind": "anonymous"}


def log_access(record: Mapping[str, Any]) -> None:
    """Default ``on_access`` hook: one line on the ``client.scim.access`` logger."""
    level = logging.WARNING if record.get("reason") == "auth" else logging.INFO
    line = dict(record)
    if isinstance(line.get("p"), str):  # no resource ids (user names, e-mails) in a log line
        line["p"] = redact_target(line["p"])
    _access_log.log(level, "%s", json.dumps(line, sort_keys=True, default=str))


# --- configuration ------------------------------------------------------------------------

# Seconds a write waits for its write-ahead intent to be in the journal (written; flushed
# with durable intents) before it is refused, not forwarded (503): the journal's file system
# stalls (stall28: a frozen disk held every request, health checks included). A setting
# since stall29 (AuditConfig.intent_wait, ``tlog scim-proxy --intent-wait``).
INTENT_WAIT = 5.0
# Its bound: a client's write waiting longer for the audit journal than this is a hang.
MAX_INTENT_WAIT = 300.0


def check_intent_wait(value: object) -> float:
    """``value`` as an intent wait (seconds, above 0, at most :data:`MAX_INTENT_WAIT`);
    ValueError otherwise (0 would refuse every write, a day would hang a client on a
    stalled disk; NaN, infinity and booleans are refused too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"intent_wait must be a number of seconds, not {value!r}")
    if not 0 < value <= MAX_INTENT_WAIT:
        raise ValueError(
            f"intent_wait must be above 0 and at most {MAX_INTENT_WAIT:g} seconds, not {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class AuditConfig:
    """What the middleware records and how it behaves. Only ``tenant`` and ``sp_id`` are needed.

    * ``sp_base``: the SP's base URL as it names its resources (the proxy's upstream):
      a create's location may name its server; without it, the server the request asked
      (:attr:`Builder.answers`). Set it where a reverse proxy rewrites the host.
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
    * ``max_body``: request bytes of a write (then 413); ``max_answer``: bytes of a write's
      answer held until its event is recorded (then the client gets 502; the event, with
      the SP's status, is still recorded).
    * ``durable_intents``: each write-ahead intent is flushed to disk (``fdatasync``,
      shared by the writes in flight) before the write is forwarded, so it survives a
      machine crash or power loss, not only a kill of the process (docs/scim-adapter.md).
    * ``intent_wait``: seconds a write waits for its write-ahead intent to be in the
      journal before it is refused, not forwarded (503): the journal's disk stalls. The
      same bound says when the disk counts as stalled (``/.tlog/readyz``) and bounds the
      wait of a close on it. Above 0, at most :data:`MAX_INTENT_WAIT`.
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
    max_answer: int = 64 << 20
    actor: ActorHook = default_actor
    on_access: AccessHook | None = log_access
    secret_attrs: Collection[str] = ("password",)
    digest_attrs: Collection[str] = ()
    ref_pid: Callable[[str, str], bytes] | None = None
    ocsf: str = "1.8"
    trust_forwarded: bool = False
    record_src: bool = True
    durable_intents: bool = False
    intent_wait: float = INTENT_WAIT

    def __post_init__(self) -> None:
        if not ident(self.tenant, 256) or not ident(self.sp_id, 256):
            raise ValueError("tenant and sp_id must be non-empty identifiers (<= 256 bytes)")
        check_intent_wait(self.intent_wait)
        if self.base_path and (not self.base_path.startswith("/") or self.base_path.endswith("/")):
            raise ValueError("base_path must start with '/' and not end with one (or be '')")

    @functools.cached_property
    def secret_lower(self) -> frozenset[str]:
        """``secret_attrs`` in lower case, made once per configuration (every success's
        answer is read against it: :meth:`Builder.taken`)."""
        return frozenset(a.lower() for a in self.secret_attrs)

    @functools.cached_property
    def digest_lower(self) -> frozenset[str]:
        """``digest_attrs`` in lower case, made once per configuration."""
        return frozenset(a.lower() for a in self.digest_attrs)

    @functools.cached_property
    def hidden_lower(self) -> frozenset[str]:
        """:attr:`secret_lower` and :attr:`digest_lower` together: the attributes whose
        values an answer's ``x.result`` never carries."""
        return self.secret_lower | self.digest_lower

    @functools.cached_property
    def sp_base_server(self) -> Server | None:
        """The server ``sp_base`` names (:func:`_server`), parsed once per configuration
        (the proxy's every create is held to it: :attr:`Builder.answers`)."""
        if not self.sp_base:
            return None
        base = urllib.parse.urlsplit(self.sp_base)
        return _server(base.netloc, base.scheme)


# --- small helpers ------------------------------------------------------------------------


def header(headers: Sequence[tuple[bytes, bytes]] | Any, name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None


def header_map(headers: Sequence[tuple[bytes, bytes]] | Any) -> dict[bytes, bytes]:
    """Header values by lower-case name, the first of repeated names (what :func:`header`
    returns for each), for an exchange that looks up many names."""
    out: dict[bytes, bytes] = {}
    for k, v in headers:
        k = bytes(k).lower()  # a server may hand names as other byte sequences (bytearray)
        if k not in out:
            out[k] = bytes(v)
    return out


def ident(value: object, max_bytes: int) -> str | None:
    """``value`` if it is a valid event identifier (non-empty, no controls, bounded)."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        return None
    try:
        if len(value.encode("utf-8")) > max_bytes:
            return None
    except UnicodeEncodeError:
        return None
    return value


def short_text(value: str, max_bytes: int) -> str | None:
    """Free text cut to ``max_bytes`` of UTF-8, controls (but tab/LF/CR) removed."""
    value = _TEXT_CONTROL.sub("", value)
    data = value.encode("utf-8", "replace")[:max_bytes]
    out = data.decode("utf-8", "ignore").strip()
    return out or None


def path_text(value: str) -> str:
    """A request path for ``req.p``: no control characters, at most 4096 bytes."""
    value = _CONTROL.sub("", value)
    return value.encode("utf-8", "replace")[:4096].decode("utf-8", "ignore") or "/"


def rid_text(value: str) -> str:
    """A resource id for the event; an id the schema cannot hold is replaced by its digest."""
    return (
        ident(value, 256)
        or "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()
    )


@functools.lru_cache(maxsize=4096)
def ip_text(value: str) -> str | None:
    """An IP address in its normal text form, or None; cached: a proxy sees the same few
    client addresses again and again, and parsing one costs more than the rest of ``src``."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _is_map(v: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(v, Mapping)``, with the usual answers (a ``dict``, ``None``) given
    without the ABC's ``__instancecheck__`` (a Python-level call, ~0.3 us, about ten
    a write on the builder's path)."""
    return type(v) is dict or (v is not None and isinstance(v, Mapping))


def get_ci(obj: Mapping[str, Any], name: str) -> Any:
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == name:
            return v
    return None


def now_ms() -> int:
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


_JSON = msgspec.json.Encoder(order="sorted")


def validated_event(**fields: Unpack[EventFields]) -> tuple[Event, str]:
    """:func:`client.scim.event.new_event` with the event's JSON form (the outbox record).

    The event is built unvalidated (:func:`client.scim.event.event_object`), encoded to JSON
    once (msgspec: keys sorted, compact, UTF-8, the byte fields standard base64, i.e. what
    :func:`event_json` writes), and that text is checked by the compiled checker the log
    uses for the same form (:func:`client.scim.fastjson.check_event_json`: the checks of
    ``decode_event_json``, which only ever accepts what the reference accepts, less the
    repeated-key count and the CBOR, see there). The checked text must decode to exactly the
    object built (no tuple, byte string or non-text key turned into something else by the
    JSON encoding). Anything else (the checker declines, or the two differ) takes the
    reference path, :func:`client.scim.event.validate_event`, which accepts or raises
    :class:`EventFormatError` naming the field, as :func:`new_event` does.
    """
    ev, text, _ = validated_event_canonical(**fields)
    return ev, text


def validated_event_canonical(**fields: Unpack[EventFields]) -> tuple[Event, str, Canonical | None]:
    """:func:`validated_event` with, on its compiled path, the event's :class:`Canonical`
    form: the canonical CBOR of the event decoded from the JSON text (the bytes
    :func:`client.scim.fastjson.decode_event_json` gives for that text, as the relay would
    decode it: ``tests/adapters/test_fast_canonical.py``) and a copy of its actor. ``None``
    on the reference path (the relay then decodes)."""
    obj = event_object(**fields)
    try:
        text = _JSON.encode(obj)
    except (TypeError, ValueError, OverflowError):  # msgspec.EncodeError is a ValueError
        text = b""
    got = check_event_json_canonical(text) if text else None
    if got is not None and got[0] == obj:
        ev = got[0]
        return ev, text.decode("utf-8"), Canonical(got[1], dict(ev["actor"]))
    ev = validate_event(obj)
    return ev, event_json(ev), None


# --- routing ------------------------------------------------------------------------------


class _Target(NamedTuple):  # a tuple: made for every write, a frozen dataclass costs more
    kind: str  # resource | bulk | discovery | unknown | search | none
    rt: str = ""
    rid: str | None = None
    me: bool = False


def relative(path: str, base: str) -> str:
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base) :]
    return path.removesuffix(".scim") or "/"


def without_dot_segments(path: str, *, encoded: bool) -> str:
    """``path`` (a whole request path, base included) with its dot segments removed as
    RFC 3986 §5.2.4 resolves them (see :func:`_without_dots`; ``encoded``: ``path`` is as
    sent, where ``%2E`` is a dot), before it is taken relative to the SCIM base. Red team
    24 removed them from the path relative to the base only, so a ``..`` climbing into the
    base again was lost: ``DELETE /v2/Users/../../v2/Users/u1`` (``/v2/Users/u1`` once
    normalised) was recorded as the deletion of a resource of type ``v2``, and
    ``/x/../v2/Users/u1`` of one of type ``x``, while a normalising SP deleted user ``u1``
    (red team 25). Empty segments are dropped, as :func:`route` drops them. A path without
    a segment starting with a dot (or ``%2``) is returned as it is, at no cost."""
    if "/." not in path and (not encoded or "/%2" not in path):
        return path
    segs = [s for s in path.split("/") if s]
    names = [urllib.parse.unquote(s) for s in segs] if encoded else segs
    if "." not in names and ".." not in names:
        return path
    out: list[str] = []
    for s, name in zip(segs, names, strict=True):
        if name == "..":
            if out:
                out.pop()
        elif name != ".":
            out.append(s)
    return "/" + "/".join(out)


def raw_relative(scope: Scope, base: str) -> str | None:
    """The request's path relative to ``base`` as the client sent it (percent-encoded, from
    ``scope["raw_path"]``, which uvicorn sets), its dot segments removed
    (:func:`without_dot_segments`), for :func:`route` with ``encoded=True``; None when the
    scope has none, or it does not decode to ``scope["path"]`` (the server, or a layer
    before the adapter, rewrote the path: its decoded form is the truth then)."""
    raw = scope.get("raw_path")
    path = scope.get("path")
    if not isinstance(raw, bytes | bytearray) or not isinstance(path, str):
        return None
    text = bytes(raw).decode("latin-1")
    if urllib.parse.unquote(text) != path:
        return None
    text = without_dot_segments(text, encoded=True)
    rel = relative(text, base)
    return rel if urllib.parse.unquote(rel) == relative(urllib.parse.unquote(text), base) else None


def _without_dots(segs: list[str]) -> list[str]:
    """``segs`` with their dot segments removed as RFC 3986 §5.2.4 resolves them (``.``
    dropped, ``..`` dropping the segment before it; ``%2E`` is a dot, §6.2.2.2): the
    resource a path names once normalised, as a reverse proxy or the SP itself may
    normalise it. Before red team 24 ``DELETE /Users/../Groups/g1`` was recorded as the
    deletion of a User ``..``, no resource any SP holds, while a normalising SP deleted
    Group ``g1``."""
    if "." not in segs and ".." not in segs:
        return segs
    out: list[str] = []
    for s in segs:
        if s == "..":
            if out:
                out.pop()
        elif s != ".":
            out.append(s)
    return out


def route(rel: str, method: str, cfg: AuditConfig, *, encoded: bool = False) -> _Target:
    """The endpoint, type and id a write's path ``rel`` (relative to the SCIM base) names.

    ``encoded``: ``rel`` is a URI path as sent (a bulk operation's, :func:`raw_relative`):
    it is split on its ``/`` and each segment percent-decoded, so ``/Users/a%2Fb`` is id
    ``a/b`` and ``/Users/a/password`` a request on user ``a``. Otherwise ``rel`` is the path
    an ASGI server decoded, where the two cannot be told apart: the id is then all of the
    path after the endpoint (red team 21: the DELETE of id ``a/b`` was recorded as the
    deletion of user ``a``, another resource; red team 22: the raw path, where the scope has
    it, keeps a sub-path its user's)."""
    segs = [s for s in rel.split("/") if s]
    if encoded:
        segs = [urllib.parse.unquote(s) for s in segs]
    segs = _without_dots(segs)
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
    rid = (segs[1] if encoded else "/".join(segs[1:])) if len(segs) > 1 else None
    if ep == "Me":
        return _Target("resource", rt=cfg.me_resource_type, rid=None, me=True)
    for name, rt in cfg.resource_types.items():
        if name.lower() == low:
            return _Target("resource", rt=rt, rid=rid)
    return _Target("unknown", rt=ident(ep, 128) or "unknown", rid=rid)


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


def _status(value: Any) -> int:
    """A bulk result's ``status`` (RFC 7644 §3.7.3: its HTTP status code, as a string or,
    from some SPs, a number); 0 if it is none (another type, text that is no decimal
    code, a code out of 100-599): the SP did not say what became of the operation."""
    if type(value) is int or (isinstance(value, str) and re.fullmatch(r"[0-9]{3}", value)):
        status = int(value)
        if 100 <= status <= 599:
            return status
    return 0


def _says_error(response: Any) -> bool:
    """Whether a bulk result's ``response`` is a SCIM error (RFC 7644 §3.12: its schema,
    or a ``status`` of 300 or more)."""
    if not isinstance(response, Mapping):
        return False
    schemas = get_ci(response, "schemas")
    if isinstance(schemas, list) and any(
        isinstance(u, str) and u.lower() == SCIM_ERROR_URN.lower() for u in schemas
    ):
        return True
    return _status(get_ci(response, "status")) >= 300


def _outcome(op: str, status: int) -> str:
    if 200 <= status < 300:
        return "success"
    if op == "delete" and status == 404:
        return "skipped"  # already gone: the desired state holds, nothing changed
    return "failure"


def _error(status: int, body: Any, default_reason: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": str(status)}
    if isinstance(body, Mapping):
        st = get_ci(body, "scimtype")
        if isinstance(st, str) and ident(st, 64):
            err["scim_type"] = st
        detail = get_ci(body, "detail")
        if isinstance(detail, str) and detail:
            err["reason"] = short_text(detail, 4096)
    if not err.get("reason"):
        reason = default_reason
        if reason is None:
            with contextlib.suppress(ValueError):
                reason = http.HTTPStatus(status).phrase
        err["reason"] = reason
    return err


# --- the exchange -------------------------------------------------------------------------


@dataclass
class Exchange:
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
    # Set by the middleware when the SP's answer ended before it was whole (x.answer).
    answer_note: str | None = None
    # What the SP's /ResourceTypes says, as the middleware read it (None: not known).
    sp_types: SpTypes | None = None
    # The answer decoded by wants_sp_types, where it decoded it (Builder.resp takes it:
    # one decode per answer).
    resp_decoded: Decoded | None = field(default=None, repr=False, compare=False)
    # (config, route, raw_relative's path as sent) of the last config routed for
    _target: tuple[AuditConfig, _Target, str | None] | None = field(
        default=None, repr=False, compare=False
    )
    # The headers by lower-case name (the first of repeated ones), made on first use.
    _req_map: tuple[Any, dict[bytes, bytes]] | None = field(default=None, repr=False, compare=False)
    _resp_map: tuple[Any, dict[bytes, bytes]] | None = field(
        default=None, repr=False, compare=False
    )
    # The body's SHA-256 and the credential's actor, each made once: the write-ahead intent
    # and the event both name them (keyed by the body and the headers they were made of).
    _dig: tuple[bytes, bytes] | None = field(default=None, repr=False, compare=False)
    _cred: tuple[Any, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def body_digest(self) -> bytes:
        """``hashlib.sha256(self.body).digest()``, computed once."""
        got = self._dig
        if got is None or got[0] is not self.body:
            got = self._dig = (self.body, hashlib.sha256(self.body).digest())
        return got[1]

    def credential(self) -> dict[str, Any]:
        """:func:`credential_actor` of this exchange's scope (a fresh dict each call),
        computed once."""
        headers = self.scope.get("headers", ())
        got = self._cred
        if got is None or got[0] is not headers:
            got = self._cred = (headers, credential_actor(self.scope))
        return dict(got[1])

    def target(self, cfg: AuditConfig) -> _Target:
        """:func:`route` of this exchange's path and method, computed once."""
        return self._routed(cfg)[1]

    def raw_rel(self, cfg: AuditConfig) -> str | None:
        """:func:`raw_relative` of this exchange's scope (the path :meth:`target` routed
        when not None), computed once."""
        return self._routed(cfg)[2]

    def _routed(self, cfg: AuditConfig) -> tuple[AuditConfig, _Target, str | None]:
        t = self._target
        if t is None or t[0] is not cfg:
            raw = raw_relative(self.scope, cfg.base_path)
            if raw is None:
                t = self._target = self._routed_decoded(cfg)
            else:
                t = self._target = (cfg, route(raw, self.method, cfg, encoded=True), raw)
        return t

    def _routed_decoded(self, cfg: AuditConfig) -> tuple[AuditConfig, _Target, str | None]:
        """:meth:`_routed` of a scope without its path as sent: :attr:`rel`, or where the
        path has dot segments, the path without them taken relative to the base (a ``..``
        may climb into the base again, red team 25) and, for the intent to route as this
        does, that path encoded: its endpoint and its id each one segment."""
        path = self.scope.get("path")
        if (
            not isinstance(path, str)
            or (dotless := without_dot_segments(path, encoded=False)) == path
        ):
            return cfg, route(self.rel, self.method, cfg), None
        rel = relative(dotless, cfg.base_path)
        segs = [s for s in rel.split("/") if s]
        quoted = [urllib.parse.quote(s, safe="") for s in [*segs[:1], "/".join(segs[1:])]]
        return cfg, route(rel, self.method, cfg), "/" + "/".join(q for q in quoted if q)

    def req_header(self, name: bytes) -> str | None:
        """The first request header ``name`` (lower case), as :func:`header` finds it."""
        headers = self.scope.get("headers", ())
        got = self._req_map
        if got is None or got[0] is not headers:
            got = self._req_map = (headers, header_map(headers))
        v = got[1].get(name)
        return None if v is None else v.decode("latin-1")

    def resp_header(self, name: bytes) -> str | None:
        """The first response header ``name`` (lower case), as :func:`header` finds it."""
        got = self._resp_map
        if got is None or got[0] is not self.headers:
            got = self._resp_map = (self.headers, header_map(self.headers))
        v = got[1].get(name)
        return None if v is None else v.decode("latin-1")


@dataclass
class Recorded:
    """The events of one exchange, the access records of what is not an event, and the
    events' JSON forms by ``eid`` as validated (:func:`validated_event`), with their
    canonical forms where the compiled path made them (``canon``, used only with the text
    of the same ``eid``); an event changed afterwards (member pseudonyms substituted) must
    have its text dropped."""

    events: list[Event]
    access: list[dict[str, Any]]
    texts: dict[str, str] = field(default_factory=dict)
    canon: dict[str, Canonical] = field(default_factory=dict)


class Builder:
    """Builds the events of one exchange; every method is pure (no I/O)."""

    def __init__(
        self, cfg: AuditConfig, x: Exchange, ref_pid: Callable[[str, str], bytes] | None = None
    ) -> None:
        self.cfg = cfg
        self.x = x
        self.ref_pid = ref_pid
        self.ts = x.t1_ns // 1_000_000
        self.dur = max(0, (x.t1_ns - x.t0_ns) // 1_000_000)
        self.dig = x.body_digest()
        self._actor: dict[str, Any] | None = None
        # Read like the SP reads it: content coding, charset/BOM, duplicate keys last-wins.
        self.req = decode_body(
            x.body,
            content_type=x.req_header(b"content-type"),
            content_encoding=x.req_header(b"content-encoding"),
            max_size=cfg.max_body,
        )
        self._resp: Decoded | None = None
        # What is wrong with the SP's answer as a whole, when something is (x.answer): then
        # nothing is taken from it as the result.
        self.answer: str | None = x.answer_note
        self.texts: dict[str, str] = {}  # eid -> the event's validated JSON form
        self.canon: dict[str, Canonical] = {}  # eid -> its Canonical form (compiled path)

    def resp(self) -> Any:
        """The SP's answer body as JSON (decoded like the request), or None."""
        if self._resp is None:
            if self.x.resp_decoded is not None:  # (decoded already: wants_sp_types)
                self._resp = self.x.resp_decoded
            elif len(self.x.resp_body) > _MAX_JSON:
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
                hook = self.cfg.actor
                got: Mapping[str, Any] | None
                if hook is default_actor:  # the credential's actor made once (x.credential)
                    got = _state_actor(self.x.scope) or self.x.credential()
                else:
                    got = hook(self.x.scope)
            except Exception:
                _log.exception("actor hook failed; recording the credential thumbprint")
                got = None
            self._actor = dict(got) if got else self.x.credential()
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
            norm = ip_text(ip)
            if norm is not None:
                out["ip"] = norm
        ua = self.x.req_header(b"user-agent")
        if ua:
            text = short_text(ua, 1024)
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
            if bulk[1] is not None and ident(bulk[1], 256):
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
        if op != "delete" and not _is_map(body):
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
            return None, short_text(str(exc), 200) or "request body not understood"

    def body_intent(self, op: str, rt: str) -> tuple[RequestIntent | None, str | None]:
        if op == "delete":
            return self.intent(op, rt, None)
        if not self.req.ok:
            return None, self.req.error
        return self.intent(op, rt, self.req.value)

    def event(self, **fields: Unpack[EventFields]) -> Event:
        """One validated event (:func:`validated_event_canonical`), its JSON form kept in
        ``texts`` and its canonical form, when made, in ``canon``."""
        ev, text, canon = validated_event_canonical(**fields)
        eid = str(ev["eid"])
        self.texts[eid] = text
        if canon is not None:
            self.canon[eid] = canon
        return ev

    def make(
        self,
        fields: dict[str, Any],
        intent: RequestIntent | None,
        unparsed: str | None = None,
        result: dict[str, Any] | None = None,
        answer: str | None = None,
        type_unknown: Sequence[str] = (),
    ) -> list[Event]:
        """The event(s) of one operation, with the resulting values the SP answered
        (``x.result``, on success) and what is wrong with its answer (``x.answer``: this
        operation's, else the exchange's). Never loses what is known about the request:

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
        if success and result:
            xs["result"] = result
        unanswered = _unanswered(fields, intent, result) if success else None
        if unanswered:
            xs["unanswered"] = unanswered
        answer = self.answer if answer is None else answer
        if answer is not None:
            xs["answer"] = answer
        if type_unknown:
            xs["type_unknown"] = list(type_unknown)
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
                return [self.event(**fields, **full, intent=True)]
            except EventFormatError as exc:
                last = exc
            try:
                return self._split(fields, intent, xs, success)
            except EventFormatError as exc:
                last = exc
                xs["uninterpretable"] = "request too large to record: " + (
                    short_text(str(exc), 160) or ""
                )
        extra: dict[str, Any] = {"x": xs or None}
        if success and "uninterpretable" in xs:
            extra["acts"] = [
                action(f"{action_prefix(fields['rt'])}.uninterpretable", self.cfg.ocsf)
            ]
        try:
            return [self.event(**fields, **extra, intent=True)]
        except EventFormatError as exc:
            last = exc
        # Last resort: drop everything the hooks or the request supplied beyond the minimum.
        minimal = dict(fields)
        minimal["actor"] = self.x.credential()
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
            self.event(
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
                self.event(
                    **fields, **part, acts=intent.acts if success else None, x=x, intent=True
                )
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

    def single(self) -> Recorded:
        x = self.x
        target = x.target(self.cfg)
        op = op_for_method(x.method)
        resp = self.resp()
        status = x.status
        rid = None if target.rid is None else rid_text(target.rid)
        if target.me and isinstance(resp, Mapping) and isinstance(resp.get("id"), str):
            rid = rid_text(resp["id"])
        elif target.me:
            rid = "Me"
        created_why = None
        type_unknown: tuple[str, ...] = ()
        if op == "create" and 200 <= status < 300 and rid is None:
            # the type checked only where the endpoint's is configured (an unknown
            # endpoint's name need not be its type's)
            rt = target.rt if target.kind == "resource" else ""
            got, created_why = self.answers.created_id(x.rel, x.resp_header(b"location"), resp, rt)
            rid = rid_text(got) if got else "-"  # "-": the SP's answer named no id
            if created_why is None:
                type_unknown = self.answers.types_unknown(resp, rt)
        why = _routing_failure(target, op, status, rid)
        if why is not None:
            return Recorded([], [self.access(why, x.method, x.rel, status)])
        outcome = _outcome(op, status)
        req: dict[str, Any] = {
            "m": x.method,
            "p": path_text(x.rel),
            "dig": self.dig,
            "len": len(x.body),
        }
        if_match = x.req_header(b"if-match")
        if if_match and ident(if_match, 1024):
            req["if_match"] = if_match
        etag = x.resp_header(b"etag")
        etag = etag if etag and ident(etag, 256) else None
        loc = x.resp_header(b"location")
        loc = loc if loc and ident(loc, 2048) else None
        pre = if_match if if_match and if_match.strip() != "*" and ident(if_match, 256) else None
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
        result = None
        if outcome == "success" and created_why is not None:
            # not this create's resource (faith21): neither its id nor its values taken
            self.answer = self.answer or created_why
        elif outcome == "success":
            result, self.answer = self.taken(op, target, rid, resp, body_obj)
        events = self.make(fields, intent, unparsed, result, type_unknown=type_unknown)
        return Recorded(events, [], self.texts, self.canon)

    def taken(
        self,
        op: str,
        target: _Target,
        rid: str | None,
        resp: Any,
        body: Any,
        twice: Collection[str] | None = None,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """What a success's answer ``resp`` (a single write's body, a bulk operation's
        ``response``) to a write of ``body`` (the request's resource) gives the event: the
        resulting values (``x.result``), or why the answer cannot be taken as the written
        resource's result (``x.answer``). ``twice``: the names the answer's decoding read
        twice that may be in ``resp`` (None: the whole answer's, ``dup_keys``)."""
        answer = self.answer or self._answer_check(op, target, rid, resp)
        if answer is not None:
            return None, answer
        if twice is None:
            twice = () if self._resp is None else self._resp.notes.get("dup_keys", ())
        if twice and op != "create":
            # RFC 7643 §2.1: names are case-insensitive, so an answer naming one twice in
            # two spellings cannot say which value the SP holds (the decoder kept the last):
            # not taken, what a PUT left out judged as for a 204 (review 37: a PUT answered
            # roles [a, b] and Roles [] had a and b named revoked). A create's: its values
            # not taken either (the request's stand), faith25's other below.
            return None, _NAMED_TWICE
        # the manager of a PUT's or PATCH's answer only (a create's refs say it), a
        # group's members of a PUT's only (what it left out: tlog.scim.effects)
        skip = op == "create" or (target.rt == "Group" and op != "replace")
        mgr_pid = None if skip else self.ref_pid
        cfg = self.cfg
        secret, digest = cfg.secret_lower, cfg.digest_lower
        trimmed = _trims_answer(self.x)
        result = (
            None
            if twice
            else _resulting_values(
                target.rt,
                resp,
                mgr_pid,
                trimmed=trimmed,
                hidden=cfg.hidden_lower,
                put=op == "replace",
            )
        )
        if op == "replace" and not trimmed:
            other = _resulting_other(resp, secret, digest, stated=body)
            if other is not None:  # one showing none of them says so ({})
                result = {**(result or {}), "other": other}
            elif _is_map(resp) and isinstance(resp.get("id"), str):
                # the answer holds the resource, but what it shows of these attributes is
                # more than the event holds (_RESULT_OTHER_BYTES), or in a form it cannot
                # hold: null says so, and the log takes none of the PUT's values as stored
                # (faith31; before, no "other" at all, and the request's values stood)
                result = {**(result or {}), "other": None}
            if (
                target.rt == "User"
                and _is_map(resp)
                and isinstance(resp.get("id"), str)
                and "username" not in cfg.hidden_lower
                and (result is None or "userName" not in result)
                and _is_map(body)
                and isinstance(get_ci(body, "username"), str)
            ):
                # the PUT stated a userName and the answer shows none (or none the event
                # holds): what the SP holds is not known from it (faith31; before, the
                # request's value stood as stored)
                result = {**(result or {}), "userName": None}
            if (
                target.rt == "User"
                and _is_map(resp)
                and isinstance(resp.get("id"), str)  # (the answer holds the resource)
                and (result is None or "active" not in result)
                and _is_map(body)
                and get_ci(body, "active") is not None
            ):
                # the PUT stated active and the answer leaves it out: whether the user is
                # active is not known from it (faith30; before, the request's value stood)
                result = {**(result or {}), "active": None}
        elif op == "create" and not trimmed:
            # only what it named and the SP stored otherwise (faith24)
            asked = _asked_units(body, resp, secret, twice)
            other = (
                None if asked is None else asked and _resulting_other(resp, secret, digest, asked)
            )
            if other:
                result = {**(result or {}), "other": other}
            elif other is None:
                # a create whose answer stored some otherwise than asked, in a form the event
                # cannot hold (a number JSON's canonical form cannot hold, more than
                # _RESULT_OTHER of them), or named one twice in two spellings (faith25):
                # null says so, so the log does not take the request's values as stored
                # (red team 26: the next PUT stating them, a real change on the SP, was
                # judged a noop)
                result = {**(result or {}), "other": None}
        return result, None

    def _answer_check(self, op: str, target: _Target, rid: str | None, resp: Any) -> str | None:
        """Why a success's answer cannot be taken as the written resource's result: it
        cannot be read, or it names another resource than the one written. None when it can
        (or there is none). A create's answer is held to its location by
        :meth:`Answers.created_id` before (then, if it is not the create's, not taken)."""
        decoded = self._resp
        if decoded is not None and decoded.error is not None and self.x.resp_body:
            return "not understood: " + (short_text(decoded.error, 160) or "unreadable")
        if op == "create" or target.me or rid is None or not _is_map(resp):
            return None
        got = resp.get("id")
        if isinstance(got, str) and got and rid_text(got) != rid:
            return "names another resource than the one written: not taken as its result"
        return None

    @functools.cached_property
    def answers(self) -> Answers:
        """What every create of the exchange is held to (:class:`Answers`), read once: the
        servers its location may name. The request's own (its ``Host``: an SP builds the
        location from it, and, with ``trust_forwarded``, ``X-Forwarded-Host``, which a proxy
        you run sets) and, where the SP's base is configured (``sp_base``; the proxy's
        upstream), that base's server instead of the one the ASGI server says it is
        (``scope["server"]``): the override where a reverse proxy rewrites the host, so the
        SP names a server the request never did. None known (no ``Host``, no ``server``):
        not checked. Before faith23 the server was not checked without ``sp_base``: a
        location naming another server gave the middleware's create that id."""
        cfg, x = self.cfg, self.x
        scheme = str(x.scope.get("scheme") or "http")
        got: list[Server | None] = []
        host = x.req_header(b"host")
        if host:
            got.append(_server(host, scheme))
        forwarded = x.req_header(b"x-forwarded-host") if cfg.trust_forwarded else None
        if forwarded:
            proto = (x.req_header(b"x-forwarded-proto") or scheme).split(",")[0].strip()
            got.append(_server(forwarded.split(",")[0], proto))
        if cfg.sp_base:
            got.append(cfg.sp_base_server)
        else:
            server = x.scope.get("server")
            if isinstance(server, (tuple, list)) and len(server) == 2 and server[0]:
                port = server[1] if isinstance(server[1], int) else None
                if port == _DEFAULT_PORTS.get(scheme.lower()):
                    port = None
                got.append((str(server[0]).rstrip(".").lower(), port))
        hosts = frozenset(h for h in got if h is not None)
        return Answers(hosts, cfg, x.sp_types, *_bases(cfg, x.scope, x.rel))

    @staticmethod
    def _xid(resp: Any, body: Any) -> str | None:
        for obj in (resp, body):
            if _is_map(obj):
                v = obj.get("externalId")
                if isinstance(v, str) and ident(v, 1024):
                    return v
        return None

    # bulk

    def bulk(self) -> Recorded:
        x = self.x
        if x.status in (401, 403):
            return Recorded([], [self.access("auth", x.method, x.rel, x.status)])
        req_obj = self.req.value
        ops = get_ci(req_obj, "operations") if isinstance(req_obj, Mapping) else None
        if not isinstance(ops, list) or not all(isinstance(o, Mapping) for o in ops):
            return Recorded([], [self.access("not a bulk request", x.method, x.rel, x.status)])
        resp = self.resp()
        resp_ops = get_ci(resp, "operations") if isinstance(resp, Mapping) else None
        unknown = 200 <= x.status < 300 and not isinstance(resp_ops, list)
        if unknown and self.answer is None:
            # No BulkResponse to read: which operations ran is unknown (never "stopped
            # before this operation", which says that nothing was applied).
            error = self._resp.error if self._resp is not None else None
            self.answer = "not understood: " + (
                (short_text(error, 160) or "unreadable") if error else "no BulkResponse Operations"
            )
        if not (200 <= x.status < 300) or not isinstance(resp_ops, list):
            resp_ops = []
        results = [r for r in resp_ops if isinstance(r, Mapping)]
        made: dict[int, tuple[Mapping[str, Any], str | None]] = {}  # _created's, read once
        matched, stray, unpaired = _align(ops, results, self.answers, made)
        missing = any(r is None and i not in unpaired for i, r in enumerate(matched))
        if not unknown and not stray and missing and not _stopped(req_obj, results):
            # Operations without a result, and the SP had no cause to stop (RFC 7644
            # §3.7.3: only failOnErrors errors end a bulk request early): not understood
            unknown = True
            if self.answer is None:
                self.answer = "not understood: operations without a result, no failOnErrors stop"
        if stray and not unknown:
            # Results naming no operation asked (or one twice): the answer is not understood,
            # so an operation left without a result may have run (never "skipped").
            unknown = True
            if self.answer is None:
                self.answer = f"not understood: {stray} results name no operation asked"
        # bulkId -> id, from the POSTs that succeeded whose location names their resource
        created = _created(ops, matched, self.answers, made)
        out = Recorded([], [], self.texts, self.canon)
        why = _UNREAD if unknown else None
        twice_in = self._resp.twice_in if self._resp is not None else None
        for seq in _run_order(ops):  # creates before the operations naming their bulkId
            self._bulk_op(
                seq,
                ops[seq],
                matched[seq],
                resp if x.status >= 300 else None,
                created,
                out,
                _UNPAIRED if seq in unpaired else why,
                _twice_in_result(twice_in, resp, matched[seq]) if twice_in else (),
            )
        return out

    def _bulk_op(
        self,
        seq: int,
        op_req: Mapping[str, Any],
        op_resp: Mapping[str, Any] | None,
        http_error: Any,
        created: Mapping[str, str],
        out: Recorded,
        unknown: str | None = None,
        twice: Collection[str] = (),
    ) -> None:
        """The event(s) of one operation into ``out``; ``unknown``: why whether it ran is
        not known, when it has no result (the answer not understood, or its result not
        told among the others); ``twice``: the names the answer's decoding read twice that
        may be in its result (:func:`_twice_in_result`)."""
        x = self.x
        method = _op_method(op_req)
        path = get_ci(op_req, "path")
        path = path if isinstance(path, str) else ""
        if method not in WRITE_METHODS:
            out.access.append(
                self.access("bulk operation is not a write", method or "?", path, x.status)
            )
            return
        op = op_for_method(method)
        bulk_path = without_dot_segments(path, encoded=True)
        target = route(relative(bulk_path, self.cfg.base_path), method, self.cfg, encoded=True)
        bulk_id = get_ci(op_req, "bulkid")
        bulk_id = bulk_id if isinstance(bulk_id, str) else None
        version = get_ci(op_req, "version")
        version = version if isinstance(version, str) and ident(version, 256) else None
        rid = target.rid
        if rid is not None and rid.startswith("bulkId:"):
            rid = created.get(rid.removeprefix("bulkId:"), rid)
        loc = rversion = located = None
        type_unknown: tuple[str, ...] = ()
        resp_err: Any = None
        if op_resp is not None:
            status = _status(op_resp.get("status"))
            loc = op_resp.get("location") if isinstance(op_resp.get("location"), str) else None
            rv = op_resp.get("version")
            rversion = rv if isinstance(rv, str) and ident(rv, 256) else None
            resp_err = op_resp.get("response")
            if op == "create" and 200 <= status < 300:
                # a location not this create's resource: its id is not known (faith20;
                # before, the location's last segment was taken, whatever it named)
                rt = target.rt if target.kind == "resource" else ""
                rid, located = self.answers.created_id(path, loc, resp_err, rt)
                rid = rid_text(rid) if rid else "-"
                if located is None:
                    type_unknown = self.answers.types_unknown(resp_err, rt)
            outcome = _outcome(op, status)
            err = None if outcome == "success" else _error(status, resp_err)
            if status == 0:  # no status to read: whether it was applied is not known
                status, outcome = x.status, "warning"
                err = {"code": "unknown", "reason": "the result's status was not understood"}
            elif outcome == "success" and _says_error(resp_err):
                # A 2xx whose response is a SCIM error: the result contradicts itself
                outcome = "warning"
                err = {
                    "code": "unknown",
                    "reason": "the result's status says success, its response an error",
                }
        elif x.status >= 300:
            status = x.status
            outcome = "failure"
            err = _error(status, http_error)
        elif unknown:
            status = x.status
            outcome = "warning"
            err = {"code": "unknown", "reason": unknown}
        else:
            status = x.status
            outcome = "skipped"
            err = {
                "code": "not_processed",
                "reason": "the bulk request stopped (failOnErrors) before this operation",
            }
        if outcome == "success" and rid is not None and rid.startswith("bulkId:"):
            # Its create named no resource (no Location, or not paired): the write's id is
            # the request's own "bulkId:x", which every request may use for another
            # resource; judged as a success, one user's state would be another's (red
            # team 20: the second request's deactivation read as user.noop).
            outcome = "warning"
            err = {"code": "unknown", "reason": _UNRESOLVED}
        rid_v = None if rid is None else rid_text(rid)
        why = _routing_failure(target, op, status, rid_v)
        if why is not None and op_resp is not None:
            out.access.append(self.access(why, method, path, status))
            return
        if rid_v is None and op != "create":
            out.access.append(self.access("routing", method, path, status))
            return
        if op == "create" and outcome != "success":
            rid_v = None
        data = get_ci(op_req, "data")
        req: dict[str, Any] = {
            "m": method,
            "p": path_text(path),
            "dig": self.dig,
            "len": len(x.body),
        }
        if version:
            req["if_match"] = version
        loc_v = loc if loc and ident(loc, 2048) else None
        xid = data.get("externalId") if isinstance(data, Mapping) else None
        fields = {
            **self.common(),
            "op": op,
            "rt": target.rt or "unknown",
            "rid": rid_v,
            "xid": xid if isinstance(xid, str) and ident(xid, 1024) else None,
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
        result, answer = None, located
        if outcome == "success" and isinstance(resp_err, Mapping) and located is None:
            # RFC 7644 §3.7.3: a result may carry the resource in "response"; taken as a
            # single write's answer is (neither scim2-server nor SCIMMY sends one)
            result, answer = self.taken(op, target, rid_v, resp_err, data, twice)
        out.events.extend(self.make(fields, intent, unparsed, result, answer, type_unknown))


def _twice_in_result(
    twice_in: Mapping[int, Collection[str]], resp: Any, result: Mapping[str, Any] | None
) -> Collection[str]:
    """The names a BulkResponse's decoding read twice (``twice_in``: by the id of the
    object holding them, :attr:`client.adapters.body.Decoded.twice_in`) that bear on one
    operation's ``result``: those of any object within it, or, where the BulkResponse
    itself names ``Operations`` twice (which results are the SP's is then not known), all
    of them. Empty: the result was read unambiguously, and its answer is taken whatever
    other results or the BulkResponse's other members named twice (faith26; before, one
    name twice anywhere in the answer left every operation's answer untaken). Walked only
    when the answer named one twice."""
    if "operations" in twice_in.get(id(resp), ()):
        return sorted({n for names in twice_in.values() for n in names})
    found: set[str] = set()
    todo: list[Any] = [result]
    while todo:
        v = todo.pop()
        if isinstance(v, Mapping):
            found.update(twice_in.get(id(v), ()))
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return sorted(found)


def _resulting_values(
    rt: str,
    resp: Any,
    ref_pid: Callable[[str, str], bytes] | None = None,
    *,
    trimmed: bool = False,
    hidden: Collection[str] = (),
    put: bool = False,
) -> dict[str, Any] | None:
    """The security-relevant values of a User the SP returned after the write (``x.result``):
    ``active``, the ``value`` of each role and entitlement, and the manager, as the base64
    of its pseudonym (``ref_pid``, as the request's references are: the log compares it with
    the state's) or ``null`` when the answer holds none: the SP's own word on whether a PUT
    that left the manager out kept or cleared it. The manager is not recorded without a
    ``ref_pid``, when its pseudonym cannot be had, or when the answer may leave attributes
    out (``trimmed``: ``attributes``/``excludedAttributes`` asked): absent, the log keeps
    its own judgement (the builder passes no ``ref_pid`` for a create, whose references
    already say it). Of a PUT's answer (``put``), ``userName`` and ``emails`` (null: none)
    too, as the request's ``mods`` would carry them, unless ``hidden`` (the secret and
    digest attributes, lower case) names them or the answer is trimmed; and of a Group,
    its ``members`` (:func:`_resulting_members`, given a ``ref_pid``): what a PUT left out
    is judged from them (faith19). The
    log's state takes these as the truth (tlog.scim.effects). None when the answer holds
    no resource."""
    if not _is_map(resp) or not isinstance(resp.get("id"), str):
        return None
    if rt == "Group":
        members = None if ref_pid is None or trimmed else _resulting_members(resp, ref_pid)
        return None if members is None else {"members": members}
    if rt != "User":
        return None
    out: dict[str, Any] = {}
    if any(isinstance(k, str) and k.lower() == "active" for k in resp):
        # read by the request's rule (as_bool: a boolean, or Entra's "True"/"False");
        # any other value (null, "no", 0) is recorded as null: the answer holds no
        # boolean, so whether the user is active is not known (faith22)
        out["active"] = as_bool(get_ci(resp, "active"))
    for name in ("roles", "entitlements"):
        items = get_ci(resp, name)
        if items is None and put and not trimmed:
            out[name] = []  # SCIM leaves an empty attribute out: a PUT's whole answer holds none
        elif isinstance(items, list) and len(items) <= 256:
            vals = [get_ci(i, "value") if isinstance(i, Mapping) else i for i in items]
            if all(isinstance(v, str) and 0 < len(v) <= 256 for v in vals):
                out[name] = vals
    if put and not trimmed:
        name = get_ci(resp, "username")
        if "username" not in hidden and isinstance(name, str) and len(name) <= 1024:
            out["userName"] = name
        emails = get_ci(resp, "emails")
        if "emails" not in hidden and (emails is None or isinstance(emails, list)):
            out["emails"] = emails or None  # SCIM leaves an empty attribute out
    # Keep the event small; the state then follows the intent. ({"active": ...} alone is
    # far below the bound: only lists need measuring.)
    if {"roles", "entitlements", "emails"} & set(out) and len(json.dumps(out)) > 4096:
        # (an empty set or none stays: it is small, and the SP's word)
        out = {k: v for k, v in out.items() if k in ("active", "userName") or not v}
    if ref_pid is not None:
        manager = _resulting_manager(resp, ref_pid, trimmed)
        if manager is not _UNKNOWN:
            out["manager"] = manager
    return out or None


_RESULT_OTHER = 64  # a create answer's other attributes recorded as digests: at most so many
# A PUT answer's: at most so many bytes of their paths and digests (64 of the longest
# paths, 256 bytes, fit; short names, some hundreds). Past it, x.result.other is null (cut,
# not known), never a part of them (faith31; before, past 64 none was recorded and the
# log took the request's values as stored).
_RESULT_OTHER_BYTES = 64 * (256 + 32 + 8)
# What x.result.other leaves out: what a PUT never states, and what the log keeps otherwise
# than as a digest (values, references, nothing: tlog.scim.effects).
_NOT_OTHER = frozenset(
    "schemas id meta active username emails roles entitlements members manager password "
    "groups".split()
)


def _resulting_other(
    resp: Any,
    secret: Collection[str],
    digest: Collection[str],
    asked: Mapping[str, Any] | None = None,
    stated: Any = None,
) -> dict[str, str | None] | None:
    """Of a PUT's answer, every attribute the log's state keeps only as a digest (any but
    the security attributes, :data:`_NOT_OTHER`; never a secret one), by its path as a PUT
    would state it (an extension's as ``urn:...:User:name``), mapped to the digest the
    state keeps (:func:`client.scim.actions.kept_digest`): what became of one the PUT left
    out is then known (faith20; before, "changed, not known" whatever the SP did). None
    when the answer holds no resource, or more of them than the event holds (a create's:
    more than :data:`_RESULT_OTHER`; a PUT's: paths and digests over
    :data:`_RESULT_OTHER_BYTES`; the builder then records ``other: null``).

    Of a create's answer (``asked``: the request's attributes by lower-case path,
    :func:`_asked_units`), only those the create named and the SP stored otherwise than
    asked: the log takes the request's digest of the rest, so an answer storing what was
    asked records nothing, and the digest is computed only where the values differ
    (faith24; before, a create's answer recorded none, and the first PUT leaving out one
    the SP had reshaped named it changed).

    ``null`` for one the answer holds as JSON null (RFC 7643 §2.5: unassigned), and, of a
    create's, for one it named that the answer leaves out (:class:`_Omitted`: the SP did
    not store it, or never returns it; either way not as asked): the SP holds none, or what
    it holds is not shown, and the log keeps no digest of it (faith26; before, such an
    answer recorded nothing, and the log took the request's value as stored). Of a PUT's
    answer (``stated``: its body), a null only for one the PUT states (one it leaves out
    the log judges alike absent or null, and an SP answering null for each unset one would
    pass the bound), whether the answer holds it as null or leaves it out (faith30: before,
    one left out was not recorded, and the log took the PUT's value as stored)."""
    if not isinstance(resp, Mapping) or not isinstance(resp.get("id"), str):
        return None
    out: dict[str, str | None] = {}
    size = 0  # a PUT's: the bytes of the paths and digests (_RESULT_OTHER_BYTES)
    stated_low: set[str] | None = None
    units = _expand_units(resp)
    if asked:
        units += [(v.path, None) for v in asked.values() if isinstance(v, _Omitted)]
    for path, value in units:
        low = path.lower()
        if asked is not None and (low not in asked or same_json(asked[low], value)):
            continue
        if not _kept_as_digest(low, secret) or len(path.encode("utf-8")) > 256:
            continue
        if value is None and asked is None:
            if stated_low is None:  # made once, at the first null: a rare answer
                stated_low = (
                    {p.lower() for p, _ in _expand_units(stated)}
                    if isinstance(stated, Mapping)
                    else set()
                )
            if low not in stated_low:
                continue
        if _CONTROL.search(path):
            return None  # no event may hold the name (red team 21: the event was cut short)
        try:
            out[path] = None if value is None else kept_digest(path, value, digest)
        except EventFormatError:
            # a value JSON's canonical form cannot hold (a number past 2**53 or 1e400, a
            # lone surrogate): not understood, as in a request; before red team 21 the
            # PUT's event could not be built, its write left unrecorded
            return None
        size += len(path.encode("utf-8")) + 40
        if (len(out) > _RESULT_OTHER) if asked is not None else (size > _RESULT_OTHER_BYTES):
            return None
    if asked is None and _is_map(stated):
        # a PUT's answer holding the resource without one the PUT stated (faith30): the SP
        # did not store it, or does not return it; either way the answer does not show it
        # as stated, so it is recorded as null (not known; the log keeps no digest), not
        # left for the log to take the request's value as stored
        shown = {p.lower() for p, _ in units}
        for path, value in _expand_units(stated):
            low = path.lower()
            if value is None or value == [] or value == {} or low in shown:
                continue  # (null or empty: unassigned, RFC 7643 §2.5, as the answer says)
            if not _kept_as_digest(low, secret) or len(path.encode("utf-8")) > 256:
                continue
            if _CONTROL.search(path):
                return None
            out[path] = None
            shown.add(low)
            size += len(path.encode("utf-8")) + 8
            if size > _RESULT_OTHER_BYTES:
                return None
    return out


class _Omitted(NamedTuple):
    """An attribute a create named (at ``path``, the request's spelling) that its answer
    leaves out (:func:`_asked_units`)."""

    path: str


def _kept_as_digest(low: str, secret: Collection[str]) -> bool:
    """Whether the attribute at ``low`` (a lower-case path, :func:`_expand_units`) is one
    the log's state keeps only as a digest (not :data:`_NOT_OTHER`) and no secret one."""
    last = low.rpartition(":")[2]
    return not (last in _NOT_OTHER or last in secret or low in secret)


_ABSENT = object()


def _shown_at(resp: Mapping[str, Any], path: str) -> Any:
    """The answer's value at ``path`` as :func:`_expand_units` names it (an extension's
    attribute as ``urn:...:name``), its names read as SCIM's are, case-insensitively (RFC
    7643 §2.1: ``username`` for ``userName``, an extension's key in capitals; before
    faith25 such an answer was taken as not holding it); :data:`_ABSENT`: none. (The
    caller looks up the spelling asked first; this reads the rest. The decoded answer
    holds each name once: two spellings of one are read last-wins and noted,
    body.decode_body's ``dup_keys``, :func:`_asked_units`.)"""
    got = _named(resp, path)
    if got is _ABSENT and path[:4].lower() == "urn:":
        ext, _, sub = path.rpartition(":")
        within = _named(resp, ext)
        got = _named(within, sub) if isinstance(within, Mapping) else _ABSENT
    return got


def _named(obj: Mapping[str, Any], name: str) -> Any:
    got = obj.get(name, _ABSENT)
    if got is _ABSENT:
        low = name.lower()
        for k, v in obj.items():
            if isinstance(k, str) and k.lower() == low:
                return v
    return got


def _asked_units(
    body: Any, resp: Any, secret: Collection[str], twice: Collection[str] = ()
) -> dict[str, Any] | None:
    """A create's (``body``) attributes the log keeps only as digests that its answer
    (``resp``) holds otherwise (:func:`_shown_at`), by lower-case path, for
    :func:`_resulting_other` to record (empty: none; the answer then is not read: a
    faithful SP's create costs a comparison per attribute, no digest). One the answer does
    not hold is an :class:`_Omitted` (faith26: recorded ``null``, not known; before, left
    out, the request's digest taken as stored). None when the
    answer named one of them twice in two spellings (``twice``: the names its decoding
    noted so, ``dup_keys``; at their bound, any; or a sub-attribute of one, review 37):
    which the SP stored is not known (``x.result.other`` null, as for an answer the event
    cannot hold), never the one the decoding kept (faith25)."""
    if not isinstance(body, Mapping) or not isinstance(resp, Mapping):
        return {}
    out: dict[str, Any] = {}
    for path, value in _expand_units(body):
        low = path.lower()
        if _kept_as_digest(low, secret):
            if twice and _named_twice(low, twice):
                return None
            got = resp.get(path, _ABSENT)
            if got is _ABSENT:
                got = _shown_at(resp, path)
            if got is _ABSENT:
                if value is not None:  # a null asked is none held: the same
                    out[low] = _Omitted(path)
                continue
            if twice and _holds_noted(got, twice):
                return None  # a sub-attribute named twice (review 37): read last-wins
            if not same_json(value, got):
                out[low] = value
    return out


def _holds_noted(value: Any, twice: Collection[str]) -> bool:
    """Whether an answer's ``value`` names, at any depth, one of the names its decoding
    noted in two spellings (``twice``, :func:`_named_twice`): a complex attribute's
    sub-attribute named twice (``name.givenName`` and ``name.GIVENNAME``) was read
    last-wins, so what the SP stored is not known (review 37)."""
    noted = {t.lower() for t in twice}
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, Mapping):
            if any(isinstance(k, str) and k[:64].lower() in noted for k in v):
                return True
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False


def _named_twice(low: str, twice: Collection[str]) -> bool:
    """Whether an attribute at ``low`` (a lower-case path, an extension's as
    ``urn:...:name``) may be one of the names an answer's decoding noted in two spellings
    (``twice``, each cut at 64 characters; all of them: the list is not at its bound)."""
    if len(twice) >= MAX_FLAGGED_KEYS:
        return True
    noted = {t.lower() for t in twice}
    names = [low]
    if low.startswith("urn:"):
        ext, _, sub = low.rpartition(":")
        names += [ext, sub]
    return any(n[:64] in noted for n in names)


def _expand_units(resp: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(path, value) of each attribute of a resource as a PUT body states them (an
    extension schema's sub-object as ``urn:...:name`` paths), as the request's ``mods`` do
    (:func:`client.scim.actions.parse_request`)."""
    out: list[tuple[str, Any]] = []
    for k, v in resp.items():
        if not isinstance(k, str):
            continue
        if k.lower().startswith("urn:") and isinstance(v, Mapping):
            out.extend((f"{k}:{sub}", sv) for sub, sv in v.items() if isinstance(sub, str))
        else:
            out.append((k, v))
    return out


_RESULT_MEMBERS = 256  # a Group answer's members recorded in x.result: at most so many


def _resulting_members(
    resp: Mapping[str, Any], ref_pid: Callable[[str, str], bytes]
) -> list[str] | None:
    """A Group answer's members for ``x.result``: the base64 of each one's pseudonym (as the
    request's references: the member's ``type``, else User), ``[]`` when the answer holds
    none (SCIM leaves an empty attribute out); None (not to record) when one is not
    understood or its pseudonym cannot be had, or there are more than
    :data:`_RESULT_MEMBERS`."""
    items = get_ci(resp, "members")
    if items is None:
        return []
    if not isinstance(items, list) or len(items) > _RESULT_MEMBERS:
        return None
    out = []
    for item in items:
        ref = get_ci(item, "value") if isinstance(item, Mapping) else None
        kind = get_ci(item, "type") if isinstance(item, Mapping) else None
        if not isinstance(ref, str) or not ref:
            return None
        try:
            pid = ref_pid(kind if isinstance(kind, str) and kind else "User", ref)
        except EventFormatError:
            return None
        if type(pid) is not bytes or len(pid) != 16:
            return None
        out.append(base64.b64encode(pid).decode("ascii"))
    return sorted(set(out))


_ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user"  # lower: get_ci
_UNKNOWN = object()


def _resulting_manager(
    resp: Mapping[str, Any], ref_pid: Callable[[str, str], bytes], trimmed: bool
) -> object:
    """The answer's manager for ``x.result``: the base64 of its pseudonym, None (the answer
    holds none: SCIM leaves an unassigned attribute out), or ``_UNKNOWN`` (not to record)."""
    ext = get_ci(resp, _ENTERPRISE_USER)
    manager = get_ci(ext, "manager") if isinstance(ext, Mapping) else None
    if manager is None:
        return _UNKNOWN if trimmed else None
    ref = get_ci(manager, "value") if isinstance(manager, Mapping) else None
    if not isinstance(ref, str) or not ref:
        return _UNKNOWN  # an answer not understood: judged as without one
    try:
        pid = ref_pid("User", ref)
    except EventFormatError:
        return _UNKNOWN  # the pseudonym unavailable: not recorded
    if type(pid) is not bytes or len(pid) != 16:
        return _UNKNOWN
    return base64.b64encode(pid).decode("ascii")


def _trims_answer(x: Exchange) -> bool:
    """Whether the request asked the SP to return only some attributes (RFC 7644 §3.9:
    ``attributes``/``excludedAttributes`` apply to a write's answer too), so that one
    left out of the answer may still be set."""
    qs = x.scope.get("query_string", b"")
    return isinstance(qs, bytes | bytearray) and b"attributes" in bytes(qs).lower()


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


def _stopped(req_obj: Any, results: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the SP may have stopped the bulk request early: it asked ``failOnErrors``
    (a positive integer) and the results hold at least that many errors."""
    limit = get_ci(req_obj, "failonerrors") if isinstance(req_obj, Mapping) else None
    if type(limit) is not int or limit < 1:
        return False
    return sum(_status(r.get("status")) >= 400 for r in results) >= limit


_UNRESOLVED = (
    "the resource it wrote is not known: the create of the bulkId it names answered no "
    "location naming the created resource"
)
_UNREAD = "the bulk answer was not understood: whether this operation was applied is unknown"
_UNPAIRED = (
    "the bulk answer's results name neither bulkId nor location and do not line up with the "
    "operations (their number or methods): whether and how this operation was applied is unknown"
)


def _run_order(ops: Sequence[Mapping[str, Any]]) -> list[int]:
    """The operations' indices in an order an SP can have run them in: request order, but
    each POST before the first operation that names its ``bulkId:`` (in the path or the
    data; the SP must create it first to resolve the reference, RFC 7644 §3.7.2), so a write
    of a resource created in the same request is recorded after its create and the log
    judges it against that. A reference cycle (which the SP refuses) keeps request order."""
    creates: dict[str, int] = {}
    for i, op in enumerate(ops):
        bid = get_ci(op, "bulkid")
        if isinstance(bid, str) and bid and _op_method(op) == "POST":
            creates.setdefault(bid, i)
    if not creates:
        return list(range(len(ops)))
    needs = [
        [creates[b] for b in _bulk_refs(op) if creates.get(b, i) != i] for i, op in enumerate(ops)
    ]
    order: list[int] = []
    state = [0] * len(ops)  # 0 not reached, 1 waiting for what it needs, 2 placed
    for first in range(len(ops)):
        if state[first]:
            continue
        state[first] = 1
        stack = [(first, iter(needs[first]))]
        while stack:
            i, todo = stack[-1]
            j = next(todo, None)
            if j is None:
                stack.pop()
                state[i] = 2
                order.append(i)
            elif not state[j]:
                state[j] = 1
                stack.append((j, iter(needs[j])))
    return order


def _bulk_refs(op: Mapping[str, Any]) -> list[str]:
    """The bulkIds an operation names (``bulkId:<id>`` in its path or data), each once."""
    found: dict[str, None] = {}
    todo: list[Any] = [get_ci(op, "path"), get_ci(op, "data")]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            for part in v.split("/"):
                if part.startswith("bulkId:"):
                    found[part.removeprefix("bulkId:")] = None
        elif isinstance(v, Mapping):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return list(found)


def _op_method(op: Mapping[str, Any]) -> str:
    return str(get_ci(op, "method") or "").upper()


def _res_method(res: Mapping[str, Any]) -> str:
    return str(res.get("method") or "").upper()


def _align(
    ops: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    answers: Answers | None = None,
    made: dict[int, tuple[Mapping[str, Any], str | None]] | None = None,
) -> tuple[list[Mapping[str, Any] | None], int, set[int]]:
    """Pair each bulk operation with its result; also the number of results left unpaired
    (an answer naming operations not asked, or one twice: not understood, :meth:`bulk`),
    and the operations whose result cannot be told among the others (``unknown``).

    An SP may process the operations in another order than the request's (RFC 7644 lets
    it, to resolve ``bulkId`` references) and list the results in that order, and may run
    an operation a reference depends on before the operations ahead of it (scim2-server
    does, and with ``failOnErrors`` lists it although those were not run). So a result is
    first paired with the first unpaired operation it names (:func:`_name`: a POST's
    bulkId, then another method's resource type and id, a ``bulkId:`` id as written or as
    the creates paired first resolve it; by a map, in linear time: an answer may list tens
    of thousands). The results left (naming none) are paired in order when their number
    and methods line up with the operations left; otherwise only a result that can be one
    operation's alone (and is that operation's only candidate) is paired, and an operation
    one of the remaining results may belong to is ``unknown``, never guessed. ``made``:
    :func:`_created`'s reading of each create's result, kept for the caller's."""
    out: list[Mapping[str, Any] | None] = [None] * len(ops)
    methods = [_op_method(op) for op in ops]
    waiting: dict[tuple[str, str, str], deque[int]] = {}
    refs: list[tuple[int, tuple[str, str, str]]] = []  # ops naming a bulkId: as their id
    for i, op in enumerate(ops):
        bid, path = get_ci(op, "bulkid"), get_ci(op, "path")
        key = _name(methods[i], bid, path, True) or _name(methods[i], bid, path, True, ref=True)
        if key is not None:
            waiting.setdefault(key, deque()).append(i)
            if key[2].startswith("bulkId:"):
                refs.append((i, key))
    unnamed: set[int] = set()  # id() of the results naming no operation
    for creates in (True, False):  # the creates first: they resolve the bulkId: ids
        for res in results:
            if (_res_method(res) == "POST") != creates:
                continue
            m, bid, loc = res.get("method"), res.get("bulkId"), res.get("location")
            key = _name(m, bid, loc, False) or _name(m, bid, loc, False, ref=True)
            queue = waiting.get(key) if key is not None else None
            while queue and out[queue[0]] is not None:  # paired by its other name
                queue.popleft()
            if queue:
                out[queue.popleft()] = res
            else:
                unnamed.add(id(res))
        if creates and refs:
            ids = _created(ops, out, answers, made)
            touched: set[tuple[str, str, str]] = set()
            for i, (m, rt, ref) in refs:
                got = ids.get(ref.removeprefix("bulkId:"))
                if got is not None:
                    waiting.setdefault((m, rt, got), deque()).append(i)
                    touched.add((m, rt, got))
            for key in touched:  # the first operation naming it first
                waiting[key] = deque(sorted(waiting[key]))
    rest = [r for r in results if id(r) in unnamed]
    if not rest:
        return out, 0, set()
    free = [i for i in range(len(ops)) if out[i] is None]
    if len(rest) == len(free) and all(
        methods[i] == _res_method(r) and _compatible(ops[i], methods[i], r)
        for i, r in zip(free, rest, strict=True)
    ):
        for i, r in zip(free, rest, strict=True):  # as many, lined up in order
            out[i] = r
        return out, 0, set()
    # Which operations left each result may be (:func:`_compatible`), by groups, in linear
    # time: the method, the bulkId, and whether the path names the resource (then only a
    # result without a location can be its: one naming it would have been paired above).
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i in free:
        named = methods[i] != "POST" and _name(methods[i], None, get_ci(ops[i], "path"), True)
        groups.setdefault((methods[i], _bid(get_ci(ops[i], "bulkid")), bool(named)), []).append(i)
    places: list[list[tuple[str, str, bool]]] = []
    for r in rest:
        m, b = _res_method(r), _bid(r.get("bulkId"))
        keys = [(m, b, False)]
        if m != "POST" and not isinstance(r.get("location"), str):
            keys.append((m, b, True))
        places.append([k for k in keys if k in groups])
    claims = collections.Counter(k for keys in places for k in keys)  # results each group may hold
    stray, unsure = 0, set()
    for r, keys in zip(rest, places, strict=True):
        if not keys:
            stray += 1
        elif len(keys) == 1 and len(groups[keys[0]]) == 1 and claims[keys[0]] == 1:
            out[groups[keys[0]][0]] = r  # one operation alone can be its, and it only this
        else:
            unsure.update(keys)
    return out, stray, {i for k in unsure for i in groups[k]}


def _bid(value: Any) -> str:
    """A bulkId as :func:`_compatible` compares it: none (or empty) as ``""``."""
    if not value:
        return ""
    return value if isinstance(value, str) else "\0" + repr(value)


def _created(
    ops: Sequence[Mapping[str, Any]],
    matched: Sequence[Mapping[str, Any] | None],
    answers: Answers | None = None,
    made: dict[int, tuple[Mapping[str, Any], str | None]] | None = None,
) -> dict[str, str]:
    """bulkId -> the id the SP created for it (:meth:`Answers.created_id` of the POST's
    result: its ``location``, its ``response``'s ``id``, ``meta`` and ``schemas``), from the
    POSTs paired with a result whose answer names the POST's resource. ``made``: each
    operation's result and the id read of it, kept between calls (:func:`_align` reads the
    creates' before pairing the rest, :meth:`Builder.bulk` all of them after: before faith26
    each create's result was read twice, its location parsed and checked twice)."""
    answers = answers or _NO_ANSWERS
    created: dict[str, str] = {}
    for i, (op_req, op_resp) in enumerate(zip(ops, matched, strict=True)):
        if op_resp is None or _op_method(op_req) != "POST":
            continue
        bid = get_ci(op_req, "bulkid")
        path = get_ci(op_req, "path")
        if isinstance(bid, str) and isinstance(path, str):
            seen = made.get(i) if made is not None else None
            if seen is not None and seen[0] is op_resp:
                got = seen[1]
            else:
                got = answers.result_id(path, op_resp)[0]
                if made is not None:
                    made[i] = (op_resp, got)
            if got:
                created[bid] = got
    return created


_LOCATION_ELSEWHERE = (
    "its location names another resource type or server than the create's, or another base "
    "path: the created id is not known"
)


def _unanswered(
    fields: Mapping[str, Any], intent: RequestIntent | None, result: Mapping[str, Any] | None
) -> list[str] | None:
    """What a PUT left out that the log keeps as values or references and the SP's answer
    does not show (``x.result``: a 204, a trimmed answer, one too large to record, an
    answer not taken, a manager whose pseudonym could not be had): a Group's ``members``, a
    User's ``roles``, ``entitlements`` and ``manager``. RFC 7644 §3.5.1 lets the SP clear
    them, and a merging SP keeps them, so the log judges them not known from it
    (``x.unanswered``: members since faith20, the rest since stop 37; before, a User PUT's
    left-out roles were named revoked and its manager removed whatever the SP kept). An
    event without the mark (an adapter from before it) is judged as before: cleared.
    None: nothing."""
    if fields["op"] != "replace" or intent is None:
        return None
    prefix = action_prefix(fields["rt"])
    keys = _SET_KEYS.get(prefix)
    if keys is None:
        return None
    # the core schema's URN before a name, as the log reads it (tlog.scim.effects)
    named = {m["attr"].lower().rpartition(":")[2] for m in intent.mods or ()}
    named.update(r.get("attr", "members") for r in intent.refs or ())
    out = [k for k in keys if k not in named and not (result and k in result)]
    return out or None


_SET_KEYS = {"group": ("members",), "user": ("roles", "entitlements", "manager")}


_NAMED_TWICE = (
    "the answer names an attribute twice in two spellings: which value the service "
    "provider holds is not known, so its values are not taken"
)


_IDS_DISAGREE = (
    "its id and its Location (or meta.location) name different resources: the created id "
    "is not known"
)
_DOT_ID = "its id is a dot segment, which names no resource: the created id is not known"
_TYPE_ELSEWHERE = (
    "its answer names another resource type than the create's: the created id is not known"
)
_CORE = "urn:ietf:params:scim:schemas:core:2.0:"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Server = tuple[str, int | None]  # a host name (lower case) and its port (None: the default)


@dataclass(frozen=True)
class Answers:
    """What a create's answer is held to (:func:`_created_id`), the same for every create of
    an exchange (:attr:`Builder.answers`): the servers its locations may name (``hosts``,
    :func:`_server`; empty: not checked), the configuration that gives a create's endpoint
    its type (``cfg``; None: no type checked) and what the SP says of its resource types
    (``sp``, its ``/ResourceTypes`` as the middleware read it; None: not known; the types
    an extension schema belongs to, :func:`_answer_type`)."""

    hosts: frozenset[Server] = frozenset()
    cfg: AuditConfig | None = None
    sp: SpTypes | None = None
    bases: frozenset[Base] = frozenset()
    at: str = "/"

    def created_id(
        self, path: str, loc: str | None, body: Any, rt: str | None = None
    ) -> tuple[str | None, str | None]:
        """The id a create of ``path`` was answered with, or None and why it is not known:
        ``loc`` (a single create's ``Location`` header, a bulk result's ``location``) and
        ``body`` (a single create's answer, a bulk result's ``response``: RFC 7644 §3.7.3
        lets it carry the created resource) are held to one rule, :func:`_created_id`, with
        the body's ``meta.location`` as another location. ``rt``: the endpoint's type, where
        the caller routed it already (``""``: none known); else routed from ``path``."""
        meta = get_ci(body, "meta") if _is_map(body) else None
        mloc = get_ci(meta, "location") if _is_map(meta) else None
        if rt is None:
            rt = ""
            if self.cfg is not None:
                t = route(relative(path, self.cfg.base_path), "POST", self.cfg)
                rt = t.rt if t.kind == "resource" else ""
        locs = [loc, mloc if isinstance(mloc, str) else None]
        return _created_id(path, self, locs, body, rt)

    def types_unknown(self, body: Any, rt: str) -> tuple[str, ...]:
        """The schema URNs of a create's answer whose resource type neither the SP's
        ``/ResourceTypes`` nor the answer's ``meta.resourceType`` says (``x.type_unknown``;
        :func:`_answer_type`)."""
        if not rt or not _is_map(body):
            return ()
        return _answer_type(body, rt, self.sp)[1]

    def result_id(self, path: str, res: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """:meth:`created_id` of a bulk POST's result ``res`` (its ``location`` and its
        ``response``)."""
        loc = res.get("location")
        return self.created_id(path, loc if isinstance(loc, str) else None, res.get("response"))


_NO_ANSWERS = Answers()

Base = tuple[str, ...]  # a base path's segments, decoded, in lower case


@functools.lru_cache(maxsize=1024)  # the few bases an SP names, read once each
def _base_of(segs: tuple[str, ...]) -> Base:
    return tuple(urllib.parse.unquote(s).lower() for s in segs)


def _bases(cfg: AuditConfig, scope: Scope, rel: str) -> tuple[frozenset[Base], str]:
    """The base paths a create's location may name before its endpoint (RFC 7644 §3.1: the
    location is the resource's URI at this SP), and the request's path (relative locations
    resolve against it): the base the request was sent to (its path before the endpoint, or
    before ``/Bulk``), ``base_path`` (scim2-server names ``/v2/Users/x`` for a create sent
    to ``/Users``), each under the ASGI ``root_path`` too (a mounted app), and the SP's
    configured base (``sp_base``'s path: the proxy's upstream)."""
    path = scope.get("path")
    sent = rel if not isinstance(path, str) else path
    root = scope.get("root_path")
    root = root.rstrip("/") if isinstance(root, str) else ""
    got = _base_set(sent.rstrip("/").rpartition("/")[0], cfg.base_path, root, cfg.sp_base)
    return got, sent


@functools.lru_cache(maxsize=256)  # the same few for every create of a deployment
def _base_set(sent: str, base: str, root: str, sp_base: str | None) -> frozenset[Base]:
    got = {sent, base}
    if root:
        got |= {root + b for b in got if not b.startswith(root + "/")}
    if sp_base:
        got.add(urllib.parse.urlsplit(sp_base).path)
    return frozenset(_base_of(tuple(s for s in b.split("/") if s)) for b in got)


def _created_id(
    path: str,
    answers: Answers,
    locs: Sequence[str | None],
    body: Any = None,
    rt: str = "",
) -> tuple[str | None, str | None]:
    """The id a create's answer names, or None and why it is not known (None: it names
    none). One rule for a single create and a bulk POST's result (:meth:`Answers.created_id`
    gives ``locs`` and ``body``): every location must name the create's resource
    (:func:`_location_id`), the body must not say another type than ``rt``
    (:func:`_other_type`), and the body's ``id`` and the locations must name one id. The id
    is the body's, else the locations'; a body without a location is decided from the body
    alone. Before faith21 a single create took the body's ``id`` (else the Location's last
    segment) whatever the answer named beside it; before faith23 a bulk result's
    ``response`` was not read for it (its ``id``, ``meta`` and ``schemas`` unchecked, and a
    result without a ``location`` named no id even where its ``response`` did)."""
    named: list[str] = []
    if _is_map(body):
        if rt and _other_type(body, rt, answers.sp):
            return None, _TYPE_ELSEWHERE
        got = body.get("id")
        if got in (".", ".."):  # no path can name it (red team 23), as a location's
            return None, _DOT_ID
        if isinstance(got, str) and got:
            named.append(got)
    for loc in locs:
        if not loc:
            continue
        seg = _location_id(loc, path, answers)
        if seg is None:
            return None, _LOCATION_ELSEWHERE
        named.append(seg)
    # Each as it names the id (a location's decoded once, :func:`_location_id`): before red
    # team 23 each was decoded again to compare, so /Users/a%2520b (the id a%20b) beside a
    # body's "a b" was one id.
    if any(other != named[0] for other in named[1:]):
        return None, _IDS_DISAGREE
    return (named[0] if named else None), None


def _other_type(body: Mapping[str, Any], rt: str, sp: SpTypes | None = None) -> bool:
    """Whether a create's answer says it is a resource of another type than ``rt``
    (:func:`_answer_type`)."""
    return _answer_type(body, rt, sp)[0]


def _answer_type(
    body: Mapping[str, Any], rt: str, sp: SpTypes | None = None
) -> tuple[bool, tuple[str, ...]]:
    """Whether a create's answer says it is a resource of another type than ``rt``, and the
    schema URNs of its ``schemas`` whose resource type nobody said (``x.type_unknown``).

    Another type: its ``meta.resourceType`` names another; its ``schemas`` name a core
    schema (``urn:ietf:params:scim:schemas:core:2.0:<Type>``) and not ``rt``'s; or they name
    a schema the SP's ``/ResourceTypes`` (``sp``, :class:`SpTypes`) lists for other types
    only. The type of any other schema URN (an extension) is taken only from what the SP
    says: its ``/ResourceTypes``, else the answer's own ``meta.resourceType`` (the resource
    is ``rt``'s, so are its extensions). Where neither says it, the URN is returned as not
    known, and is no evidence of another type. Before faith23 only a core schema was read (a
    Group's create answered with the enterprise User extension kept its id); from faith23
    to faith30 an extension's type was guessed from its URN's last part
    (``...:extension:enterprise:2.0:User`` taken as User's), so an SP's extension of its
    Users named ``...:extension:acme:2.0:Group`` lost every create's id although the SP
    said ``resourceType: User``."""
    meta = get_ci(body, "meta")
    said = get_ci(meta, "resourcetype") if _is_map(meta) else None
    own = rt.lower()
    if isinstance(said, str) and said.lower() != own:
        return True, ()
    schemas = get_ci(body, "schemas")
    if not isinstance(schemas, list):
        return False, ()
    names = [s.lower() for s in schemas if isinstance(s, str)]
    core = {s for s in names if s.startswith(_CORE)}
    if core and (_CORE + rt).lower() not in core:
        return True, ()
    unknown: list[str] = []
    for name, low in zip((s for s in schemas if isinstance(s, str)), names, strict=True):
        if low in core:
            continue
        listed = sp.schemas.get(low) if sp is not None else None
        if listed is None:  # what the SP did not say, the RFC may (review 39)
            listed = _RFC_EXTENSIONS.get(low)
        if listed is not None:
            if own not in listed:
                return True, ()
        elif not isinstance(said, str) and name not in unknown:
            unknown.append(name)
    return False, tuple(short_text(u, 128) or "?" for u in unknown[:8])


# The extensions the RFC itself defines, with their resource type (RFC 7643 §4.3: the
# enterprise extension is the User's): taken where the SP says nothing of them, never over
# what it says.
_RFC_EXTENSIONS = {
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user": frozenset({"user"})
}

_URN = re.compile(rb'"(urn:[^"\\]{1,512})"', re.IGNORECASE)
_TYPED_URNS = (b"urn:ietf:params:scim:schemas:core:2.0:", b"urn:ietf:params:scim:api:messages:")


def wants_sp_types(x: Exchange, cfg: AuditConfig) -> bool:
    """Whether the events of ``x`` need what the SP's ``/ResourceTypes`` says
    (:class:`SpTypes`): a create answered 2xx, or a bulk request's create whose result's
    ``status`` is 2xx, whose resource (the answer, the result's ``response``) names in its
    ``schemas`` a URN that is neither a core schema nor a SCIM message (an extension's,
    whose type only the SP can say) and no ``meta.resourceType`` (where the SP says its
    type, nothing is to be asked). A cheap look at the bytes first, so that an answer
    naming no such URN anywhere is not read; one under a content coding is decoded as
    the events read it. Before faith31 any URN anywhere in a 2xx answer, and any answer
    under a content coding, asked: an error's ``detail`` quoting a URN, a bulk result's
    error (``"status": "409"``) with one, an answer naming its type."""
    if x.method != "POST" or not 200 <= x.status < 300 or not x.resp_body:
        return False
    kind = x.target(cfg).kind
    if kind not in ("resource", "bulk"):
        return False
    coded = _coded_answer(x.resp_header(b"content-encoding"))
    if not coded and not any(
        not m[1].lower().startswith(_TYPED_URNS) for m in _URN.finditer(x.resp_body)
    ):
        return False
    if len(x.resp_body) > _MAX_JSON:
        return False  # not read by the events either (too large)
    decoded = x.resp_decoded = decode_body(
        x.resp_body,
        content_type=x.resp_header(b"content-type"),
        content_encoding=x.resp_header(b"content-encoding"),
        max_size=_MAX_JSON,
    )
    doc = decoded.value
    if kind == "resource":
        return _names_untyped(doc)
    ops = get_ci(doc, "operations") if _is_map(doc) else None
    if not isinstance(ops, list):
        return False
    return any(
        _is_map(res)
        and _res_method(res) == "POST"
        and 200 <= _status(res.get("status")) < 300
        and _names_untyped(res.get("response"))
        for res in ops
    )


def _names_untyped(body: Any) -> bool:
    """Whether a created resource ``body`` names in its ``schemas`` a URN whose type only the
    SP can say (:func:`wants_sp_types`) and says no ``meta.resourceType`` itself."""
    if not _is_map(body):
        return False
    meta = get_ci(body, "meta")
    if _is_map(meta) and isinstance(get_ci(meta, "resourcetype"), str):
        return False
    schemas = get_ci(body, "schemas")
    return isinstance(schemas, list) and any(
        isinstance(u, str) and not u.lower().encode("utf-8", "replace").startswith(_TYPED_URNS)
        for u in schemas
    )


def _coded_answer(value: str | None) -> bool:
    return bool(value) and (value or "").strip().lower() not in ("", "identity")


@dataclass(frozen=True)
class SpTypes:
    """What an SP says of its resource types (its ``/ResourceTypes``, RFC 7643 §6), as read
    by the middleware (:meth:`AuditMiddleware._sp_types`): each schema URN a type names
    (its ``schema`` and its ``schemaExtensions``' ``schema``), lower case, mapped to the
    names of the types that carry it (lower case)."""

    schemas: Mapping[str, frozenset[str]]


def sp_types(raw: bytes) -> SpTypes | None:
    """The :class:`SpTypes` a ``/ResourceTypes`` answer says (a ``ListResponse`` of
    ResourceType resources, or a bare list of them), or None where it says none (not JSON,
    no type with a ``name`` and a ``schema``)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if _is_map(doc):
        doc = get_ci(doc, "resources")
    if not isinstance(doc, list):
        return None
    got: dict[str, set[str]] = {}
    for t in doc:
        if not _is_map(t):
            continue
        name, schema = get_ci(t, "name"), get_ci(t, "schema")
        if not isinstance(name, str) or not name or not isinstance(schema, str):
            continue
        urns = [schema]
        exts = get_ci(t, "schemaextensions")
        for e in exts if isinstance(exts, list) else ():
            urn = get_ci(e, "schema") if _is_map(e) else None
            if isinstance(urn, str) and urn:
                urns.append(urn)
        for urn in urns:
            got.setdefault(urn.lower(), set()).add(name.lower())
    if not got:
        return None
    return SpTypes({k: frozenset(v) for k, v in got.items()})


@functools.lru_cache(maxsize=1024)
def _server(netloc: str, scheme: str) -> Server | None:
    """The server a URL's authority (or a ``Host`` header) names, as :func:`_location_id`
    compares them: the host name in lower case (no user part, no trailing dot) and the port,
    None where it is the scheme's default (``http``: 80, ``https``: 443) or not given. The
    scheme is not compared: an app behind a proxy ending TLS is asked over ``http`` and
    names itself ``https``. None if it names none. Cached: an exchange reads its ``Host``
    and its creates' locations, the same few servers again and again, and parsing one
    costs more than the rest of the check."""
    try:
        url = urllib.parse.urlsplit("//" + netloc.strip())
        host, port = url.hostname, url.port
    except ValueError:
        return None
    if not host:
        return None
    if port == _DEFAULT_PORTS.get(scheme.lower()):
        port = None
    return host.rstrip(".").lower(), port


_warned_servers: set[Server | str | None] = set()  # and the base paths (red team 26)


def _printable(name: str) -> str:
    """``name`` as a log line may hold it: printable ASCII, cut to a host name's length
    (red team 24: a byte \\x85, a line break to log readers, forged a line; a
    6,000-character host was logged whole)."""
    name = name.encode("ascii", "backslashreplace").decode("ascii")
    name = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)
    return name[:256] + "..." if len(name) > 260 else name


def _first_warning(key: Server | str | None) -> bool:
    """Whether ``key`` (a server or a base path) is warned about for the first time in this
    process, remembering it; False once 64 are remembered (a bound against names a client
    chooses: red team 24)."""
    if key in _warned_servers or len(_warned_servers) >= 64:
        return False
    _warned_servers.add(key)
    return True


def _warn_elsewhere(server: Server | None) -> None:
    """Tell the operator, once a process for each server, that a create's location named a
    server the request did not ask: every such create is logged with its id not known, and
    the usual cause is configuration (an SP behind a reverse proxy that names itself by its
    public name: set ``sp_base``, or ``trust_forwarded`` where the proxy sets
    ``X-Forwarded-Host``), not a hostile SP. Only the server is named (never the location:
    its path holds a resource id). At most 64 servers (and bases) are remembered."""
    if not _first_warning(server):
        return
    name = "?" if server is None else server[0] + ("" if server[1] is None else f":{server[1]}")
    _log.warning(
        "a create's location names server %s, not the one the request asked: its created id "
        "is recorded as not known; if the SP names itself by another name (a reverse proxy), "
        "set sp_base (or trust_forwarded)",
        _printable(name),
    )


def _warn_base(base: str) -> None:
    """Tell the operator, once a process for each base path, that a create's location named
    it and it is none the request was served from (:func:`_location_id`): every such create
    is logged with its id not known. The usual cause is a reverse proxy rewriting the path
    prefix (it serves ``/api/scim/v2`` and strips ``/api``, the SP naming its resources by
    the public URL): set ``sp_base`` to the SP's base URL as it names them. Before red team
    26 this was silent, so a deployment's every create lost its id unexplained. Only the
    base is named (the path before the endpoint, never the id); shares the 64 of
    :func:`_warn_elsewhere`."""
    if not _first_warning(base):
        return
    _log.warning(
        "a create's location names base path %s, none the request was served from: its "
        "created id is recorded as not known; if a reverse proxy rewrites the path prefix, "
        "set sp_base to the SP's base URL as it names its resources",
        _printable(base),
    )


def _location_id(loc: str, path: str, answers: Answers) -> str | None:
    """The id a create's location names (a bulk POST's result's ``location``, a single
    create's ``Location`` or ``meta.location``: the last segment, without a query), or None
    where the location is not that create's resource: its segment before the id is not the
    POST's endpoint (``path``'s last segment: ``/Users``), or it names a server (an
    absolute URL) none of ``hosts`` (when any is known, :attr:`Builder.answers`). Before
    faith20 the last segment was taken, whatever it named: a location under ``/Groups/`` (or
    another server) for a User's create gave the User that id, and the operations naming
    its bulkId went to it; before red team 20 the query was kept (a PATCH of
    ``/Users/bulkId:u0`` created at ``.../Users/abc?v=1`` went to a resource ``abc?v=1``)."""
    try:
        url = urllib.parse.urlsplit(loc)
    except ValueError:
        return None
    if url.netloc and answers.hosts:
        server = _server(url.netloc, url.scheme)
        if server not in answers.hosts:
            _warn_elsewhere(server)
            return None
    segs = [s for s in url.path.split("/") if s]
    want = [s for s in path.split("?")[0].split("/") if s]
    if len(segs) < 2 or not want or segs[-2].lower() != want[-1].lower():
        return None
    if answers.bases:
        # the path before the endpoint: a base the SP serves this request's resources from
        # (faith24; before, /other/Users/x was taken for a create sent to /v2/Users). A
        # relative reference resolved against the request's path (RFC 3986 §5.2: its dot
        # segments too, so ../other/Users/x is another base); an absolute one's dot
        # segments left as they are (named, not the base).
        full = url.path
        if not url.netloc and not full.startswith("/"):
            full = urllib.parse.urljoin(answers.at, full)
        named = tuple([s for s in full.split("/") if s][:-2])
        if _base_of(named) not in answers.bases:
            _warn_base("/" + "/".join(named))
            return None
    # The id as the SP's requests name it (a request's path reaches the adapter decoded):
    # before red team 21 a location's a%20b was recorded as created, and the PATCH of
    # /Users/a%20b wrote to a resource "a b" never created. A dot segment names no resource
    # (RFC 3986 §5.2.4: /Users/.. is the base), so no id either.
    got = urllib.parse.unquote(segs[-1])
    return None if got in (".", "..") else got


def _name(
    method: Any, bid: Any, where: Any, asked: bool, ref: bool = False
) -> tuple[str, str, str] | None:
    """What an operation (``asked``: its method, bulkId and path) or a result (its method,
    bulkId and location) names exactly: a POST's bulkId, or another method's resource type
    and id (the last two segments of the path or the location; ``ref``: only an id that is
    a ``bulkId:`` reference, as written, else only one that is not); ``None`` if nothing."""
    m = str(method or "").upper()
    if m == "POST":
        return ("POST", "", bid) if isinstance(bid, str) and bid else None
    if not isinstance(where, str) or (asked and "/" not in where.strip("/")):
        return None
    where = "/" + where.lstrip("/") if asked else where.split("?")[0]
    parts = where.rstrip("/").rsplit("/", 2)
    if len(parts) < 3 or not parts[2] or parts[2].startswith("bulkId:") != ref:
        return None
    return (m, parts[1].lower(), parts[2])


def _compatible(op: Mapping[str, Any], method: str, res: Mapping[str, Any]) -> bool:
    """Whether ``res`` may be ``op``'s result (both of ``method``): no other bulkId, and
    no location naming another resource type and id than ``op``'s path."""
    b1, b2 = get_ci(op, "bulkid"), res.get("bulkId")
    if (b1 or b2) and b1 != b2:
        return False
    path, loc = get_ci(op, "path"), res.get("location")
    if method != "POST" and isinstance(loc, str):
        mine = _name(method, None, path, True)
        if mine is not None:
            return _name(method, None, loc, False) == mine  # the same type and id
    return True
