"""A compiled decoder for events in their JSON form: the same accept set, in C.

:mod:`client.scim.event` validates an event with a Python walk over its schema (a function
call per field) after ``json.loads`` with a Python hook per object, then encodes it with
cbor2's ``canonical=True`` (which sorts every map by encoding each key). Per event that is
a few hundred µs. This module derives, from that same schema (``event._EVENT``), msgspec
``Struct`` types that check in msgspec's C decoder what can be checked there: exact types
(no bool for int, no float for int), closed field sets (``forbid_unknown_fields``),
required fields, enumerations (``Literal``), integer ranges, string and list lengths, the
control-character and syntax rules (``pattern``), and the length of base64 fields. Their
fields are declared in deterministic CBOR key order (RFC 8949 §4.2.1: length first, then
bytewise), so the decoded event, turned into dicts, is already in canonical order and
cbor2's plain (C, non-sorting) encoder writes the canonical bytes.

What msgspec cannot express is checked afterwards in Python, only where present: maps that
must not be empty, ``mods[].old``/``new`` being JSON text, ``src.ip`` being an IP address,
``x`` (the extension, any JSON-model value), the cross-field rules (``_rules``) and the
base64 fields' canonical form (``_unb64``, by round trip as ``b64decode_strict`` does).

**The fast path only ever accepts.** Any failure of a check returns ``None`` and the
caller runs the reference path of :mod:`client.scim.event`, which then accepts or rejects
with its precise message. String limits are in UTF-8 bytes: for an ASCII body without
``\\u`` escapes msgspec's limit in characters is exact; otherwise a string may have at most
a quarter of its byte limit in characters (a longer one takes the reference path), and
msgspec refuses invalid UTF-8 and lone surrogates as the reference's decoding does.
So the accept set is the reference's, provided that what the fast path accepts the
reference accepts too, with the same event and the same bytes: that is what
``tests/scim/test_fastjson.py`` checks, with hypothesis, on random and mutated events.

Duplicate keys (which the reference refuses and msgspec reads last-wins) are detected by
counting colons: a JSON text has one ``:`` per object member plus those inside strings
(written as is or as ``\\u003a``). msgspec's re-encoding of what it decoded has the same
strings and one ``:`` per member it kept, so the two counts are equal if and only if no
object repeated a key; a repeated key drops a member and at least its colon.
"""

from __future__ import annotations

import binascii
import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import cbor2
import msgspec

from client.scim import event as _ev
from client.scim.jsonstrict import strict_json

__all__ = [
    "check_event_json",
    "check_event_json_canonical",
    "decode_batch",
    "decode_event_json",
]

_ID_OK = r"[^\x00-\x1f\x7f-\x9f]"
_TEXT_OK = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# Standard padded base64 of 32 / 16 bytes is 44 / 24 characters.
_B64_CHARS = {32: 44, 16: 24}


def _canonical_order(names: Any) -> list[str]:
    return sorted(names, key=lambda k: (len(k.encode()), k.encode()))


