"""Normalised actions (``acts``) and request-body parsing for SCIM audit events.

Two sources, as in SCIM.md §2.2 step 3:

* **effect** (:func:`derive_actions`): from the attribute-level diff (``mods`` with old and
  new values as JSON text) that a storage decorator observes. This is the preferred source.
  Call it with plaintext values *before* replacing values by digests: a digest says that a
  value changed, not how, and then only the generic ``<rt>.update`` can be derived.
* **intent** (:func:`parse_request`): from a SCIM PatchOp, PUT or POST body, for a proxy that
  never sees the stored state. The result must be marked ``"intent": true`` in the event.

Action names are ``<prefix>.<verb>``, where the prefix is the lower-cased resource type
(``User`` → ``user``); each carries an OCSF ``[class_uid, activity_id]`` pair from the
SCIM.md §3.4 mapping table, for OCSF ≤1.8 (default) or the 1.9-dev User Lifecycle class.
Actions the table leaves open are mapped as follows: ``user.entitlement.*`` like
``user.role.*`` (privileges); ``group.update`` and the generic ``<rt>.create/update/delete``
to Entity Management 3004 (1 create, 3 update, 4 delete); ``<rt>.noop`` to 3004/99 (other).

The list of actions is sorted in a fixed order (create, specific actions, update, delete)
with no duplicates, so the same change always yields the same ``acts``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785

from client.scim.cbor import EventFormatError
from client.scim.jsonstrict import strict_json

__all__ = [
    "ACTION_ORDER",
    "MAX_BODY_SIZE",
    "MAX_MOD_VALUE",
    "OCSF_VERSIONS",
    "RequestIntent",
    "action",
    "action_prefix",
    "derive_actions",
    "jcs",
    "jcs_digest",
    "json_key",
    "kept_digest",
    "ocsf_pair",
    "op_for_method",
    "ordered_verbs",
    "parse_request",
    "same_json",
]

OCSF_VERSIONS = ("1.8", "1.9")
MAX_BODY_SIZE = 1 << 20  # scim2-server's default bulk maxPayloadSize
MAX_MOD_VALUE = 16384  # bytes of JSON text in mods[].old/new; larger values become digests

# SCIM.md §3.4 mapping table: action -> (OCSF <=1.8, OCSF 1.9-dev).
_OCSF: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "user.create": ((3001, 1), (3007, 1)),
    "user.update": ((3004, 3), (3007, 2)),
    "user.deactivate": ((3001, 5), (3007, 5)),
    "user.activate": ((3001, 2), (3007, 4)),
    "user.delete": ((3001, 6), (3007, 3)),
    "user.password.set": ((3001, 4), (3007, 9)),
    "user.role.grant": ((3005, 1), (3007, 16)),
    "user.role.revoke": ((3005, 2), (3007, 17)),
    "user.entitlement.grant": ((3005, 1), (3007, 16)),
    "user.entitlement.revoke": ((3005, 2), (3007, 17)),
    "group.create": ((3006, 6), (3006, 6)),
    "group.update": ((3004, 3), (3004, 3)),
    "group.delete": ((3006, 5), (3006, 5)),
    "group.member.add": ((3006, 3), (3006, 3)),
    "group.member.remove": ((3006, 4), (3006, 4)),
}
# Entity Management (3004) for custom resource types and no-ops.
_GENERIC: dict[str, tuple[int, int]] = {
    "create": (3004, 1),
    "update": (3004, 3),
    "delete": (3004, 4),
    "noop": (3004, 99),
}
ACTION_ORDER = (
    "create",
    "activate",
    "deactivate",
    "password.set",
    "role.grant",
    "role.revoke",
    "entitlement.grant",
    "entitlement.revoke",
    "member.add",
    "member.remove",
    "update",
    "noop",
    "delete",
)
_RANK = {v: i for i, v in enumerate(ACTION_ORDER)}
_OPS = ("create", "replace", "patch", "delete")
_METHOD_OPS = {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}
_CORE_URNS = (
    "urn:ietf:params:scim:schemas:core:2.0:user:",
    "urn:ietf:params:scim:schemas:core:2.0:group:",
)
# Multi-valued attributes whose changes have their own actions: (prefix, attr) -> verbs.
_MULTI: dict[tuple[str, str], tuple[str, str]] = {
    ("group", "members"): ("member.add", "member.remove"),
    ("user", "roles"): ("role.grant", "role.revoke"),
    ("user", "entitlements"): ("entitlement.grant", "entitlement.revoke"),
}
_PUT_IGNORED = ("schemas", "id", "meta")
ENTERPRISE_MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:manager"
# Attributes that reference another subject: (prefix, attr key) -> the referenced type.
_REF_ATTRS: dict[tuple[str, str], str] = {
    ("group", "members"): "User",
    ("user", ENTERPRISE_MANAGER): "User",
}


def ocsf_pair(name: str, ocsf: str = "1.8") -> tuple[int, int]:
    """OCSF ``(class_uid, activity_id)`` for an action name (see the module docstring)."""
    if ocsf not in OCSF_VERSIONS:
        raise ValueError(f"unknown OCSF version {ocsf!r}, want one of {OCSF_VERSIONS}")
    if name in _OCSF:
        return _OCSF[name][OCSF_VERSIONS.index(ocsf)]
    verb = name.rsplit(".", 1)[-1]
    return _GENERIC.get(verb, (3004, 99))


def action(name: str, ocsf: str = "1.8") -> dict[str, Any]:
    """One ``acts`` item: ``{"a": name, "ocsf": [class_uid, activity_id]}``."""
    return {"a": name, "ocsf": list(ocsf_pair(name, ocsf))}


def action_prefix(rt: str) -> str:
    """The action-name prefix of a resource type: ``User`` → ``user``."""
    return _prefix(rt)


def _prefix(rt: str) -> str:
    p = re.sub(r"[^a-z0-9_-]", "_", rt.lower())
    return p if p and p[0] not in "_-" else "r" + p


def ordered_verbs(verbs: Iterable[str]) -> list[str]:
    """``verbs`` once each, in :data:`ACTION_ORDER` (unknown verbs last, by name): the
    order of an event's ``acts``, for intent and effect alike."""
    return sorted(set(verbs), key=lambda v: (_RANK.get(v, len(_RANK)), v))


