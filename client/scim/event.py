"""The private SCIM provisioning audit event (SCIM.md §3.4): schema, JSON mapping, builder.

The canonical form of an event is its deterministic CBOR (:mod:`client.scim.cbor`); the
commitment in the public leaf is computed over exactly those bytes (SCIM.md §4.3). In memory
an event is a plain ``dict`` in the CBOR data model: text keys, ``str``, ``bytes``, ``int``,
``bool``, ``None``, lists and dicts.

Validation is strict and closed: every field has one type, bounded size and, where the
schema says so, an enumeration; unknown fields are rejected at every level except inside
``x``. Beyond the CDDL, the validator insists on one form per meaning, so that two adapters
describing the same change produce the same bytes:

* optional maps and lists are omitted rather than empty (``"idp": {}``, ``"mods": []``);
* identifiers are non-empty and free of control characters; free text (``err.reason``,
  ``src.ua``) may carry tab and newline;
* ``eid`` is a lowercase RFC 9562 UUID (any version; :func:`new_event` makes v7), because it
  is the deduplication key and ``A`` vs ``a`` must not be two events;
* integers stay within the I-JSON safe range (RFC 7493 §2.2, ±(2**53-1)) so the JSON form
  round-trips through any JSON parser; HTTP status is 100..599;
* ``mods[].old``/``new`` must be JSON text (SCIM.md: "values as JSON text"), and a value is
  either plain or a digest, never both;
* ``x`` holds JSON-model values only (no byte strings), so the JSON and CBOR forms of an event
  are exact images of each other.

One addition to the §3.4 CDDL: ``? "intent": true`` marks an event whose ``mods``/``acts``
were derived from the request body (proxy mode, :func:`client.scim.actions.parse_request`)
rather than from the observed effect (SCIM.md §2.2 step 3). Absent means "effect". The
adapters' own optional fields, all absent in events from before them (which therefore keep
their bytes and are judged as before): ``mods[].op``, ``mods[].i`` and ``refs[].i`` (the
order of a PATCH's operations), and ``mods[].form`` (``path`` or ``value``: whether a
``replace`` of members, roles, entitlements or the manager named a path or came as a
path-less value map; docs/scim-adapter.md). ``form`` stands there only (an entry with
``op`` ``replace`` of an event of op ``patch``, that attribute for the event's resource
type, no ``old`` side): anywhere else the log refuses the event (:func:`check_forms`, at
its intake only, so that events stored before the rule stay readable).

JSON mapping (:func:`event_to_json`, :func:`event_from_json`): the same object, with the
byte-string fields written as standard, padded RFC 4648 §4 base64 text. Those fields are
exactly ``req.dig``, ``actor.tok_d``, ``actor.x5t_s256``, ``patch[].v_d``, ``mods[].old_d``,
``mods[].new_d`` and ``refs[].pid``. JSON input is UTF-8; floats, NaN/Infinity and duplicate
keys are rejected; URL-safe, unpadded or non-canonical base64 is rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

import cbor2

from client.formats.note import FormatError, b64decode_strict, b64encode
from client.scim.actions import derive_actions, misplaced_form
from client.scim.cbor import EventFormatError, dumps_det, loads_det
from client.scim.jsonstrict import strict_json

__all__ = [
    "ACTOR_HANDLE_MEMBERS",
    "ACTOR_KINDS",
    "ACTOR_NONCE_SIZE",
    "ACTOR_SUBJECT_RT",
    "BYTES_FIELDS",
    "EVENT_SPEC",
    "MAX_EVENT_SIZE",
    "MAX_JSON_SIZE",
    "MAX_SAFE_INT",
    "MOD_FORMS",
    "OPS",
    "OUTCOMES",
    "PATCH_OPS",
    "BytesSpec",
    "ConstSpec",
    "EnumSpec",
    "Event",
    "EventFields",
    "ExtensionSpec",
    "IPSpec",
    "ListSpec",
    "MapSpec",
    "Spec",
    "TextSpec",
    "TupleSpec",
    "UIntSpec",
    "actor_cbor",
    "actor_from_json",
    "actor_handle",
    "actor_seal_digest",
    "actor_to_json",
    "adopt_event",
    "adopt_json_event",
    "adopt_json_text",
    "check_forms",
    "check_rules",
    "decode_event",
    "encode_event",
    "event_from_json",
    "event_from_obj",
    "event_object",
    "event_to_json",
    "load_event",
    "new_event",
    "pseudonymous_actor",
    "pseudonymous_actor_cbor",
    "uuid7",
    "uuid7_text",
    "validate_event",
]

Event = dict[str, Any]

MAX_EVENT_SIZE = 64 * 1024  # encoded det CBOR
MAX_JSON_SIZE = 256 * 1024  # JSON text before parsing: base64 and escapes inflate
MAX_SAFE_INT = (1 << 53) - 1  # RFC 7493 §2.2 (I-JSON)
MAX_X_DEPTH = 8

OPS = ("create", "replace", "patch", "delete")
OUTCOMES = ("success", "failure", "skipped", "warning")
ACTOR_KINDS = ("oauth_client", "user", "mtls", "bearer", "system", "anonymous")
PATCH_OPS = ("add", "remove", "replace")
# mods[].form: the PatchOp named a "path", or came as a path-less "value" map
MOD_FORMS = ("path", "value")

# Dotted paths ("[]" = every list element) of the byte-string fields: the JSON mapping.
BYTES_FIELDS = (
    "req.dig",
    "actor.tok_d",
    "actor.x5t_s256",
    "actor.pid",
    "actor.sd",
    "patch[].v_d",
    "mods[].old_d",
    "mods[].new_d",
    "refs[].pid",
)

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_PSEUDONYMOUS_ACTOR = {"kind", "pid", "sd"}
_ACTION_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)+")
# Identifiers: no C0, DEL or C1 controls. Free text: tab, LF and CR allowed.
_ID_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _at(path: str, msg: str) -> EventFormatError:
    return EventFormatError(f"at {path}: {msg}")


# --- schema ---------------------------------------------------------------------------------
# The schema as data: EVENT_SPEC, a tree of these specs, and check_rules (the cross-field
# rules). validate_event walks it; client.scim.fastjson compiles the same tree into msgspec
# Structs, so both read one definition.


class Spec:
    def check(self, v: object, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class TextSpec(Spec):
    max_bytes: int = 256
    free: bool = False  # free text: tab/LF/CR allowed
    regex: re.Pattern[str] | None = None
    what: str = ""
    json_text: bool = False

    def check(self, v: object, path: str) -> None:
        if type(v) is not str:
            raise _at(path, "must be a text string")
        if not v:
            raise _at(path, "must not be empty")
        try:
            size = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            raise _at(path, "not valid Unicode (lone surrogate)") from None
        if size > self.max_bytes:
            raise _at(path, f"longer than {self.max_bytes} bytes")
        if (_TEXT_BAD if self.free else _ID_BAD).search(v):
            raise _at(path, "contains a control character")
        if self.regex is not None and not self.regex.fullmatch(v):
            raise _at(path, f"not a valid {self.what}")
        if self.json_text:
            try:
                # Floats are fine inside JSON text; only the syntax is checked here.
                strict_json(v, floats=True)
            except (ValueError, RecursionError):
                raise _at(path, "not valid JSON text") from None


@dataclass(frozen=True)
class IPSpec(Spec):
    def check(self, v: object, path: str) -> None:
        TextSpec(64).check(v, path)
        try:
            ipaddress.ip_address(str(v))
        except ValueError:
            raise _at(path, "not an IP address") from None


@dataclass(frozen=True)
class BytesSpec(Spec):
    size: int

    def check(self, v: object, path: str) -> None:
        if type(v) is not bytes:
            raise _at(path, "must be a byte string")
        if len(v) != self.size:
            raise _at(path, f"must be {self.size} bytes, got {len(v)}")


@dataclass(frozen=True)
class UIntSpec(Spec):
    lo: int = 0
    hi: int = MAX_SAFE_INT

    def check(self, v: object, path: str) -> None:
        if type(v) is not int:
            raise _at(path, "must be an unsigned integer")
        if not self.lo <= v <= self.hi:
            raise _at(path, f"must be in {self.lo}..{self.hi}")


@dataclass(frozen=True)
class EnumSpec(Spec):
    values: tuple[str, ...]

    def check(self, v: object, path: str) -> None:
        if type(v) is not str or v not in self.values:
            raise _at(path, f"must be one of {', '.join(self.values)}")


@dataclass(frozen=True)
class ConstSpec(Spec):
    value: object

    def check(self, v: object, path: str) -> None:
        if type(v) is not type(self.value) or v != self.value:
            raise _at(path, f"must be {self.value!r}")


@dataclass(frozen=True)
class MapSpec(Spec):
    fields: Mapping[str, tuple[Spec, bool]]  # name -> (spec, required)

    def check(self, v: object, path: str) -> None:
        if type(v) is not dict:
            raise _at(path, "must be a map")
        if not v:
            raise _at(path, "empty map (omit the field instead)")
        for k in v:
            if type(k) is not str or k not in self.fields:
                raise _at(path, f"unknown field {k!r}")
        for k, (spec, required) in self.fields.items():
            if k in v:
                spec.check(v[k], f"{path}.{k}")
            elif required:
                raise _at(path, f"missing required field {k!r}")


@dataclass(frozen=True)
class ListSpec(Spec):
    item: Spec
    max_items: int

    def check(self, v: object, path: str) -> None:
        if type(v) is not list:
            raise _at(path, "must be an array")
        if not v:
            raise _at(path, "empty array (omit the field instead)")
        if len(v) > self.max_items:
            raise _at(path, f"more than {self.max_items} items")
        for i, item in enumerate(v):
            self.item.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class TupleSpec(Spec):
    items: tuple[Spec, ...]

    def check(self, v: object, path: str) -> None:
        if type(v) is not list or len(v) != len(self.items):
            raise _at(path, f"must be an array of {len(self.items)} items")
        for i, (spec, item) in enumerate(zip(self.items, v, strict=True)):
            spec.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class ExtensionSpec(Spec):
    """``x``: any JSON-model value under text keys; no bytes, floats or deep nesting."""

    max_str: int = 16384
    key: TextSpec = field(default_factory=lambda: TextSpec(256))

    def check(self, v: object, path: str) -> None:
        if type(v) is not dict:
            raise _at(path, "must be a map")
        if not v:
            raise _at(path, "empty map (omit the field instead)")
        self._value(v, path, 0)

    def _value(self, v: object, path: str, depth: int) -> None:
        t = type(v)
        if depth > MAX_X_DEPTH and t in (list, dict):
            raise _at(path, f"nested more than {MAX_X_DEPTH} levels")
        if v is None or t is bool:
            return
        if t is int and isinstance(v, int):
            if not -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                raise _at(path, "integer outside the I-JSON safe range")
            return
        if t is str and isinstance(v, str):
            try:
                size = len(v.encode("utf-8"))
            except UnicodeEncodeError:
                raise _at(path, "not valid Unicode (lone surrogate)") from None
            if size > self.max_str:
                raise _at(path, f"longer than {self.max_str} bytes")
            return
        if t is list and isinstance(v, list):
            for i, item in enumerate(v):
                self._value(item, f"{path}[{i}]", depth + 1)
            return
        if t is dict and isinstance(v, dict):
            for k, item in v.items():
                if type(k) is not str:
                    raise _at(path, "map keys must be text strings")
                self.key.check(k, f"{path}.<key>")
                self._value(item, f"{path}.{k}", depth + 1)
            return
        if t is bytes:
            raise _at(path, "byte strings are not allowed in x (no JSON form)")
        if t is float:
            raise _at(path, "floats are not allowed (put decimals in JSON text)")
        raise _at(path, f"type {t.__name__} is not allowed")


_ID = TextSpec(256)
_URL = TextSpec(2048)
_DIGEST = BytesSpec(32)
_UINT = UIntSpec()
_OCSF_UID = UIntSpec(0, (1 << 31) - 1)

_ACTOR = MapSpec(
    {
        "kind": (EnumSpec(ACTOR_KINDS), True),
        "id": (TextSpec(512), False),
        "iss": (_URL, False),
        "client_id": (_ID, False),
        "tid": (_ID, False),
        "name": (_ID, False),
        "scope": (ListSpec(_ID, 64), False),
        "tok_d": (_DIGEST, False),
        "x5t_s256": (_DIGEST, False),
        # Set by the log only (never by a submitter): the actor as a pseudonym, see
        # :func:`pseudonymous_actor`.
        "pid": (BytesSpec(16), False),
        "sd": (_DIGEST, False),
    }
)
_CORR = MapSpec(
    {
        "req": (_ID, True),
        "trace": (_ID, False),
        "bulk_req": (_ID, False),
        "seq": (_UINT, False),
        "bulk_id": (_ID, False),
        "job": (_ID, False),
        "cycle": (_ID, False),
        "change": (_ID, False),
        "tx": (_ID, False),
    }
)
_REQ = MapSpec(
    {
        "m": (TextSpec(16, regex=_METHOD_RE, what="HTTP method (upper case)"), True),
        "p": (TextSpec(4096), True),
        "dig": (_DIGEST, True),
        "len": (_UINT, True),
        "if_match": (TextSpec(1024), False),
    }
)
_PATCH_OP = MapSpec(
    {
        "op": (EnumSpec(PATCH_OPS), True),
        "path": (TextSpec(2048), False),
        "v_d": (_DIGEST, False),
    }
)
_MOD = MapSpec(
    {
        "attr": (TextSpec(512), True),
        "op": (EnumSpec(PATCH_OPS), False),  # PATCH: the operation that made this change
        "old": (TextSpec(16384, free=True, json_text=True), False),
        "new": (TextSpec(16384, free=True, json_text=True), False),
        "old_d": (_DIGEST, False),
        "new_d": (_DIGEST, False),
        # A clear of members or manager in a PATCH with two or more operations on it: the
        # index of its operation in "patch", to place it among the references
        "i": (_UINT, False),
        # A PATCH replace of members, roles, entitlements or the manager: whether its operation
        # named a "path" or came as a path-less value map (RFC 7643 §2.5: with nothing, an
        # empty value is as if absent; with values, SCIMMY adds them; SPs differ); absent in
        # events from before it (and, before faith19, on a replace with values)
        "form": (EnumSpec(MOD_FORMS), False),
    }
)
_REF = MapSpec(
    {
        "rt": (TextSpec(128), True),
        "pid": (BytesSpec(16), True),
        "op": (EnumSpec(PATCH_OPS), False),  # the reference was added, removed or set (replace)
        "attr": (TextSpec(128), False),  # the referencing attribute (members, manager)
        # the index in "patch" of the operation that named it, where two or more operations
        # name the same attribute (where one replace ends and the next begins)
        "i": (_UINT, False),
    }
)
_RES = MapSpec(
    {
        "st": (UIntSpec(100, 599), True),
        "etag": (_ID, False),
        "loc": (_URL, False),
    }
)
_ERR = MapSpec(
    {
        "cat": (TextSpec(128), False),
        "code": (TextSpec(128), False),
        "scim_type": (TextSpec(64), False),
        "reason": (TextSpec(4096, free=True), False),
    }
)
_ACT = MapSpec(
    {
        "a": (TextSpec(128, regex=_ACTION_RE, what="action name"), True),
        "ocsf": (TupleSpec((_OCSF_UID, _OCSF_UID)), True),
    }
)
EVENT_SPEC = MapSpec(
    {
        "v": (ConstSpec(1), True),
        "eid": (TextSpec(36, regex=_UUID_RE, what="lowercase RFC 9562 UUID"), True),
        "ts": (_UINT, True),
        "dur": (_UINT, False),
        "tenant": (_ID, True),
        "sp": (MapSpec({"id": (_ID, True), "base": (_URL, False)}), True),
        "idp": (MapSpec({"id": (_ID, False), "name": (_ID, False)}), False),
        "op": (EnumSpec(OPS), True),
        "rt": (TextSpec(128), True),
        "rid": (_ID, False),
        "xid": (TextSpec(1024), False),
        "ver": (MapSpec({"pre": (_ID, False), "post": (_ID, False)}), False),
        "actor": (_ACTOR, True),
        "src": (
            MapSpec({"ip": (IPSpec(), False), "ua": (TextSpec(1024, free=True), False)}),
            False,
        ),
        "corr": (_CORR, True),
        "req": (_REQ, True),
        "patch": (ListSpec(_PATCH_OP, 1000), False),
        "mods": (ListSpec(_MOD, 1000), False),
        "refs": (ListSpec(_REF, 4096), False),
        "res": (_RES, True),
        "outcome": (EnumSpec(OUTCOMES), True),
        "err": (_ERR, False),
        "acts": (ListSpec(_ACT, 32), False),
        "x": (ExtensionSpec(), False),
        "intent": (ConstSpec(True), False),
    }
)


def check_rules(ev: Mapping[str, Any]) -> None:
    """The cross-field rules of SCIM.md §3.4 ("Conditionally required") and a few more."""
    success = ev["outcome"] == "success"
    # §3.4: rid on anything but a failed create.
    if "rid" not in ev and not (ev["op"] == "create" and not success):
        raise _at("$", "missing 'rid' (only a create that did not succeed may omit it)")
    # §3.4: err when outcome != success; a success with an error would be self-contradictory.
    if success and "err" in ev:
        raise _at("$.err", "not allowed when outcome is success")
    if not success and "err" not in ev:
        raise _at("$", f"missing 'err' (required when outcome is {ev['outcome']})")
    # §3.4: acts when outcome = success.
    if success and "acts" not in ev:
        raise _at("$", "missing 'acts' (required when outcome is success)")
    if success and not 200 <= ev["res"]["st"] <= 299:
        raise _at("$.res.st", "outcome success needs a 2xx status")
    corr = ev["corr"]
    if any(k in corr for k in ("bulk_req", "seq", "bulk_id")) and not (
        "bulk_req" in corr and "seq" in corr
    ):
        raise _at("$.corr", "a bulk operation needs both 'bulk_req' and 'seq'")
    for i, mod in enumerate(ev.get("mods", ())):
        for side in ("old", "new"):
            if side in mod and f"{side}_d" in mod:
                raise _at(f"$.mods[{i}]", f"both '{side}' and '{side}_d' (value or digest)")
    names = [act["a"] for act in ev.get("acts", ())]
    if len(set(names)) != len(names):
        raise _at("$.acts", "duplicate action")
    # (fastjson refuses pid/sd to this reference path: its _rules need not check this)
    actor = ev.get("actor", {})
    if ("pid" in actor or "sd" in actor) and actor.keys() != _PSEUDONYMOUS_ACTOR:
        raise _at("$.actor", "a pseudonymous actor is exactly {kind, pid, sd}")


def check_forms(ev: Mapping[str, Any]) -> None:
    """Raise unless every ``mods[].form`` of ``ev`` stands where the adapter puts it
    (:func:`client.scim.actions.misplaced_form`). A rule of what the log takes in
    (``tlog.scim.service.ScimService.check_events``), not of the schema: events stored
    before it keep validating wherever they are read again (the log's envelopes, search
    answers, an auditor's verification)."""
    for i, mod in enumerate(ev.get("mods", ())):
        if "form" in mod:
            why = misplaced_form(ev, mod)
            if why is not None:
                raise _at(f"$.mods[{i}].form", why)


def check_parts(ev: Mapping[str, Any]) -> None:
    """Raise unless ``x.part`` and ``x.parts`` (a request split into linked events, as the
    adapter numbers them) are both there or both absent, integers with ``0 <= part <
    parts``. The log's effects compare them as numbers: before red team 20 a submitter's
    ``"parts": "3"`` (or null, a list, a part without parts) failed the whole batch with a
    500, which a relay retries for ever. A rule of what the log takes in, like
    :func:`check_forms`."""
    x = ev.get("x")
    if not isinstance(x, Mapping) or ("part" not in x and "parts" not in x):
        return
    part, parts = x.get("part"), x.get("parts")
    if type(parts) is not int or parts < 1:
        raise _at("$.x.parts", "a split request's number of parts: an integer, 1 or more")
    if type(part) is not int or not 0 <= part < parts:
        raise _at("$.x.part", "a split request's part: an integer from 0 to x.parts - 1")


def _check(obj: object) -> bytes:
    EVENT_SPEC.check(obj, "$")
    if not isinstance(obj, dict):  # pragma: no cover - EVENT_SPEC.check guarantees it
        raise EventFormatError("event must be a map")
    check_rules(obj)
    # The schema check above admits only the deterministic data model (exact types, text
    # keys, ints within ±2**53, strings valid Unicode, bounded depth); dumps_det's one walk
    # puts the maps in deterministic key order for cbor2's plain encoder (cheaper than
    # cbor2's canonical=True, which sorts by encoding every key again).
    data = dumps_det(obj)
    if len(data) > MAX_EVENT_SIZE:
        raise EventFormatError(f"event is {len(data)} bytes encoded, limit {MAX_EVENT_SIZE}")
    return data


def validate_event(obj: object) -> Event:
    """Check ``obj`` against the event schema; return an independent, validated copy.

    Raises :class:`EventFormatError` naming the first offending field. The copy is the
    decoding of the canonical encoding, so it shares nothing with ``obj``.
    """
    # The bytes are our own canonical encoding: decoding them needs none of loads_det's
    # checks for hostile input (it would re-encode and compare, doubling the cost).
    return cbor2.loads(_check(obj))  # type: ignore[no-any-return]


def adopt_event(obj: object) -> tuple[Event, bytes]:
    """Validate ``obj`` and return it *itself* with its canonical encoding.

    For a caller that owns ``obj`` outright (it has just parsed it and nothing else holds a
    reference), which makes :func:`validate_event`'s independent copy unnecessary. The
    object must not be changed afterwards: the encoding is what a commitment covers.
    """
    data = _check(obj)
    return obj, data  # type: ignore[return-value]


def encode_event(obj: object) -> bytes:
    """Validate an event and return its canonical form, deterministic CBOR."""
    return _check(obj)


def decode_event(data: bytes) -> Event:
    """Parse and validate an event from deterministic CBOR (the canonical form)."""
    if type(data) is not bytes:
        raise EventFormatError("CBOR event must be bytes")
    if len(data) > MAX_EVENT_SIZE:
        raise EventFormatError(f"event is {len(data)} bytes, limit {MAX_EVENT_SIZE}")
    obj = loads_det(data)
    _check(obj)
    return obj  # type: ignore[no-any-return]


# --- JSON mapping ---------------------------------------------------------------------------


def _map_bytes_fields(ev: dict[str, Any], fn: Callable[[object, str], object]) -> None:
    """Apply ``fn(value, path)`` in place to each present field named in BYTES_FIELDS.

    Containers of the wrong type are skipped: the schema check reports them afterwards.
    """
    for spec in BYTES_FIELDS:
        head, _, leaf = spec.partition(".")
        if head.endswith("[]"):
            name = head[:-2]
            seq = ev.get(name)
            if type(seq) is list:
                for i, item in enumerate(seq):
                    if type(item) is dict and leaf in item:
                        item[leaf] = fn(item[leaf], f"$.{name}[{i}].{leaf}")
        else:
            sub = ev.get(head)
            if type(sub) is dict and leaf in sub:
                sub[leaf] = fn(sub[leaf], f"$.{head}.{leaf}")


def _from_b64(v: object, path: str) -> object:
    if type(v) is not str:
        raise _at(path, "must be a base64 string in JSON")
    try:
        return b64decode_strict(v)
    except FormatError as exc:
        raise _at(path, str(exc)) from None


def _to_b64(v: object, path: str) -> object:
    return b64encode(v) if type(v) is bytes else v


def event_from_json(text: str | bytes) -> Event:
    """Parse and validate an event from its JSON form (see the module docstring)."""
    return adopt_json_text(text)[0]


def adopt_json_text(text: str | bytes) -> tuple[Event, bytes]:
    """:func:`event_from_json` with the event's canonical encoding."""
    if len(text) > MAX_JSON_SIZE:
        raise EventFormatError(f"JSON event larger than {MAX_JSON_SIZE}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise EventFormatError("JSON event is not valid UTF-8") from None
    try:
        obj = strict_json(text)
    except RecursionError:
        raise EventFormatError("JSON nested too deeply") from None
    except ValueError as exc:
        raise EventFormatError(f"bad JSON: {exc}") from None
    return adopt_json_event(obj)


def event_from_obj(obj: object) -> Event:
    """An event from its JSON form already parsed (strictly: :func:`strict_json`) by the
    caller, who hands ``obj`` over: it is changed in place (base64 fields decoded) and
    returned validated, without a copy. For batches parsed as one document."""
    return adopt_json_event(obj)[0]


def adopt_json_event(obj: object) -> tuple[Event, bytes]:
    """:func:`event_from_obj` with the event's canonical encoding (:func:`adopt_event`)."""
    if type(obj) is not dict:
        raise EventFormatError("JSON event must be an object")
    _map_bytes_fields(obj, _from_b64)
    return adopt_event(obj)


def event_to_json(event: Mapping[str, Any]) -> str:
    """Validate an event and return its JSON form: compact, keys sorted, UTF-8 unescaped.

    The output is stable (same event, same text) but it is a presentation form; the
    commitment is always over the CBOR.
    """
    ev = validate_event(event)
    _map_bytes_fields(ev, _to_b64)
    return json.dumps(ev, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_event(data: bytes | str) -> Event:
    """Accept an event as JSON (``str``, or bytes not starting with a CBOR map) or det CBOR.

    An encoded event is a CBOR map, whose first byte is 0xa0..0xbf; no JSON text starts
    with one of those bytes (they are not ASCII), so the sniffing is unambiguous.
    """
    if isinstance(data, str):
        return event_from_json(data)
    if data[:1] and 0xA0 <= data[0] <= 0xBF:
        return decode_event(data)
    return event_from_json(data)


# --- building -------------------------------------------------------------------------------


def uuid7(ts_ms: int | None = None) -> uuid.UUID:
    """An RFC 9562 §5.7 UUIDv7: 48-bit Unix ms timestamp, then 74 random bits.

    Not monotonic within a millisecond (the optional §6.2 methods); eids need uniqueness,
    and sort order only roughly.
    """
    return uuid.UUID(int=_uuid7_int(ts_ms))


class _RandomPool:
    """Bytes from the OS's CSPRNG (:func:`os.urandom`), fetched 4 KiB at a time and handed
    out in order, each byte once: the same randomness as ``secrets``, without a
    ``getrandom`` system call per eid and per request id (the middleware makes one of each
    per write). Thread-safe; a forked child starts with an empty pool, so parent and child
    never hand out the same bytes."""

    __slots__ = ("_buf", "_lock", "_pos")
    SIZE = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()  # a fork may have copied it held

    def take(self, n: int) -> bytes:
        """``n`` (<= SIZE) fresh random bytes."""
        with self._lock:
            pos = self._pos
            end = pos + n
            if end > len(self._buf):
                self._buf = os.urandom(self.SIZE)
                pos, end = 0, n
            self._pos = end
            return self._buf[pos:end]


_POOL = _RandomPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.reset)


def _randbits74() -> int:
    """74 random bits (what ``secrets.randbits(74)`` gives), from :data:`_POOL`."""
    return int.from_bytes(_POOL.take(10), "big") >> 6


def uuid4_text() -> str:
    """``str(uuid.uuid4())``, from :data:`_POOL`'s bytes (the request ids the middleware
    makes): the same version and variant bits as :class:`uuid.UUID` with ``version=4``."""
    return _uuid4_text_of(_POOL.take(16))


def _uuid4_text_of(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# The RFC 4122 variant (binary 10) over the first hex digit of clock_seq_hi.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid7_int(ts_ms: int | None) -> int:
    if ts_ms is None:
        ts_ms = time.time_ns() // 1_000_000
    if not 0 <= ts_ms < 1 << 48:
        raise ValueError("UUIDv7 timestamp out of range")
    rand = _randbits74()
    value = (ts_ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62)
    return value | (rand & ((1 << 62) - 1))


def _drop_empty(obj: Mapping[str, Any] | None) -> Any:
    # type() first: isinstance against the Mapping ABC is the slow part for the usual dict
    # (and for None, the usual absent field: five of an event's nine calls).
    if obj is None:
        return None
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return obj  # None, or a wrong type that validation will name
    # (text, bytes and numbers first: never None nor equal to an empty list or dict, so
    # no empty list and dict are made to compare them with; tests/scim/test_drop_empty.py)
    never = _NEVER_EMPTY
    out = {
        k: v for k, v in obj.items() if type(v) in never or (v is not None and v != [] and v != {})
    }
    return out or None


# The values' types for which ``v is not None and v != [] and v != {}`` is True without
# asking: exact text, bytes and numbers are never equal to a list or a dict.
_NEVER_EMPTY = frozenset({str, int, bytes, bool, float})


def _copy(obj: Any) -> Any:
    return dict(obj) if type(obj) is dict or isinstance(obj, Mapping) else obj


def uuid7_text(ts_ms: int | None = None) -> str:
    """``str(uuid7(ts_ms))``, written directly (the UUID object is only ever printed)."""
    h = f"{_uuid7_int(ts_ms):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _EventFieldsRequired(TypedDict):
    tenant: str
    sp: str | Mapping[str, Any]
    op: str
    rt: str
    actor: Mapping[str, Any]
    corr: str | Mapping[str, Any]
    req: Mapping[str, Any]
    res: int | Mapping[str, Any]
    outcome: str


# Required fields by the base class's totality, not typing.Required: under
# ``from __future__ import annotations`` Python 3.11 does not see Required in a string.
class EventFields(_EventFieldsRequired, total=False):
    """The keyword arguments of :func:`new_event` and :func:`event_object`: the event's
    fields, with the builder's conveniences (see :func:`new_event`)."""

    rid: str | None
    eid: str | None
    ts: int | None
    dur: int | None
    idp: Mapping[str, Any] | None
    xid: str | None
    ver: Mapping[str, Any] | None
    src: Mapping[str, Any] | None
    patch: Sequence[Mapping[str, Any]] | None
    mods: Sequence[Mapping[str, Any]] | None
    refs: Sequence[Mapping[str, Any]] | None
    err: Mapping[str, Any] | None
    acts: Sequence[Mapping[str, Any]] | None
    x: Mapping[str, Any] | None
    intent: bool  # default False
    ocsf: str  # default "1.8": the OCSF version derived actions name


_FIELDS_REQUIRED = EventFields.__required_keys__
_FIELDS_ALL = _FIELDS_REQUIRED | EventFields.__optional_keys__


def _check_fields(fields: Mapping[str, Any]) -> None:
    """A TypeError for a keyword :class:`EventFields` does not have or a required one left
    out, as a Python signature would raise (``**fields`` alone accepts anything)."""
    keys = fields.keys()
    if keys <= _FIELDS_ALL and _FIELDS_REQUIRED <= keys:
        return
    if unknown := sorted(keys - _FIELDS_ALL):
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    missing = sorted(_FIELDS_REQUIRED - keys)
    raise TypeError(f"missing required keyword argument(s): {', '.join(missing)}")


def event_object(**fields: Unpack[EventFields]) -> dict[str, Any]:
    """The event :func:`new_event` builds (same conveniences), *not yet validated*: for a
    caller that validates it another way, e.g. in its JSON form with the compiled checker
    (:mod:`client.scim.fastjson`), falling back to :func:`validate_event`. Raises only on
    what the derivation of ``acts`` refuses (and TypeError for a wrong keyword)."""
    _check_fields(fields)
    f = fields
    ts = f.get("ts")
    if ts is None:
        ts = time.time_ns() // 1_000_000
    eid = f.get("eid")
    if eid is None:
        eid = uuid7_text(ts if type(ts) is int and 0 <= ts < 1 << 48 else None)
    op, rt, outcome = f["op"], f["rt"], f["outcome"]
    sp, corr, res = f["sp"], f["corr"], f["res"]
    mods, patch, refs = f.get("mods"), f.get("patch"), f.get("refs")
    acts, x = f.get("acts"), f.get("x")
    mods_l = [_copy(m) for m in mods] if mods else None
    patch_l = [_copy(p) for p in patch] if patch else None
    if acts is None and outcome == "success":
        acts = derive_actions(op, rt, mods=mods_l, patch=patch_l, ocsf=f.get("ocsf", "1.8"))
    ev: dict[str, Any] = {
        "v": 1,
        "eid": eid,
        "ts": ts,
        "dur": f.get("dur"),
        "tenant": f["tenant"],
        "sp": {"id": sp} if isinstance(sp, str) else _drop_empty(sp),
        "idp": _drop_empty(f.get("idp")),
        "op": op,
        "rt": rt,
        "rid": f.get("rid"),
        "xid": f.get("xid"),
        "ver": _drop_empty(f.get("ver")),
        "actor": _drop_empty(f["actor"]),
        "src": _drop_empty(f.get("src")),
        "corr": {"req": corr} if isinstance(corr, str) else _drop_empty(corr),
        "req": _drop_empty(f["req"]),
        "patch": patch_l,
        "mods": mods_l,
        "refs": [_copy(r) for r in refs] if refs else None,
        "res": {"st": res} if isinstance(res, int) else _drop_empty(res),
        "outcome": outcome,
        "err": _drop_empty(f.get("err")),
        "acts": [_copy(a) for a in acts] if acts else None,
        "x": _copy(x) if x else None,
        "intent": True if f.get("intent", False) else None,
    }
    return {k: v for k, v in ev.items() if v is not None}


def new_event(**fields: Unpack[EventFields]) -> Event:
    """Build and validate an event.

    Conveniences: ``eid`` defaults to a fresh UUIDv7 and ``ts`` to now (ms); ``sp``,
    ``corr`` and ``res`` may be given as the bare ``sp.id``, ``corr.req`` and ``res.st``;
    ``None`` values and empty maps/lists are dropped (the schema wants them omitted); on
    success, missing ``acts`` are derived from op/rt/mods/patch with
    :func:`client.scim.actions.derive_actions`. Raises :class:`EventFormatError`.
    """
    return validate_event(event_object(**fields))


# --- the actor as a pseudonym (SCIM.md §4.3 item 6) ------------------------------------------
# The log stores an event whose actor names someone (:func:`actor_handle`) with the actor
# replaced by ``{kind, pid, sd}``: ``pid = HMAC(P_actor, handle)[:16]`` under the pseudonym
# key of the subject (tenant, ACTOR_SUBJECT_RT, handle), as members are named in ``refs``, and
# ``sd = HMAC-SHA256(an, det_cbor(actor as submitted))`` with a fresh 32-byte nonce ``an``.
# The actor as submitted and ``an`` are sealed under that subject's DEK (inside the event's
# envelope): an auditor opens ``sd`` while the actor lives; erasing the actor destroys both
# keys, and the event then names no one (docs/design.md, "Actors").

ACTOR_SUBJECT_RT = "User"
ACTOR_NONCE_SIZE = 32
# The members that name or link a person, in the order the log picks the one it keys an
# actor's pseudonym by (the most specific first): ``id``, else ``name`` (a user name, an
# e-mail, a display name), else ``client_id`` (an OAuth client: a service principal, or a
# person's own app registration), else the token digest ``tok_d``, else the certificate
# thumbprint ``x5t_s256`` (those two as base64, their JSON form). An actor with any of them
# is stored as ``{kind, pid, sd}``, all of it sealed; one with none (``kind``, ``iss``,
# ``tid``, ``scope`` only: an identity provider and permissions, no person) is stored as
# sent (docs/design.md, "Actors").
ACTOR_HANDLE_MEMBERS = ("id", "name", "client_id", "tok_d", "x5t_s256")


def actor_handle(actor: Mapping[str, Any]) -> str | None:
    """The identifier the log keys ``actor`` (as submitted) by: the value of its first
    member in :data:`ACTOR_HANDLE_MEMBERS` (a byte string as its base64 text, as the event's
    JSON carries it), the value ``actor=`` searches for it with; None for an actor that names
    no one. Its pseudonym is ``HMAC(P, handle)[:16]`` under the keys of the subject
    (tenant, ACTOR_SUBJECT_RT, handle), whatever member it came from."""
    for name in ACTOR_HANDLE_MEMBERS:
        v = actor.get(name)
        if v is not None:
            return b64encode(v) if type(v) is bytes else v
    return None


def _key_order(k: str) -> tuple[int, bytes]:
    b = k.encode()
    return len(b), b


def actor_cbor(actor: Mapping[str, Any]) -> bytes:
    """det_cbor(``actor``) of a validated actor map (text keys, text, byte string and
    text-list values): its keys in deterministic order (by their encoding: shorter first),
    then cbor2's plain encoder, whose encoding of those values is the deterministic one.
    Equal to :func:`client.scim.cbor.dumps_det` (tested); anything else goes to it."""
    try:
        return bytes(cbor2.dumps({k: actor[k] for k in sorted(actor, key=_key_order)}))
    except (UnicodeEncodeError, ValueError, TypeError, AttributeError):
        return dumps_det(dict(actor))


# HMAC-SHA256 (RFC 2104) from two hashlib objects, for keys of at most one block: the same
# digest as ``hmac.digest(key, msg, "sha256")`` (tests/adapters/test_fast_receipts.py), which
# on OpenSSL 3 looks the algorithm up again at each call (2-3x the cost of the two hashes for
# an event-sized message). Commitments, actor seal digests, pseudonyms and tenant refs.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_BLOCK = 64


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    if len(key) > _BLOCK:
        return hmac.digest(key, msg, "sha256")
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.sha256(key.translate(_IPAD))
    inner.update(msg)
    outer = hashlib.sha256(key.translate(_OPAD))
    outer.update(inner.digest())
    return outer.digest()


def actor_seal_digest(an: bytes, actor: Mapping[str, Any] | bytes) -> bytes:
    """``sd`` = HMAC-SHA256(key = ``an``, msg = det_cbor(``actor``)), ``actor`` as submitted
    (or its :func:`actor_cbor`, bytes)."""
    if type(an) is not bytes or len(an) != ACTOR_NONCE_SIZE:
        raise EventFormatError(f"actor nonce must be {ACTOR_NONCE_SIZE} bytes")
    enc = actor if type(actor) is bytes else dumps_det(dict(actor))  # type: ignore[arg-type]
    return hmac_sha256(an, enc)


def pseudonymous_actor(actor: Mapping[str, Any], pid: bytes, an: bytes) -> dict[str, Any]:
    """The actor an event stores for ``actor`` (submitted, naming someone): kind, pid, sd."""
    return {"kind": actor["kind"], "pid": pid, "sd": actor_seal_digest(an, actor)}


def pseudonymous_actor_cbor(kind: str, pid: bytes, sd: bytes) -> bytes:
    """det_cbor({"kind": kind, "pid": pid, "sd": sd}) (keys "sd" < "pid" < "kind" by their
    encoding) without encoding a map: equal to ``dumps_det`` of it (tested)."""
    if len(pid) != 16 or len(sd) != 32:
        raise EventFormatError("pid is 16 bytes and sd 32")
    k = _KIND_CBOR.get(kind)
    if k is None:
        k = cbor2.dumps(kind)
    return b"\xa3\x62sd\x58\x20" + sd + b"\x63pid\x50" + pid + b"\x64kind" + k


_KIND_CBOR = {k: bytes(cbor2.dumps(k)) for k in ACTOR_KINDS}


def actor_to_json(actor: Mapping[str, Any]) -> dict[str, Any]:
    """An actor map in the event's JSON mapping (its byte strings as base64 text)."""
    return {k: b64encode(v) if type(v) is bytes else v for k, v in actor.items()}


def actor_from_json(obj: object) -> dict[str, Any]:
    """An actor as submitted (never the pseudonymous form) from its JSON mapping, validated
    by the event schema's actor rules. Raises :class:`EventFormatError`."""
    if type(obj) is not dict:
        raise _at("$.actor", "must be a map")
    actor = dict(obj)
    for name in ("tok_d", "x5t_s256"):
        if name in actor:
            actor[name] = _from_b64(actor[name], f"$.actor.{name}")
    _ACTOR.check(actor, "$.actor")
    if "pid" in actor or "sd" in actor:
        raise _at("$.actor", "a sealed actor is the actor as submitted, not a pseudonym")
    return actor