class _Compiler:
    """Turns the schema of :mod:`client.scim.event` into msgspec types, and notes the few
    rules left for Python (they must sit where the post-check looks for them)."""

    def __init__(self, controls: bool, ascii_: bool) -> None:
        # controls=False: for bodies in which no decoded string can hold a control character
        # (_decoders), the per-string control-character patterns are left out.
        # ascii_=False: for bodies with UTF-8 beyond ASCII, where msgspec's length in
        # characters is not the length in bytes: a string may have at most a quarter of
        # its byte limit in characters (4 bytes per character at most), so that what is
        # accepted surely fits; a longer one takes the reference path.
        self.controls = controls
        self.divisor = 1 if ascii_ else 4
        self.n = 0
        self.json_text: set[str] = set()
        self.ip: set[str] = set()
        self.extension: set[str] = set()
        self.may_be_empty: set[str] = set()  # maps with no required field

    def type_of(self, spec: Any, path: str) -> Any:
        if isinstance(spec, _ev.IPSpec):
            self.ip.add(path)
            return self.type_of(_ev.TextSpec(64), path)
        if isinstance(spec, _ev.TextSpec):
            ok = _TEXT_OK if spec.free else _ID_OK
            pattern: str | None
            max_chars = spec.max_bytes // self.divisor
            if spec.regex is not None:
                # Restricted to ASCII here (the schema's regexes are), so chars == bytes. The
                # lookaheads only where the body allows what they refuse: each scans the
                # whole string again (they tripled the cost of a UUID's match).
                ascii_only = r"(?=[\x00-\x7f]*\Z)" if self.divisor != 1 else ""
                no_controls = rf"(?={ok}*\Z)" if self.controls else ""
                pattern = rf"^{ascii_only}{no_controls}(?:{spec.regex.pattern})\Z"
                max_chars = spec.max_bytes
            else:
                pattern = rf"^{ok}*\Z" if self.controls else None
            if spec.json_text:
                self.json_text.add(path)
            meta = msgspec.Meta(min_length=1, max_length=max_chars, pattern=pattern)
            return Annotated[str, meta]
        if isinstance(spec, _ev.BytesSpec):
            # The text's length here; the rest (alphabet, padding, canonical trailing bits,
            # the size) by _unb64's round trip, cheaper than a pattern.
            chars = _B64_CHARS[spec.size]
            return Annotated[str, msgspec.Meta(min_length=chars, max_length=chars)]
        if isinstance(spec, _ev.UIntSpec):
            return Annotated[int, msgspec.Meta(ge=spec.lo, le=spec.hi)]
        if isinstance(spec, _ev.EnumSpec):
            return Literal[spec.values]
        if isinstance(spec, _ev.ConstSpec):
            return Literal[spec.value]
        if isinstance(spec, _ev.ListSpec):
            item = self.type_of(spec.item, path + "[]")
            return Annotated[list[item], msgspec.Meta(min_length=1, max_length=spec.max_items)]  # type: ignore[valid-type]
        if isinstance(spec, _ev.TupleSpec):
            # A list of fixed length (the reference's value is a list, not a tuple).
            n = len(spec.items)
            if any(s != spec.items[0] for s in spec.items):
                raise TypeError("only tuples of one item type")  # pragma: no cover
            item = self.type_of(spec.items[0], path + "[]")
            return Annotated[list[item], msgspec.Meta(min_length=n, max_length=n)]  # type: ignore[valid-type]
        if isinstance(spec, _ev.ExtensionSpec):
            self.extension.add(path)
            return dict[str, Any]
        if isinstance(spec, _ev.MapSpec):
            if not any(req for _, req in spec.fields.values()):
                self.may_be_empty.add(path)
            fields: list[tuple[str, Any, Any]] = []
            for name in _canonical_order(spec.fields):
                sub, required = spec.fields[name]
                t = self.type_of(sub, f"{path}.{name}")
                if required:
                    fields.append((name, t, msgspec.NODEFAULT))
                else:
                    fields.append((name, t | msgspec.UnsetType, msgspec.UNSET))
            self.n += 1
            return msgspec.defstruct(
                f"_S{self.n}", fields, kw_only=True, forbid_unknown_fields=True, gc=False
            )
        raise TypeError(f"no msgspec type for {spec!r}")  # pragma: no cover - import time


def _compile(
    controls: bool, ascii_: bool
) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    c = _Compiler(controls, ascii_)
    event_t = c.type_of(_ev.EVENT_SPEC, "$")
    # The post-check below handles these rules at exactly these places; a schema change
    # that adds one elsewhere must fail here (at import), not be silently skipped.
    if (
        c.json_text != {"$.mods[].old", "$.mods[].new"}
        or c.ip != {"$.src.ip"}
        or c.extension != {"$.x"}
        or c.may_be_empty != {"$.idp", "$.ver", "$.src", "$.err"}
        or set(_ev.BYTES_FIELDS) != {"req.dig", "actor.tok_d", "actor.x5t_s256", "actor.pid",
                                     "actor.sd", "patch[].v_d", "mods[].old_d", "mods[].new_d",
                                     "refs[].pid"}
    ):  # fmt: skip
        raise ImportError("client.scim.fastjson does not match client.scim.event's schema")
    batch_t = msgspec.defstruct(
        "_Batch",
        [("events", list[event_t])],  # type: ignore[valid-type]
        forbid_unknown_fields=True,
    )
    return msgspec.json.Decoder(event_t), msgspec.json.Decoder(batch_t)


