"""Strict deterministic CBOR (RFC 8949 §4.2.1 core deterministic encoding) on top of cbor2.

The data model is deliberately small, the JSON model minus floats plus byte strings:
``dict`` (text keys only), ``list``, ``str``, ``bytes``, ``int`` (CBOR major types 0/1, so
-2**64 .. 2**64-1), ``bool`` and ``None``. No floats, no tags, no other simple values. With
text keys only, cbor2's ``canonical=True`` length-first key order coincides with the §4.2.1
bytewise order (the header byte already sorts by length; SCIM.md §3.5), so cbor2 does the
encoding and this module only fences it in.

Decoding is strict in the other direction: a structural pre-scan rejects tags, floats,
simple values, indefinite lengths, non-shortest arguments and trailing bytes *before* cbor2
builds anything (so no tag decoder, shared reference or bignum ever runs); cbor2 then decodes
with duplicate keys refused; finally the value is re-encoded and must reproduce the input
byte for byte, which is what rules out unsorted maps. Each value therefore has exactly one
accepted encoding, and ``dumps_det(loads_det(b)) == b`` for every accepted ``b``.
"""

from __future__ import annotations

from typing import Any

import cbor2

from client.formats.note import FormatError

__all__ = [
    "MAX_DEPTH",
    "CborTooLarge",
    "EventFormatError",
    "check_det",
    "dumps_det",
    "loads_det",
]

MAX_DEPTH = 32
_UINT64_MAX = (1 << 64) - 1
_NINT64_MIN = -(1 << 64)


class EventFormatError(FormatError):
    """Malformed SCIM audit input: CBOR, JSON, event, leaf or request body.

    A subclass of :class:`client.formats.note.FormatError` (and so of ``ValueError``): callers that
    map malformed input to HTTP 400 need not know about it. The message says which rule
    broke and where (``at $.req.dig: ...``).
    """


class CborTooLarge(EventFormatError):
    """More data items than the caller's ``max_items`` (HTTP 413 rather than 400)."""


def _at(path: str, msg: str) -> EventFormatError:
    return EventFormatError(f"at {path}: {msg}")


def check_det(obj: object, *, max_depth: int = MAX_DEPTH, _path: str = "$") -> None:
    """Raise :class:`EventFormatError` unless ``obj`` is in the deterministic data model.

    A fast pass without path bookkeeping runs first (this is on every encode); only a
    rejected object is walked again to say where the problem is.
    """
    if not _fast_ok(obj, max_depth):
        _check_slow(obj, max_depth=max_depth, _path=_path)
        raise _at(_path, "not in the deterministic data model")  # pragma: no cover