def _acts(prefix: str, verbs: Iterable[str], ocsf: str) -> list[dict[str, Any]]:
    return [action(f"{prefix}.{v}", ocsf) for v in ordered_verbs(verbs)]


def op_for_method(method: str) -> str:
    """SCIM operation for an HTTP method: POST create, PUT replace, PATCH patch, DELETE delete."""
    try:
        return _METHOD_OPS[method]
    except KeyError:
        raise EventFormatError(f"HTTP method {method!r} is not a SCIM write") from None


def _check_op(op: str) -> None:
    if op not in _OPS:
        raise EventFormatError(f"op must be one of {', '.join(_OPS)}, got {op!r}")


# --- attribute paths ------------------------------------------------------------------------


def _strip_core_urn(path: str) -> str:
    low = path.lower()
    for urn in _CORE_URNS:
        if low.startswith(urn):
            return path[len(urn) :]
    return path


@functools.lru_cache(maxsize=4096)
def _attr_key(path: str) -> str:
    """The lower-cased top-level attribute a path targets (SCIM names are case-insensitive).

    ``members[value eq "x"]`` → ``members``; ``name.givenName`` → ``name``; core schema URN
    prefixes are dropped; extension attributes keep their URN (they have no own actions).
    """
    p = _strip_core_urn(path)
    if p.lower().startswith("urn:"):
        low = p.lower()
        # urn:...:User:manager.value -> the extension attribute urn:...:User:manager
        head, _, tail = low.rpartition(":")
        return head + ":" + re.split(r"[\[.]", tail, maxsplit=1)[0] if head else low
    return re.split(r"[\[.]", p, maxsplit=1)[0].lower()


def _clean_path(path: str) -> str:
    """The path without value filters: ``emails[type eq "work"].value`` → ``emails.value``.

    Filters can hold other subjects' ids (``members[value eq "..."]``), which do not belong
    in ``mods[].attr``.
    """
    out, depth = [], 0
    for c in path:
        if c == "[":
            depth += 1
        elif c == "]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(c)
    return "".join(out)


def _filter_span(path: str) -> tuple[int, int] | None:
    """Start and end (exclusive) of the first top-level ``[...]`` filter in ``path``."""
    start, depth = -1, 0
    for i, c in enumerate(path):
        if c == "[":
            if depth == 0:
                start = i
            depth += 1
        elif c == "]" and depth:
            depth -= 1
            if depth == 0:
                return start, i + 1
    return None