_LEAN = _compile(controls=False, ascii_=True)
_ASCII = _compile(controls=True, ascii_=True)
_UTF8 = _compile(controls=True, ascii_=False)
# What a JSON string needs to decode to a string with a C0 control or DEL in it, in an ASCII
# body without \u escapes (raw C0 bytes are not allowed in JSON strings at all).
_CONTROL_SIGNS = (b"\\b", b"\\f", b"\\n", b"\\r", b"\\t", b"\x7f")
# A backslash that does not start a \" pair (one at the very end of the body included).
_OTHER_ESCAPE = re.compile(rb'\\(?!")')


def _decoders(body: bytes) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    if not body.isascii():
        return _UTF8
    # Usually the only escapes are \" (quotes inside the JSON texts of mods). When every
    # backslash starts a \" pair, there is no \u and no control-character escape, so only a
    # raw DEL could put a control character in a string. One regex scan and a find instead
    # of up to eight scans. Anything but _UTF8 means "no \u in the body": _colons relies
    # on it.
    if _OTHER_ESCAPE.search(body) is None:
        return _ASCII if b"\x7f" in body else _LEAN
    if b"\\u" in body:
        return _UTF8  # \\u escapes may stand for anything but a lone surrogate
    return _ASCII if any(sign in body for sign in _CONTROL_SIGNS) else _LEAN


_encoder = msgspec.json.Encoder()


class _Refused(ValueError):
    """Something the reference path must decide (and name)."""


_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


def _unb64(v: str, size: int) -> bytes:
    """``b64decode_strict(v, size=size)``: standard padded base64 of exactly ``size`` bytes
    in its one canonical form. Whatever the lenient decoder skipped or read differently
    (junk, URL-safe letters, missing or misplaced padding, non-zero trailing bits) makes
    the canonical re-encoding differ from ``v``."""
    raw = _a2b(v)
    if len(raw) != size or _b2a(raw, newline=False) != v.encode():
        raise _Refused
    return raw


def _sorted_json(v: Any) -> Any:
    """``x`` with every map in canonical key order (its keys are free)."""
    if type(v) is dict:
        return {k: _sorted_json(v[k]) for k in _canonical_order(v)}
    if type(v) is list:
        return [_sorted_json(i) for i in v]
    return v


_EXTENSION = _ev.ExtensionSpec()
# A JSON string of printable ASCII with no quote or backslash inside: JSON text for the
# reference (strict_json) as for msgspec.
_PLAIN_STRING = re.compile(r'"[ !#-\[\]-~]*"').fullmatch
_any_decoder = msgspec.json.Decoder()


def _json_text(v: str) -> None:
    """Raise unless ``v`` is JSON text as the reference reads it (``strict_json`` with
    floats allowed). msgspec parses short, shallow texts (it is no more lenient there:
    NaN, out-of-range numbers, lone surrogates and bad syntax fail in both), the colon
    count rules out repeated keys (only a text with an object can repeat one); anything
    else goes to ``strict_json`` itself. A string of printable ASCII without escapes (most
    ``new`` texts of a create: a userName, a displayName) is JSON text as it stands: one
    regex match instead of the decode (~2.2 k instructions instead of ~4 k)."""
    if _PLAIN_STRING(v) is not None:
        return
    if len(v) > 1024 or "\\u" in v:
        strict_json(v, floats=True)
        return
    objects = v.count("{")
    if objects + v.count("[") > 32:
        strict_json(v, floats=True)
        return
    decoded = _any_decoder.decode(v)
    if objects and v.count(":") != _encoder.encode(decoded).count(b":"):
        raise ValueError("repeated key in JSON text")