def _utf8_ok(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fast_ok(obj: object, depth: int) -> bool:
    if depth < 0:
        return False
    t = type(obj)
    if obj is None or t is bool or t is bytes:
        return True
    if t is int:
        return _NINT64_MIN <= obj <= _UINT64_MAX  # type: ignore[operator]
    if t is str:
        return _utf8_ok(obj)  # type: ignore[arg-type]
    if t is list:
        return all(_fast_ok(item, depth - 1) for item in obj)  # type: ignore[attr-defined]
    if t is dict:
        return all(
            type(k) is str and _utf8_ok(k) and _fast_ok(v, depth - 1)
            for k, v in obj.items()  # type: ignore[attr-defined]
        )
    return False


def _check_slow(obj: object, *, max_depth: int = MAX_DEPTH, _path: str = "$") -> None:
    """The same rules as :func:`_fast_ok`, raising with the path of the first violation.

    Types are checked exactly (``type(x) is dict``, not ``isinstance``): a subclass such as
    an ``IntEnum`` or ``OrderedDict`` could encode differently from what a reader decodes.
    ``bool`` is allowed as itself, not as an int. Strings must be encodable as UTF-8 (no
    lone surrogates).
    """
    if max_depth < 0:
        raise _at(_path, "nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is bytes:
        return
    if t is int and isinstance(obj, int):
        if not _NINT64_MIN <= obj <= _UINT64_MAX:
            raise _at(_path, "integer does not fit in 64 bits (bignums are tags)")
        return
    if t is str and isinstance(obj, str):
        _check_utf8(obj, _path)
        return
    if t is list and isinstance(obj, list):
        for i, item in enumerate(obj):
            _check_slow(item, max_depth=max_depth - 1, _path=f"{_path}[{i}]")
        return
    if t is dict and isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) is not str:
                raise _at(_path, f"map key {k!r} is not a text string")
            _check_utf8(k, _path)
            _check_slow(v, max_depth=max_depth - 1, _path=f"{_path}.{k}")
        return
    if t is float:
        raise _at(_path, "floats are not allowed (put decimals in JSON text)")
    raise _at(_path, f"type {t.__name__} is not allowed in deterministic CBOR")


def _check_utf8(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _at(path, "string is not valid Unicode (lone surrogate)") from None


class _Reject(Exception):
    pass


def _ordered(obj: object, depth: int) -> Any:
    """``obj`` checked as :func:`_fast_ok` does, copied with every map in deterministic key
    order (encoded length, then bytewise: RFC 8949 §4.2.1 for text keys), so that cbor2's
    plain encoder, which keeps insertion order, writes the deterministic bytes. One walk
    instead of a check walk plus cbor2's ``canonical=True``, which sorts each map by
    encoding every key again."""
    if depth < 0:
        raise _Reject
    t = type(obj)
    if t is str:
        if not obj.isascii():  # type: ignore[attr-defined]
            obj.encode("utf-8")  # type: ignore[attr-defined]  # lone surrogates raise
        return obj
    if t is dict:
        keyed = []
        for k in obj:  # type: ignore[attr-defined]
            if type(k) is not str:
                raise _Reject
            kb = k.encode("utf-8")
            keyed.append((len(kb), kb, k))  # (len, kb) are unique: k itself never compared
        keyed.sort()
        d = depth - 1
        return {k: _ordered(obj[k], d) for _, _, k in keyed}  # type: ignore[index]
    if t is list:
        d = depth - 1
        return [_ordered(v, d) for v in obj]  # type: ignore[attr-defined]
    if obj is None or t is bool or t is bytes:
        return obj
    if t is int and _NINT64_MIN <= obj <= _UINT64_MAX:  # type: ignore[operator]
        return obj
    raise _Reject


def dumps_det(obj: object, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Validate ``obj`` as :func:`check_det` does, then encode it deterministically."""
    try:
        ordered = _ordered(obj, max_depth)
    except (_Reject, UnicodeEncodeError):
        check_det(obj, max_depth=max_depth)  # raises, saying where
        raise _at("$", "not in the deterministic data model") from None  # pragma: no cover
    return bytes(cbor2.dumps(ordered))


# --- decoding -------------------------------------------------------------------------------

_MAJOR_NAMES = ("uint", "nint", "bstr", "tstr", "array", "map", "tag", "simple/float")


def _scan(data: bytes, max_depth: int, max_items: int | None = None) -> None:
    """Walk the item structure without building values; reject what §4.2.1 or our model bans.

    Checks: well-formed headers, shortest argument encoding (RFC 8949 §4.2.1 first bullet),
    definite lengths only, no tags (major type 6), no floats or simple values other than
    false/true/null, lengths that fit in the input, nesting depth, no trailing bytes, and
    (``max_items``) the number of data items: a container header announces its count, so a
    hostile array is refused here, before anything is built.
    """
    n = len(data)
    pos = 0
    budget = n if max_items is None else max_items
    # Stack of "items still to read" per open container; the bottom entry is the top level.
    pending = [1]
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= n:
            raise EventFormatError("CBOR truncated")
        ib = data[pos]
        pos += 1
        major, ai = ib >> 5, ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai <= 27:
            width = 1 << (ai - 24)
            if pos + width > n:
                raise EventFormatError("CBOR truncated")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
            if major == 7:
                if ai == 24:
                    raise EventFormatError(f"CBOR simple value {arg} is not allowed")
                raise EventFormatError("CBOR floats are not allowed")
            # RFC 8949 §4.2.1: the argument must use the shortest form.
            if arg < (24 if ai == 24 else 1 << (4 * width)):
                raise EventFormatError(
                    f"CBOR {_MAJOR_NAMES[major]} argument {arg} not in shortest form"
                )
        elif ai == 31:
            raise EventFormatError("CBOR indefinite lengths are not allowed")
        else:
            raise EventFormatError(f"CBOR reserved additional information {ai}")
        if major in (0, 1):
            continue
        if major in (2, 3):
            if arg > n - pos:
                raise EventFormatError("CBOR truncated string")
            pos += arg
            continue
        if major in (4, 5):
            count = arg * 2 if major == 5 else arg
            if count > n - pos:  # every item needs at least one byte
                raise EventFormatError("CBOR truncated container")
            budget -= count
            if budget < 0:
                raise CborTooLarge(f"CBOR has more than {max_items} data items")
            if len(pending) > max_depth:
                raise EventFormatError("CBOR nested too deeply")
            pending.append(count)
            continue
        if major == 6:
            raise EventFormatError("CBOR tags are not allowed")
        # major 7 with a direct argument: false, true, null only.
        if arg not in (20, 21, 22):
            raise EventFormatError(f"CBOR simple value {arg} is not allowed")
    if pos != n:
        raise EventFormatError("trailing bytes after CBOR item")


def loads_det(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int | None = None) -> Any:
    """Decode deterministic CBOR strictly; raise :class:`EventFormatError` on anything else.

    Guarantees: the result is in the :func:`check_det` model and ``dumps_det(result) == data``.
    Rejected: tags, floats, simple values other than false/true/null, indefinite lengths,
    non-shortest integers and lengths, duplicate or non-text map keys, unsorted map keys,
    invalid UTF-8, truncation and trailing bytes. Strings are not Unicode-normalised. With
    ``max_items``, more data items than that (counted from container headers, before any
    value is built) raise :class:`CborTooLarge`.
    """
    if type(data) is not bytes:
        raise EventFormatError("CBOR input must be bytes")
    _scan(data, max_depth, max_items)
    try:
        obj = cbor2.loads(
            data,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            str_errors="strict",
            max_depth=max_depth + 1,
        )
    except cbor2.CBORDecodeError as exc:
        raise EventFormatError(f"bad CBOR: {_reason(exc)}") from None
    check_det(obj, max_depth=max_depth)
    if dumps_det(obj, max_depth=max_depth) != data:
        # The scan already ruled out non-shortest forms, so this is map key order.
        raise EventFormatError("CBOR not in deterministic encoding (map keys not sorted)")
    return obj


def _reason(exc: BaseException) -> str:
    # cbor2 chains the interesting part ("Duplicate map key: 'a'") under a generic message.
    msgs = []
    e: BaseException | None = exc
    while e is not None:
        msgs.append(str(e))
        e = e.__cause__ or e.__context__
    return ": ".join(m for m in msgs if m)