_VALUE_EQ = re.compile(r'^\s*value\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)


def _filter_value(path: str) -> str | None:
    """The id in ``attr[value eq "id"]`` (the usual member/role removal form), else None."""
    m = re.fullmatch(r"[^\[]*\[(.*)\]", path)
    if m is None:
        return None
    v = _VALUE_EQ.match(m.group(1))
    if v is None:
        return None
    try:
        s = json.loads(f'"{v.group(1)}"')
    except ValueError:
        return None
    return s if isinstance(s, str) else None


# --- values ---------------------------------------------------------------------------------


# Printable ASCII but the quote and the backslash: a string of these is its own JCS text,
# quoted (RFC 8785 §3.2.2.2 escapes only the quote, the backslash and controls).
_JCS_PLAIN = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_JCS_CONSTANTS = {True: "true", False: "false"}


def jcs(value: object) -> str:
    """RFC 8785 JSON Canonicalization Scheme text of a JSON value (SCIM.md §3.5).

    The commonest values (a plain ASCII string, a boolean, null) are written directly, as
    RFC 8785 writes them (``tests/scim/test_actions_jcs.py`` holds them equal); everything
    else goes through ``rfc8785``."""
    if type(value) is str and _JCS_PLAIN.fullmatch(value):
        return '"' + value + '"'
    if value is None:
        return "null"
    if type(value) is bool:
        return _JCS_CONSTANTS[value]
    try:
        return rfc8785.dumps(value).decode("utf-8")  # type: ignore[arg-type]
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise EventFormatError(f"value cannot be canonicalised as JSON: {exc}") from None


def jcs_digest(value: object) -> bytes:
    """SHA-256 over the RFC 8785 canonical JSON of a value: ``v_d``, ``old_d``, ``new_d``."""
    return hashlib.sha256(jcs(value).encode("utf-8")).digest()


def as_bool(v: object) -> bool | None:
    """A SCIM boolean (RFC 7643 §2.3.2), or one of the text forms some IdPs send for it
    (Entra ID's ``"True"``/``"False"``): exactly ``true`` or ``false`` in ASCII, in any
    case, nothing around it. Anything else (``"no"``, ``"0"``, ``"FALSE "``, ``0``, null) is
    None: not a boolean. The one rule for a request's ``active`` and for an SP's answer's
    (``x.result.active``, client.adapters.exchange, tlog.scim.effects)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.isascii() and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return None


def parse_json_text(text: object) -> tuple[bool, Any]:
    """(True, value) for JSON text, (False, None) for anything else."""
    if not isinstance(text, str):
        return False, None
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def same_json(a: object, b: object) -> bool:
    """Whether two JSON values (as a JSON parser gives them) are the same JSON value,
    compared by JSON type all the way down: a boolean is no number (``true`` is not ``1``,
    ``false`` not ``0``), an integer and a float of the same value are the same number
    (``1`` and ``1.0``), text is text, null is null, arrays item by item, objects by the
    same names with the same values. Python's ``==`` holds ``1`` and ``true`` equal at any
    depth: before faith25 a nested ``1`` answered ``true`` was taken as stored as asked.
    The one rule for every comparison of values the adapter and the log make of JSON
    (client.adapters.exchange, tlog.scim.effects; :func:`json_key` is its text for sets).
    Python's ``==`` decides first (it holds equal every pair JSON does, in C); only a pair
    it holds equal is walked for a boolean where the other has a number. A value nested
    too deeply to compare is not the same (nothing is taken as stored as asked)."""
    if type(a) is str:  # the usual value: text against text
        return type(b) is str and a == b
    try:
        return bool(a == b) and _same_types(a, b)
    except RecursionError:
        return False


def _same_types(a: Any, b: Any) -> bool:
    """Of two values Python's ``==`` holds equal: whether no boolean stands against a
    number anywhere in them (the one way JSON holds such a pair apart)."""
    ta, tb = type(a), type(b)
    if ta is not tb:
        if ta is bool or tb is bool:
            return False
        if not (isinstance(a, Mapping | list) and isinstance(b, Mapping | list)):
            return True  # numbers: an integer and a float of one value are one number
    if isinstance(a, Mapping):
        pairs: Iterable[tuple[Any, Any]] = ((v, b[k]) for k, v in a.items())
    elif isinstance(a, list):
        pairs = zip(a, b, strict=True)
    else:
        return True  # text, null, numbers, booleans of one type, equal
    for x, y in pairs:
        if type(x) is str or _same_types(x, y):  # (text equal to text: nothing to walk)
            continue
        return False
    return True


def json_key(value: object) -> str:
    """The text of a JSON value by :func:`same_json`'s rule, for sets and maps of values:
    JSON with the object names sorted, a number of integer value written as an integer
    (``1.0`` as ``1``), ``true`` as ``true``; two values :func:`same_json` holds the same
    have one key, any two others two (tested against one reference,
    tests/scim/test_faith25_same_json.py)."""
    return json.dumps(_integral(value), sort_keys=True)


def _integral(v: object) -> object:
    if type(v) is float:
        return int(v) if v.is_integer() else v
    if isinstance(v, list):
        return [_integral(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _integral(x) for k, x in v.items()}
    return v


def _member_key(item: object) -> str:
    if isinstance(item, dict) and isinstance(item.get("value"), str):
        return item["value"]  # type: ignore[no-any-return]
    if isinstance(item, str):
        return item
    return jcs(item)


def _item_keys(v: object) -> set[str]:
    if v is None:
        return set()
    items = v if isinstance(v, list) else [v]
    return {_member_key(i) for i in items}


# --- effect: acts from the observed diff ----------------------------------------------------


def _mod_verbs(prefix: str, mod: Mapping[str, Any], creating: bool) -> set[str]:
    attr = mod.get("attr")
    if not isinstance(attr, str):
        raise EventFormatError("mod without a text 'attr'")
    key = _attr_key(attr)
    has_old, old = parse_json_text(mod.get("old"))
    has_new, new = parse_json_text(mod.get("new"))
    # "Absent" and "plain" sides are known; a digest-only side is not.
    old_known = has_old or ("old" not in mod and "old_d" not in mod)
    new_known = has_new or ("new" not in mod and "new_d" not in mod)
    if (prefix, key) in _MULTI:
        add, remove = _MULTI[(prefix, key)]
        if not (old_known and new_known):
            return set() if creating else {"update"}
        before, after = _item_keys(old), _item_keys(new)
        verbs = set()
        if after - before:
            verbs.add(add)
        if before - after and not creating:
            verbs.add(remove)
        if not verbs and not creating and old != new:
            verbs.add("update")  # same members, other sub-attributes changed (display...)
        return verbs
    if creating:
        return set()  # the create action covers every other attribute
    if prefix == "user" and key == "password":
        return {"password.set"}
    if prefix == "user" and key == "active" and old_known and new_known:
        b_old, b_new = as_bool(old), as_bool(new)
        if b_new is False and b_old is not False:
            return {"deactivate"}
        if b_new is True and b_old is not True:
            return {"activate"}
        if b_new is not None and b_new == b_old:
            return set()
    if has_old and has_new and old == new:
        return set()
    return {"update"}


def _patch_verbs(prefix: str, item: Mapping[str, Any]) -> set[str]:
    op, path = item.get("op"), item.get("path")
    if not isinstance(path, str):
        return {"update"}
    key = _attr_key(path)
    if (prefix, key) in _MULTI:
        add, remove = _MULTI[(prefix, key)]
        return {"add": {add}, "remove": {remove}}.get(str(op), {add, remove})
    if prefix == "user" and key == "password" and op != "remove":
        return {"password.set"}
    return {"update"}


def derive_actions(
    op: str,
    rt: str,
    *,
    mods: Sequence[Mapping[str, Any]] | None = None,
    patch: Sequence[Mapping[str, Any]] | None = None,
    ocsf: str = "1.8",
) -> list[dict[str, Any]]:
    """Derive ``acts`` from a change (SCIM.md §2.2 step 3, mapping table §3.4).

    * delete → ``<rt>.delete``; create → ``<rt>.create`` plus member adds / grants found in
      ``mods``.
    * replace/patch with ``mods`` (the diff; ``[]`` = nothing changed):
      ``active`` true→false ``user.deactivate``, false→true ``user.activate``;
      ``password`` ``user.password.set``; ``members`` added/removed
      ``group.member.add/remove``; ``roles``/``entitlements`` added/removed
      ``user.role.*``/``user.entitlement.*`` grant/revoke; anything else ``<rt>.update``;
      no change at all ``<rt>.noop``.
    * replace/patch with only ``patch`` (paths, no values): per operation on ``members``,
      ``roles``, ``entitlements`` (add → add/grant, remove → remove/revoke, replace → both)
      and ``password``; anything else ``<rt>.update``.
    * neither known: ``<rt>.update``.
    """
    _check_op(op)
    prefix = _prefix(rt)
    if op == "delete":
        return _acts(prefix, ["delete"], ocsf)
    verbs: set[str] = set()
    if op == "create":
        verbs.add("create")
        for mod in mods or ():
            verbs |= _mod_verbs(prefix, mod, creating=True)
        return _acts(prefix, verbs, ocsf)
    if mods is not None:
        for mod in mods:
            verbs |= _mod_verbs(prefix, mod, creating=False)
        return _acts(prefix, verbs or {"noop"}, ocsf)
    if patch is not None:
        for item in patch:
            verbs |= _patch_verbs(prefix, item)
        return _acts(prefix, verbs or {"noop"}, ocsf)
    return _acts(prefix, ["update"], ocsf)


# --- intent: parse the request body ---------------------------------------------------------


@dataclass(frozen=True)
class RequestIntent:
    """What a request body asks for: the event's ``patch``, ``mods``, ``refs`` and ``acts``.

    Derived from the request, not from the stored state, so an event built from it must
    carry ``"intent": true``; :meth:`event_fields` includes that. Lists are ``None`` rather
    than empty, as the event schema wants.
    """

    acts: list[dict[str, Any]]
    patch: list[dict[str, Any]] | None = None
    mods: list[dict[str, Any]] | None = None
    refs: list[dict[str, Any]] | None = None

    def event_fields(self) -> dict[str, Any]:
        """Keyword arguments for :func:`client.scim.event.new_event`."""
        return {
            "acts": self.acts,
            "patch": self.patch,
            "mods": self.mods,
            "refs": self.refs,
            "intent": True,
        }


def _load_body(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return dict(body)
    if len(body) > MAX_BODY_SIZE:
        raise EventFormatError(f"request body larger than {MAX_BODY_SIZE}")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise EventFormatError("request body is not valid UTF-8") from None
    try:
        # Floats are legal in SCIM bodies (decimal attributes); they only ever reach the
        # event as JCS text or digests.
        obj = strict_json(body, floats=True)
    except RecursionError:
        raise EventFormatError("request body nested too deeply") from None
    except ValueError as exc:
        raise EventFormatError(f"request body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventFormatError("request body must be a JSON object")
    return obj


def _get_ci(obj: Mapping[str, Any], name: str) -> Any:
    for k, v in obj.items():
        if k.lower() == name:
            return v
    return None


def _expand(value: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(path, value) pairs of a path-less PatchOp value or a PUT/POST body.

    An extension schema's sub-object (``"urn:...:User": {"manager": ...}``) becomes
    ``urn:...:User:manager`` paths, as RFC 7644 §3.10 writes them.
    """
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        if k.lower().startswith("urn:") and isinstance(v, dict):
            out.extend((f"{k}:{sub}", sv) for sub, sv in v.items())
        else:
            out.append((k, v))
    return out


@dataclass
class _Builder:
    prefix: str
    secret_attrs: frozenset[str]
    digest_attrs: frozenset[str]
    ref_pid: Callable[[str, str], bytes] | None
    mods: list[dict[str, Any]]
    refs: list[dict[str, Any]]
    # The refs since the op last changed, to drop repeats within a run only: the log applies
    # the runs in order, as the SP applies the operations ([add X, remove X, add X] must keep
    # all three runs, or X's last add would be lost).
    run_op: str | None = None
    run_keys: set[tuple[str, bytes, str | None]] = field(default_factory=set)
    # The PatchOp being read (its index in ``patch``), the index the run began at, and for
    # each entry of ``refs`` and each clearing entry of ``mods`` the PatchOp that made it:
    # see :meth:`number_ops`.
    op_i: int | None = None
    run_i: int | None = None
    ref_ops: list[int | None] = field(default_factory=list)
    clear_ops: dict[int, int] = field(default_factory=dict)

    def is_secret(self, key: str) -> bool:
        return key in self.secret_attrs

    def ref_type(self, key: str) -> str | None:
        """The type a reference attribute points to, if its values are pseudonymised."""
        if self.ref_pid is None:
            return None
        return _REF_ATTRS.get((self.prefix, key))

    def pseudonymised(self, key: str) -> bool:
        return self.ref_type(key) is not None

    def value_text(self, key: str, value: object) -> tuple[str, object]:
        """("", text) for a plain value, or ("_d", digest) by policy or size."""
        text = jcs(value)
        if key in self.digest_attrs or len(text.encode("utf-8")) > MAX_MOD_VALUE:
            return "_d", hashlib.sha256(text.encode("utf-8")).digest()
        return "", text

    def add_refs(self, value: object, default_rt: str, op: str, attr: str) -> None:
        if self.ref_pid is None:
            return
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                v = _get_ci(item, "value")
                if isinstance(v, str) and v:
                    t = _get_ci(item, "type")
                    self.ref(t if isinstance(t, str) and t else default_rt, v, op, attr)
            elif isinstance(item, str) and item:
                self.ref(default_rt, item, op, attr)

    def ref(
        self, ref_rt: str, ref_id: str, op: str | None = None, attr: str | None = None
    ) -> bytes:
        if self.ref_pid is None:
            raise EventFormatError("no pseudonym function")
        pid = self.ref_pid(ref_rt, ref_id)
        if type(pid) is not bytes or len(pid) != 16:
            raise EventFormatError("ref_pid must return 16 bytes")
        entry: dict[str, Any] = {"rt": ref_rt, "pid": pid}
        if op is not None:
            entry["op"] = op
        if attr is not None:
            entry["attr"] = attr[:128]
        if op != self.run_op or (
            (op == "replace" or attr == "manager") and self.op_i != self.run_i
        ):
            # A new run: another op, or another replace (which discards what came before
            # it), or another operation on the one-valued manager (each sets it anew)
            self.run_op = op
            self.run_i = self.op_i
            self.run_keys = set()
        key = (ref_rt, pid, entry.get("attr"))
        if key not in self.run_keys:
            self.run_keys.add(key)
            self.refs.append(entry)
            self.ref_ops.append(self.op_i)
        return pid

    def number_ops(self) -> None:
        """Give each reference of an attribute whose runs would be ambiguous, and each entry
        of ``mods`` that clears it, the index ``i`` of its PatchOp in ``patch``.

        The log applies an attribute's references as runs of one op, in order. Without
        ``i`` it cannot tell where one ``replace`` ends and the next begins (``[replace
        [A, B], replace [C]]`` leaves only C), nor where among the references a clear
        (``remove`` without a value, ``replace`` with nothing: no references of its own)
        took place, unless the clear comes first. Every other request (nearly all: one
        operation, or adds and removes) needs neither and is recorded as before, byte for
        byte."""
        ops: dict[str, set[int]] = {}
        replaces: dict[str, set[int]] = {}
        for entry, i in zip(self.refs, self.ref_ops, strict=True):
            if i is not None:
                attr = entry.get("attr", "members")
                ops.setdefault(attr, set()).add(i)
                if entry.get("op") == "replace":
                    replaces.setdefault(attr, set()).add(i)
        clears: dict[str, set[int]] = {}
        clear_attrs = {n: _ref_attr_name(_attr_key(self.mods[n]["attr"])) for n in self.clear_ops}
        for n, i in self.clear_ops.items():
            clears.setdefault(clear_attrs[n], set()).add(i)
            ops.setdefault(clear_attrs[n], set()).add(i)
        multi = {
            a
            for a, at in ops.items()
            if len(replaces.get(a, ())) > 1 or any(c > min(at) for c in clears.get(a, ()))
        }
        if not multi:
            return
        for entry, i in zip(self.refs, self.ref_ops, strict=True):
            if i is not None and entry.get("attr", "members") in multi:
                entry["i"] = i
        for n, i in self.clear_ops.items():
            if clear_attrs[n] in multi:
                self.mods[n]["i"] = i

    def safe_path(self, path: str, key: str, op: str) -> str:
        """``path`` with its filter kept; a filter on a reference attribute names the
        referenced subject only by pseudonym (``members[value eq "pid:<base64>"]``)."""
        ref_rt = self.ref_type(key)
        span = _filter_span(path)
        if ref_rt is None or span is None:
            return path
        filt = _filter_value(path)
        if filt is not None:
            pid = self.ref(ref_rt, filt, op, _ref_attr_name(key))
            inner = '[value eq "pid:' + base64.b64encode(pid).decode("ascii") + '"]'
        else:  # another filter form: only its digest (it may hold ids in any shape)
            inner = "[sha256:" + hashlib.sha256(path[span[0] : span[1]].encode()).hexdigest() + "]"
        return path[: span[0]] + inner + path[span[1] :]

    def mod(
        self,
        op: str,
        path: str,
        value: object,
        has_value: bool,
        patch: bool = False,
        form: str | None = None,
    ) -> None:
        """One ``mods`` entry; ``form``, for a PatchOp's: ``"path"`` or ``"value"`` (a
        path-less value map), recorded where it decides the outcome (:func:`_form_of`)."""
        key = _attr_key(path)
        if key == "active" and self.prefix == "user" and as_bool(value) is not None:
            value = as_bool(value)
        attr = self.safe_path(path, key, op)
        if len(attr.encode("utf-8")) > 512:
            attr = _clean_path(path) or path
        if len(attr.encode("utf-8")) > 512:
            attr = "sha256:" + hashlib.sha256(path.encode()).hexdigest()
        entry: dict[str, Any] = {"attr": attr}
        if patch:
            entry["op"] = op  # a PatchOp's add/remove/replace, which the log's state needs
        ref_rt = self.ref_type(key)
        if ref_rt is not None:
            # SCIM.md §4.3 step 5: references to other subjects go to refs as pseudonyms
            # under the referenced subject's own key, never in plain.
            if has_value and value not in (None, [], {}, ""):
                self.add_refs(value, ref_rt, op, _ref_attr_name(key))
            if op == "replace" and (
                value in (None, [], {}, "") or not has_value or _no_manager(key, value)
            ):
                entry["new"] = "null"  # a replace with nothing: the references are cleared
            elif op == "remove" and not has_value and "[" not in path:
                entry["new"] = "null"  # every value removed (RFC 7644 §3.5.2.2): cleared
            if entry.get("new") == "null" and patch and self.op_i is not None:
                self.clear_ops[len(self.mods)] = self.op_i
                self.run_op = None  # the run ends at a clear: [add X, clear, add X] keeps both
        elif self.is_secret(key):
            pass  # SCIM.md §4.3 step 8: returned:never attributes only as "changed"
        elif op == "remove":
            filt = _filter_value(path)
            if has_value:
                suffix, v = self.value_text(key, value)
                entry["old" + suffix] = v
            elif filt is not None:
                suffix, v = self.value_text(key, [{"value": filt}])
                entry["old" + suffix] = v
        elif has_value:
            suffix, v = self.value_text(key, value)
            entry["new" + suffix] = v
        if form is not None and _attr_key(attr) == key:  # (not on a path cut to its digest)
            entry.update(_form_of(self.prefix, key, op, form))
        self.mods.append(entry)


# The attributes a PATCH replace with nothing is read two ways: the values cleared, or (the
# path-less form, RFC 7643 §2.5: an empty value is as if absent) left as they were.
_FORM_ATTRS = frozenset((*_MULTI, *_REF_ATTRS))


def _form_of(prefix: str, key: str, op: str, form: str) -> dict[str, str]:
    """``{"form": form}`` for a PatchOp ``replace`` of members, roles, entitlements or the
    manager, else nothing. With nothing (no value, null, ``[]``, ``{}``, ``""``): SCIMMY
    keeps the values for the path-less form (``{"members": []}``) and clears them for
    ``"path": "members"``, scim2-server clears them for both. With values: ``"path":
    "members"`` sets exactly those on both, the path-less ``{"members": [...]}`` adds them
    to SCIMMY's and replaces scim2-server's (faith19's trial). Only the form lets the log
    judge either (tlog.scim.effects). Every other entry keeps its bytes."""
    if op == "replace" and (prefix, key) in _FORM_ATTRS:
        return {"form": form}
    return {}


def misplaced_form(ev: Mapping[str, Any], mod: Mapping[str, Any]) -> str | None:
    """Why ``mod`` (an entry of ``ev``'s ``mods``) may not carry ``form``, or ``None`` where
    it may: exactly where :func:`_form_of` puts it, a PATCH's ``replace`` of
    members, roles, entitlements or the manager (by ``ev``'s resource type), with or
    without values. The log's intake refuses it anywhere else: an entry with and one
    without it would be two forms of one meaning, and the log would judge a replace from a
    ``form`` that says nothing there."""
    if ev.get("op") != "patch" or mod.get("op") != "replace":
        return "only on a PatchOp replace (op replace, in an event of op patch)"
    attr = mod.get("attr")
    rt = ev.get("rt")
    if not isinstance(attr, str) or not isinstance(rt, str):  # pragma: no cover - schema
        return "no attribute or resource type"
    if (action_prefix(rt), _attr_key(attr)) not in _FORM_ATTRS:
        return "only on members, roles, entitlements or the manager"
    if "old" in mod or "old_d" in mod:
        return "not on an entry with old values (a replace has none)"
    return _form_against_patch(ev, mod)


def _form_against_patch(ev: Mapping[str, Any], mod: Mapping[str, Any]) -> str | None:
    """Why ``mod``'s ``form`` contradicts ``ev``'s own ``patch`` items, or None (faith20):
    ``"path"`` needs a PatchOp ``replace`` whose ``path`` names the entry's attribute,
    ``"value"`` a path-less ``replace`` (its value map), and a numbered entry (``i``) that
    very PatchOp. Only a whole event can be checked: a request split into linked parts
    (``x.parts`` over 1) has its ``patch`` items in other parts than its ``mods``, so there
    the form is taken as written (docs/scim-adapter.md, "Which form a replace had")."""
    x = ev.get("x")
    parts = x.get("parts") if isinstance(x, Mapping) else None
    if isinstance(parts, int) and parts > 1:
        return None
    form = mod.get("form")
    key = _attr_key(mod["attr"])
    patch = ev.get("patch")
    items = patch if isinstance(patch, list) else []

    def fits(item: object) -> bool:
        if not isinstance(item, Mapping) or item.get("op") != "replace":
            return False
        path = item.get("path")
        if form == "value":
            return path is None
        return isinstance(path, str) and _attr_key(path) == key

    i = mod.get("i")
    if type(i) is int:
        if 0 <= i < len(items) and fits(items[i]):
            return None
        return f"form {form!r} contradicts patch[{i}], the PatchOp it is numbered with"
    if any(fits(item) for item in items):
        return None
    if form == "value":
        return "form 'value' but the event's patch has no path-less replace"
    return "form 'path' but no replace in the event's patch names this attribute's path"


def _no_manager(key: str, value: object) -> bool:
    """A manager replaced by one without an id (``{"value": ""}``, no ``value``): both SPs
    tried store it so, and the manager it had is gone (faith19's trial): a clear, not a
    change to nothing (before, no reference and no clear: ``user.noop``)."""
    if key != ENTERPRISE_MANAGER or not isinstance(value, Mapping):
        return False
    ref = _get_ci(value, "value")
    return ref is None or ref == ""


def _ref_attr_name(key: str) -> str:
    return key.rsplit(":", 1)[-1] if key.startswith("urn:") else key


def _unit_verbs(prefix: str, op: str, key: str, value: object, *, put: bool) -> set[str]:
    if (prefix, key) in _MULTI:
        add, remove = _MULTI[(prefix, key)]
        if put:
            return {"update"}  # a PUT restates the whole resource: no per-attribute intent
        non_empty = value not in (None, [], {})
        if op == "add":
            return {add} if non_empty else {"update"}
        if op == "remove":
            return {remove}
        return {add, remove} if non_empty else {remove}
    if prefix == "user" and key == "password":
        return {"update"} if op == "remove" else {"password.set"}
    if prefix == "user" and key == "active" and op != "remove":
        b = as_bool(value)
        if b is False:
            return {"deactivate"}
        if b is True and not put:  # every PUT restates active: true
            return {"activate"}
    return {"update"}


def parse_request(
    op: str,
    rt: str,
    body: bytes | str | Mapping[str, Any] | None,
    *,
    ocsf: str = "1.8",
    secret_attrs: Collection[str] = ("password",),
    digest_attrs: Collection[str] = (),
    ref_pid: Callable[[str, str], bytes] | None = None,
) -> RequestIntent:
    """Derive ``patch``, ``mods``, ``refs`` and ``acts`` from a SCIM write request body.

    ``op`` is the SCIM operation (:func:`op_for_method` maps HTTP methods). ``body`` is the
    raw JSON (parsed strictly: UTF-8, no duplicate keys, no NaN) or an already parsed object;
    DELETE takes none.

    * PatchOp (RFC 7644 §3.5.2): ``op`` case is normalised (Entra sends ``"Replace"``); both
      the ``path`` form and the path-less form (a value object, extension URNs expanded) are
      understood; string booleans (``"False"``) for ``active`` become booleans. Each
      operation becomes a ``patch`` item with ``v_d`` = :func:`jcs_digest` of its value
      (omitted when the value touches a secret attribute or pseudonymised members).
    * PUT/POST: each attribute in the body becomes a ``mods`` entry with its new value.
    * ``mods`` values are JCS text, or ``*_d`` digests for ``digest_attrs`` and for values
      over :data:`MAX_MOD_VALUE`; ``secret_attrs`` (lower case; ``password``) are recorded
      only as changed, never with a value or digest (SCIM.md §4.3 step 8).
    * ``ref_pid(member_rt, member_id) -> 16 bytes``, if given, turns Group member ids into
      ``refs`` pseudonyms and keeps them out of ``mods`` and ``patch`` paths (SCIM.md §4.3
      step 5); use :func:`client.scim.leaf.pid` with the member's pseudonym key.
    * ``acts``: what the request asks for. PATCH add/remove/replace on ``members``,
      ``roles``, ``entitlements`` → add/grant, remove/revoke, both; ``active`` → activate or
      deactivate; ``password`` → ``user.password.set``. PUT only claims ``deactivate``
      (``active: false``) and ``password.set``, since it restates every attribute. POST adds
      member adds and grants for non-empty multi-valued attributes.

    Raises :class:`EventFormatError` for a body that is not a well-formed request.
    """
    if isinstance(body, dict) and (op == "create" or op == "patch"):
        fast = _fast_intent(op, rt, body, ocsf, secret_attrs, digest_attrs, ref_pid)
        if fast is not None:
            return fast
    return _parse_request(op, rt, body, ocsf, secret_attrs, digest_attrs, ref_pid)


def _parse_request(
    op: str,
    rt: str,
    body: bytes | str | Mapping[str, Any] | None,
    ocsf: str,
    secret_attrs: Collection[str],
    digest_attrs: Collection[str],
    ref_pid: Callable[[str, str], bytes] | None,
) -> RequestIntent:
    """:func:`parse_request`'s general path (every body shape); the reference that
    :func:`_fast_intent` is tested equal to."""
    _check_op(op)
    prefix = _prefix(rt)
    secret = frozenset(a.lower() for a in secret_attrs)
    b = _Builder(prefix, secret, frozenset(a.lower() for a in digest_attrs), ref_pid, [], [])
    if op == "delete":
        if body not in (None, b"", ""):
            raise EventFormatError("DELETE takes no body")
        return RequestIntent(acts=_acts(prefix, ["delete"], ocsf))
    if body is None:
        raise EventFormatError(f"{op} needs a request body")
    obj = _load_body(body)
    verbs: set[str] = set()
    patch: list[dict[str, Any]] | None = None
    if op == "patch":
        patch = []
        ops = _get_ci(obj, "operations")
        if not isinstance(ops, list) or not ops:
            raise EventFormatError("PatchOp needs a non-empty 'Operations' array")
        for i, raw in enumerate(ops):
            if not isinstance(raw, dict):
                raise EventFormatError(f"Operations[{i}] is not an object")
            pop = _get_ci(raw, "op")
            if not isinstance(pop, str) or pop.lower() not in ("add", "remove", "replace"):
                raise EventFormatError(f"Operations[{i}].op must be add, remove or replace")
            pop = pop.lower()
            path = _get_ci(raw, "path")
            has_value = any(k.lower() == "value" for k in raw)
            value = _get_ci(raw, "value")
            if path is not None and (not isinstance(path, str) or not path):
                raise EventFormatError(f"Operations[{i}].path must be a non-empty string")
            if path is None:
                if pop == "remove":
                    raise EventFormatError(f"Operations[{i}]: remove needs a path")
                if not isinstance(value, dict) or not value:
                    raise EventFormatError(f"Operations[{i}]: path-less value must be an object")
                units = _expand(value)
            else:
                units = [(path, value)]
            hide = False
            b.op_i = i
            for upath, uvalue in units:
                key = _attr_key(upath)
                hide = hide or b.is_secret(key) or b.pseudonymised(key)
                b.mod(
                    pop,
                    upath,
                    uvalue,
                    has_value or path is None,
                    patch=True,
                    form="value" if path is None else "path",
                )
                verbs |= _unit_verbs(prefix, pop, key, uvalue, put=False)
            item: dict[str, Any] = {"op": pop}
            if path is not None:
                # Filters may name other subjects; pseudonymised members keep only the attr.
                item["path"] = b.safe_path(path, _attr_key(path), pop)
            if has_value and not hide:
                item["v_d"] = jcs_digest(value)
            patch.append(item)
        b.number_ops()
    else:
        creating = op == "create"
        for upath, uvalue in _expand(obj):
            key = _attr_key(upath)
            if key in _PUT_IGNORED:
                continue
            b.mod("add" if creating else "replace", upath, uvalue, True)
            if creating:
                if (prefix, key) in _MULTI and uvalue not in (None, [], {}):
                    verbs.add(_MULTI[(prefix, key)][0])
            else:
                verbs |= _unit_verbs(prefix, "replace", key, uvalue, put=True)
        verbs.add("create" if creating else "update")
    return RequestIntent(
        acts=_acts(prefix, verbs or {"update"}, ocsf),
        patch=patch or None,
        mods=b.mods or None,
        refs=b.refs or None,
    )


# --- intent: the common shapes, directly ----------------------------------------------------

# A plain top-level attribute name, optionally with one sub-attribute (``name.givenName``):
# no URN, no filter, so the path is its own ``attr`` and its key is the head, lower-cased.
_SIMPLE_PATH = re.compile(r"[A-Za-z][A-Za-z0-9_$-]{0,127}(?:\.[A-Za-z][A-Za-z0-9_$-]{0,127})?")
_PATCH_OP_KEYS = frozenset({"op", "path", "value"})


_cached_prefix = functools.lru_cache(maxsize=256)(_prefix)


@functools.lru_cache(maxsize=64)
def _lowered(attrs: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    return frozenset(a.lower() for a in attrs)


def _lower_set(attrs: Collection[str]) -> frozenset[str]:
    if type(attrs) is tuple or type(attrs) is frozenset:
        try:  # (no contextlib.suppress: an object made per call, twice per write)
            return _lowered(attrs)
        except TypeError:  # unhashable: fails below as in the general path
            pass
    return frozenset(a.lower() for a in attrs)


@functools.lru_cache(maxsize=256)
def _acts_template(
    prefix: str, verbs: frozenset[str], ocsf: str
) -> tuple[tuple[str, int, int], ...]:
    return tuple((a["a"], a["ocsf"][0], a["ocsf"][1]) for a in _acts(prefix, verbs, ocsf))


def _fast_acts(prefix: str, verbs: set[str], ocsf: str) -> list[dict[str, Any]]:
    """:func:`_acts`, from a cached template (fresh lists and dicts: callers own them)."""
    return [{"a": a, "ocsf": [c, i]} for a, c, i in _acts_template(prefix, frozenset(verbs), ocsf)]


def _fast_intent(
    op: str,
    rt: str,
    obj: dict[str, Any],
    ocsf: str,
    secret_attrs: Collection[str],
    digest_attrs: Collection[str],
    ref_pid: Callable[[str, str], bytes] | None,
) -> RequestIntent | None:
    """:func:`_parse_request` for the common shapes of an already parsed body, or None
    (then the general path decides, errors included).

    The shapes: a POST body whose attribute names are plain (:data:`_SIMPLE_PATH`, no
    ``.``: no URN, no extension object), and a PatchOp whose operations each have exactly
    ``op``, ``path`` (plain or ``attr.sub``) and optionally ``value``, on attributes that
    are not pseudonymised references. What is built is what the general path builds for
    them, step for step (``tests/adapters/test_fast_intent.py`` holds the two equal)."""
    if ocsf not in OCSF_VERSIONS:
        return None
    prefix = _cached_prefix(rt)
    secret = _lower_set(secret_attrs)
    digest = _lower_set(digest_attrs)
    refs = _REF_ATTRS if ref_pid is not None else None
    mods: list[dict[str, Any]] = []
    verbs: set[str] = set()
    try:
        if op == "create":
            for k, v in obj.items():
                if type(k) is not str or "." in k or not _SIMPLE_PATH.fullmatch(k):
                    return None
                key = k.lower()
                if key in _PUT_IGNORED:
                    continue
                if refs is not None and (prefix, key) in refs:
                    return None
                entry: dict[str, Any] = {"attr": k}
                if key not in secret:
                    if key == "active" and prefix == "user":
                        b = as_bool(v)
                        if b is not None:
                            v = b
                    entry.update(_fast_value("new", key, v, digest))
                mods.append(entry)
                if (prefix, key) in _MULTI and v not in (None, [], {}):
                    verbs.add(_MULTI[(prefix, key)][0])
            verbs.add("create")
            return RequestIntent(acts=_fast_acts(prefix, verbs, ocsf), mods=mods or None)
        ops = None
        for k, v in obj.items():
            if type(k) is not str:
                return None
            if k.lower() == "operations":
                ops = v
                break
        if type(ops) is not list or not ops:
            return None
        patch: list[dict[str, Any]] = []
        for raw in ops:
            if type(raw) is not dict or not raw.keys() <= _PATCH_OP_KEYS:
                return None
            pop, path = raw.get("op"), raw.get("path")
            if type(pop) is not str or type(path) is not str or not _SIMPLE_PATH.fullmatch(path):
                return None
            pop = pop.lower()
            if pop not in ("add", "remove", "replace"):
                return None
            key = path.partition(".")[0].lower()
            if refs is not None and (prefix, key) in refs:
                return None
            has_value = "value" in raw
            value = raw.get("value")
            entry = {"attr": path, "op": pop}
            mvalue = value
            if key == "active" and prefix == "user":
                b = as_bool(value)
                if b is not None:
                    mvalue = b
            hide = key in secret
            data = b""  # the canonical JSON of mvalue, when made
            if not hide and has_value:
                side = "old" if pop == "remove" else "new"
                text = jcs(mvalue)
                data = text.encode("utf-8")
                entry.update(_fast_value_of(side, key, text, data, digest))
            entry.update(_form_of(prefix, key, pop, "path"))
            mods.append(entry)
            verbs |= _unit_verbs(prefix, pop, key, value, put=False)
            item: dict[str, Any] = {"op": pop, "path": path}
            if has_value and not hide:
                # v_d is the digest of the same canonical text when the value is the one
                # the mods entry states (not a text boolean of "active" made a boolean):
                # encoded once, not again for the digest
                item["v_d"] = (
                    hashlib.sha256(data).digest() if mvalue is value else jcs_digest(value)
                )
            patch.append(item)
        return RequestIntent(
            acts=_fast_acts(prefix, verbs or {"update"}, ocsf), patch=patch, mods=mods
        )
    except EventFormatError:
        return None  # the general path raises it, at the same attribute


def kept_digest(path: str, value: object, digest_attrs: Collection[str]) -> str:
    """The digest the log's state keeps of an attribute it holds only so (not a security
    attribute: ``tlog.scim.effects``, ``_Run.other``) for ``value`` at ``path``, as a
    ``mods`` entry stating it would carry it (:meth:`_Builder.value_text`: its JSON text,
    or the text's digest for ``digest_attrs``, lower case, and large values): SHA-256 of
    that, 32 hex digits. An SP's answer to a PUT records it for each such attribute
    (``x.result.other``), so what became of one the PUT left out is known (faith20)."""
    got = _fast_value("new", _attr_key(path), value, frozenset(digest_attrs))
    raw = got["new"].encode("utf-8") if "new" in got else got["new_d"]
    return hashlib.sha256(raw).hexdigest()[:32]


def _fast_value(side: str, key: str, value: object, digest: frozenset[str]) -> dict[str, Any]:
    """``_Builder.value_text`` as an entry's item: ``{side: text}`` or ``{side_d: digest}``."""
    text = jcs(value)
    return _fast_value_of(side, key, text, text.encode("utf-8"), digest)


def _fast_value_of(
    side: str, key: str, text: str, data: bytes, digest: frozenset[str]
) -> dict[str, Any]:
    """:func:`_fast_value` of a value whose canonical JSON ``text`` (``data`` its UTF-8)
    is made already."""
    if key in digest or len(data) > MAX_MOD_VALUE:
        return {side + "_d": hashlib.sha256(data).digest()}
    return {side: text}