def _rules(ev: dict[str, Any]) -> None:
    """:func:`client.scim.event.check_rules`, minus the JSON-text sides of ``mods`` (checked
    in :func:`_finish`'s loop over them), without building a message: the fast path only
    needs to know that the reference would refuse. ``test_fast_rules_equal_the_reference``
    holds the two equal."""
    if ev["outcome"] == "success":
        if "err" in ev or "acts" not in ev or "rid" not in ev:
            raise _Refused
        st = ev["res"]["st"]
        if st < 200 or st > 299:
            raise _Refused
    elif "err" not in ev or ("rid" not in ev and ev["op"] != "create"):
        raise _Refused
    corr = ev["corr"]
    if len(corr) > 1 and (
        ("bulk_req" in corr) is not ("seq" in corr) or ("bulk_id" in corr and "seq" not in corr)
    ):
        raise _Refused
    if "acts" in ev:
        acts = ev["acts"]
        if len(acts) > 1 and len({a["a"] for a in acts}) != len(acts):
            raise _Refused


def _finish(
    ev: dict[str, Any], cbor: bool = True, ip: Callable[[str], object] = ipaddress.ip_address
) -> bytes:
    """The Python part of the checks on one decoded event (in canonical order, base64
    fields still text of the right length); decodes the base64 fields in place; returns the
    canonical CBOR. Raises on anything the reference path might see differently.

    ``cbor=False`` (:func:`check_event_json`, when the CBOR cannot exceed the size limit):
    returns ``b""`` without encoding. ``ip`` checks ``src.ip`` (raises ValueError)."""
    if ("idp" in ev and not ev["idp"]) or ("ver" in ev and not ev["ver"]):
        raise _Refused
    if "src" in ev:
        src = ev["src"]
        if not src:
            raise _Refused
        if "ip" in src:
            ip(src["ip"])
    if "err" in ev and not ev["err"]:
        raise _Refused
    req = ev["req"]
    req["dig"] = _unb64(req["dig"], 32)
    actor = ev["actor"]
    if "pid" in actor or "sd" in actor:
        raise _Refused  # the log's pseudonymous form (rare): the reference path decides
    if "tok_d" in actor:
        actor["tok_d"] = _unb64(actor["tok_d"], 32)
    if "x5t_s256" in actor:
        actor["x5t_s256"] = _unb64(actor["x5t_s256"], 32)
    if "patch" in ev:
        for p in ev["patch"]:
            if "v_d" in p:
                p["v_d"] = _unb64(p["v_d"], 32)
    if "mods" in ev:
        for m in ev["mods"]:
            # A side is a JSON text or a digest, never both (check_rules).
            if "new" in m:
                if "new_d" in m:
                    raise _Refused
                _json_text(m["new"])
            elif "new_d" in m:
                m["new_d"] = _unb64(m["new_d"], 32)
            if "old" in m:
                if "old_d" in m:
                    raise _Refused
                _json_text(m["old"])
            elif "old_d" in m:
                m["old_d"] = _unb64(m["old_d"], 32)
    if "refs" in ev:
        for r in ev["refs"]:
            r["pid"] = _unb64(r["pid"], 16)
    if "x" in ev:
        _EXTENSION.check(ev["x"], "$.x")
        ev["x"] = _sorted_json(ev["x"])
    _rules(ev)
    if not cbor:
        return b""
    data = cbor2.dumps(ev)
    if len(data) > _ev.MAX_EVENT_SIZE:
        raise _Refused
    return data


_FAIL = (msgspec.ValidationError, msgspec.DecodeError, ValueError, RecursionError, TypeError)


def _colons(body: bytes, escapes: bool = True) -> int:
    """The colons of a JSON text, those written as ``\\u003a`` escapes included (a literal
    backslash followed by "u003a" counts too: an overcount only ever makes the repeated-key
    check fail, sending the body to the reference path). ``escapes=False``: the caller
    knows the body has no ``\\u`` (:func:`_decoders` did not choose ``_UTF8``), so the
    search for one is left out."""
    n = body.count(b":")
    if escapes and b"\\u" in body:
        n += body.count(b"\\u003a") + body.count(b"\\u003A")
    return n


def decode_batch(body: bytes) -> list[tuple[_ev.Event, bytes]] | None:
    """The events of a ``{"events": [...]}`` JSON body with their canonical encodings, each
    exactly as :func:`client.scim.event.adopt_json_event` would give it; or ``None``: then
    the caller must take the reference path (which accepts, or says what is wrong)."""
    try:
        decoders = _decoders(body)
        decoded = decoders[1].decode(body)
        if not decoded.events:
            return None
        if _colons(body, decoders is _UTF8) != _encoder.encode(decoded).count(b":"):
            return None  # a repeated key somewhere
        events = msgspec.to_builtins(decoded.events)
        return [(ev, _finish(ev)) for ev in events]
    except _FAIL:
        return None


def decode_event_json(body: bytes) -> tuple[_ev.Event, bytes] | None:
    """One event's JSON form, as :func:`client.scim.event.event_from_json` would give it,
    with its canonical encoding; or ``None`` (take the reference path)."""
    if len(body) > _ev.MAX_JSON_SIZE:
        return None
    try:
        decoders = _decoders(body)
        decoded = decoders[0].decode(body)
        if _colons(body, decoders is _UTF8) != _encoder.encode(decoded).count(b":"):
            return None  # a repeated key somewhere
        ev = msgspec.to_builtins(decoded)
        return ev, _finish(ev)
    except _FAIL:
        return None


# Canonical CBOR is at most 3 bytes for each byte of the compact JSON text of the same value
# (each string: a 1-5 byte head for its quotes, at least 2; base64 fields shrink; integers,
# true/false/null and container heads are no longer in CBOR than in JSON; a float, 9 bytes,
# is at least 3 characters in JSON). Below this text size the CBOR cannot exceed the limit.
# tests/adapters/test_fast_event.py checks the bound.
CBOR_PER_JSON_BYTE = 3
_NO_CBOR_BELOW = _ev.MAX_EVENT_SIZE // CBOR_PER_JSON_BYTE


@functools.lru_cache(maxsize=1024)
def _ip_cached(value: str) -> bool:
    ipaddress.ip_address(value)  # ValueError (not cached) for what is not an address
    return True


def check_event_json(text: bytes) -> _ev.Event | None:
    """:func:`decode_event_json` for a text the caller encoded itself from a ``dict`` and
    then compares with the result (``client.adapters.exchange.validated_event``): the
    event, or ``None`` (take the reference path). Two steps are skipped where they cannot
    matter: the repeated-key count (msgspec's sorted encoder writes ``dict`` keys that are
    text only, distinct keys as distinct texts, and refuses any other key; a member lost
    any other way would make the result differ from the ``dict``), and the CBOR encoding
    when the text is too short for the CBOR to exceed ``MAX_EVENT_SIZE`` (the only use of
    it here). ``src.ip`` checks are cached (a proxy sees the same few client addresses)."""
    got = _checked(text, len(text) > _NO_CBOR_BELOW)
    return None if got is None else got[0]


def check_event_json_canonical(text: bytes) -> tuple[_ev.Event, bytes] | None:
    """:func:`check_event_json` with the event's canonical CBOR (always encoded): what
    :func:`decode_event_json` gives for the same text, less the repeated-key count (see
    there). The adapters hand it to the relay, whose commitment check then needs no decode
    of the outbox's JSON (``client.adapters.receipts.check_commitments``)."""
    return _checked(text, True)


def _checked(text: bytes, cbor: bool) -> tuple[_ev.Event, bytes] | None:
    if len(text) > _ev.MAX_JSON_SIZE:
        return None
    try:
        ev: dict[str, Any] = msgspec.to_builtins(_decoders(text)[0].decode(text))
        data = _finish(ev, cbor=cbor, ip=_ip_cached)
    except _FAIL:
        return None
    return ev, data
