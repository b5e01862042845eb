"""Decode a SCIM request or response body the way a service provider reads it.

An adapter that cannot read a body the SP applied would record a bare update and lose what
was done (a deactivation sent gzip-compressed is still a deactivation). So the adapter
reads bodies like an SP does:

* ``Content-Encoding``: ``gzip``/``x-gzip`` and ``deflate`` (zlib-wrapped, or the raw
  deflate some clients send), ``identity``; several codings (at most
  :data:`MAX_CODINGS`) are undone in reverse order.
  Decompression is bounded by ``max_size`` (a small compressed body must not expand into
  gigabytes in the adapter).
* Character set: the ``charset`` parameter of ``Content-Type`` (any codec Python knows:
  ``utf-16le``, ``utf-32``, ``iso-8859-1``...), else a byte-order mark (UTF-8, UTF-16,
  UTF-32), else RFC 4627 §3 detection from the NUL pattern of the first four bytes, else
  UTF-8. A BOM is dropped, as JSON parsers that accept it do (RFC 8259 §8.1).
* JSON: duplicate member names (compared case-insensitively, as SCIM attribute names are)
  are read **last wins**, the reading of the common JSON parsers SPs use, and flagged.

:func:`decode_body` never raises for a bad body: it returns ``error`` (a short reason with
no body content in it), so the caller can record that the body was not understood.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_CODINGS",
    "BodyTooLarge",
    "Decoded",
    "decode_body",
    "drain_refused_body",
    "header_param",
    "read_request_body",
]

DEFAULT_MAX_SIZE = 16 << 20
# Content codings undone at most (``identity`` aside): each may inflate up to max_size, so a
# body stacking hundreds of them (a few KiB) would cost the adapter gigabytes of inflation.
MAX_CODINGS = 4
MAX_FLAGGED_KEYS = 16


@dataclass
class Decoded:
    """A decoded body: the JSON value, how it was read (``notes``), or why it was not."""

    value: Any = None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # the objects of ``value`` read with a name twice (``notes["dup_keys"]``), by id(), each
    # with those names in lower case: where the duplicates are, so a bulk answer's results
    # free of them can still be read (faith26). Never in an event.
    twice_in: dict[int, set[str]] = field(default_factory=dict, repr=False, compare=False)
    # those objects, held so that no id in twice_in is another's (one dropped by a later
    # duplicate of its own name would be freed, its id given to an object made after)
    twice_held: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


class _BodyError(Exception):
    pass


def header_param(value: str | None, name: str) -> str | None:
    """A parameter of a header like ``Content-Type`` (``charset``), lower-cased, unquoted.
    Parameters are split as RFC 9110 §5.6.6 reads them: a quoted value (a quoted-string,
    ``\\`` escapes) is one value whatever it holds, so ``foo="x; charset=latin1";
    charset=utf-8`` names UTF-8, as an SP's parser reads it (faith26; before, the split at
    each ``;`` found the quoted text's ``charset`` first and the body was decoded as
    Latin-1 while the SP read UTF-8). A name given twice with different values is
    :data:`NAMED_TWICE` (:func:`header_params` has them): parsers differ on which they
    take (Werkzeug the last, Python's ``email`` the first)."""
    got = header_params(value, name)
    if len(got) > 1:
        return NAMED_TWICE
    return got[0] if got else None


NAMED_TWICE = "\0named twice"  # header_param's value of a parameter given two values


def header_params(value: str | None, name: str) -> list[str]:
    """Each distinct non-empty value of the parameter ``name`` (:func:`header_param`'s
    reading), in order."""
    if not value:
        return []
    parts = value.split(";")[1:] if '"' not in value else _quoted_split(value)[1:]
    got: list[str] = []
    for part in parts:
        k, sep, v = part.partition("=")
        if sep and k.strip().lower() == name:
            v = v.strip()
            if v[:1] == '"':
                v = _unquote(v)
            v = v.strip().lower()
            if v and v not in got:
                got.append(v)
    return got


def _quoted_split(value: str) -> list[str]:
    """``value`` split at each ``;`` outside a quoted-string (RFC 9110 §5.6.4)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def _unquote(v: str) -> str:
    """A quoted-string's content (its quotes dropped, each ``\\x`` read as ``x``)."""
    out: list[str] = []
    escaped = False
    for ch in v[1:]:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            break
        else:
            out.append(ch)
    return "".join(out)


def _inflate(data: bytes, wbits: int, max_size: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, max_size + 1)
    if len(out) > max_size or d.unconsumed_tail:
        raise _BodyError(f"decoded body larger than {max_size} bytes")
    out += d.flush()
    if len(out) > max_size:
        raise _BodyError(f"decoded body larger than {max_size} bytes")
    if not d.eof:
        raise _BodyError("truncated compressed body")
    return out


def _undo_coding(data: bytes, coding: str, max_size: int) -> bytes:
    if coding in ("gzip", "x-gzip"):
        try:
            return _inflate(data, 16 + zlib.MAX_WBITS, max_size)
        except zlib.error:
            raise _BodyError("malformed gzip body") from None
    if coding == "deflate":
        try:
            return _inflate(data, zlib.MAX_WBITS, max_size)  # RFC 9110: zlib format
        except zlib.error:
            try:
                return _inflate(data, -zlib.MAX_WBITS, max_size)  # raw deflate, seen in the wild
            except zlib.error:
                raise _BodyError("malformed deflate body") from None
    raise _BodyError(f"unsupported content-encoding {coding[:32]!r}")


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _nul_pattern(data: bytes) -> str | None:
    """RFC 4627 §3: the encoding of JSON text from the NULs among its first four bytes."""
    if len(data) < 4:
        return None
    z = (data[0] == 0, data[1] == 0, data[2] == 0, data[3] == 0)
    return {
        (True, True, True, False): "utf-32-be",
        (False, True, True, True): "utf-32-le",
        (True, False, True, False): "utf-16-be",
        (False, True, False, True): "utf-16-le",
    }.get(z)


def _to_text(data: bytes, charset: str | None, notes: dict[str, Any]) -> str:
    enc: str | None = None
    if charset is not None:
        try:
            info = codecs.lookup(charset)
        except LookupError:
            raise _BodyError(f"unknown charset {charset[:32]!r}") from None
        enc = info.name
        if enc not in ("utf-8",):
            notes["charset"] = charset[:32]
    for bom, name in _BOMS:
        if data.startswith(bom):
            notes["bom"] = True
            data = data[len(bom) :]
            if enc is None or enc in ("utf-16", "utf-32"):
                enc = name
                if name != "utf-8":
                    notes.setdefault("charset", name)
            break
    if enc is None:
        enc = _nul_pattern(data)
        if enc is not None:
            notes["charset"] = enc
    try:
        return data.decode(enc or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise _BodyError(f"body is not valid {enc or 'utf-8'}") from None


def _no_constant(s: str) -> object:
    raise ValueError(f"JSON constant {s} is not allowed")


_FAST_DECODER = msgspec.json.Decoder()
_FAST_ENCODER = msgspec.json.Encoder()
_UTF8_NAMES = frozenset({"utf-8", "utf8"})


def _distinct_keys(value: Any) -> bool:
    """No object in ``value`` (msgspec's decoding: text keys) has two member names equal
    but for case. A walk with a stack: no call per object or array."""
    todo = [value]
    while todo:
        v = todo.pop()
        if type(v) is dict:
            if len({k.lower() for k in v}) != len(v):
                return False
            todo.extend([i for i in v.values() if type(i) is dict or type(i) is list])
        elif type(v) is list:
            todo.extend([i for i in v if type(i) is dict or type(i) is list])
    return True


def _fast(raw: bytes, content_type: str | None, content_encoding: str | None) -> Decoded | None:
    """The common body (no content coding, UTF-8 without a BOM, an object or array, no
    ``\\u`` escape, no repeated member name) read by msgspec's C parser: the very value
    :func:`decode_body`'s general path gives, with no notes. ``None`` for anything else,
    which then takes the general path (``tests/adapters/test_decoding.py`` holds the two
    equal). msgspec is as strict: invalid UTF-8 (surrogates, overlong forms), NaN and
    Infinity, out-of-range numbers and bad syntax fail, and go to the general path too."""
    if content_encoding or not raw or raw[0] not in b"{[" or b"\\u" in raw:
        return None
    if content_type and ";" in content_type:
        charset = header_param(content_type, "charset")
        if charset is not None and charset not in _UTF8_NAMES:
            return None
    try:
        value = _FAST_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    # msgspec keeps the last of repeated names, silently; each member has one colon, and
    # (without \\u escapes) the strings' colons are the same in the re-encoding: equal
    # counts mean no member was dropped. Names equal but for case are checked by a walk.
    if raw.count(b":") != _FAST_ENCODER.encode(value).count(b":"):
        return None
    if not _distinct_keys(value):
        return None
    return Decoded(value, None, {})


def decode_body(
    raw: bytes,
    *,
    content_type: str | None = None,
    content_encoding: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Decoded:
    """Read ``raw`` as an SP would (module docstring). Empty bodies decode to ``None``."""
    if len(raw) <= max_size:
        fast = _fast(raw, content_type, content_encoding)
        if fast is not None:
            return fast
    return _general(raw, content_type, content_encoding, max_size)


def _general(
    raw: bytes, content_type: str | None, content_encoding: str | None, max_size: int
) -> Decoded:
    notes: dict[str, Any] = {}
    try:
        data = raw
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if codings:
            notes["enc"] = ",".join(codings)[:64]
        if len(codings) > MAX_CODINGS:
            raise _BodyError(f"more than {MAX_CODINGS} content codings")
        for coding in reversed(codings):
            data = _undo_coding(data, coding, max_size)
        if len(data) > max_size:
            raise _BodyError(f"body larger than {max_size} bytes")
        if not data:
            return Decoded(None, None, notes)
        charset = header_param(content_type, "charset")
        if charset == NAMED_TWICE:
            # which of them the SP read is not known (parsers differ): the text each gives,
            # if they all give one (an ASCII body); else not understood (faith26; before,
            # the first was taken, and a Werkzeug SP reads the last)
            texts = {_to_text(data, c, notes) for c in header_params(content_type, "charset")}
            if len(texts) != 1:
                raise _BodyError("Content-Type names charset twice, and they read it otherwise")
            text = texts.pop()
        else:
            text = _to_text(data, charset, notes)
        dups: list[str] = []
        twice_in: dict[int, set[str]] = {}
        held: list[Any] = []

        def last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            lower: dict[str, str] = {}
            for k, v in pairs:
                prev = lower.get(k.lower())
                if prev is not None:
                    del out[prev]
                    if id(out) not in twice_in:
                        held.append(out)
                    # noted as dup_keys notes it, cut at 64 (review 38)
                    twice_in.setdefault(id(out), set()).add(k[:64].lower())
                    if len(dups) < MAX_FLAGGED_KEYS and k[:64] not in dups:
                        dups.append(k[:64])
                lower[k.lower()] = k
                out[k] = v
            return out

        try:
            value = json.loads(text, object_pairs_hook=last_wins, parse_constant=_no_constant)
        except RecursionError:
            raise _BodyError("body nested too deeply") from None
        except ValueError as exc:
            # json's messages name positions, never content.
            raise _BodyError(f"body is not JSON: {str(exc)[:120]}") from None
        if dups:
            notes["dup_keys"] = dups
        return Decoded(value, None, notes, twice_in, held)
    except _BodyError as exc:
        return Decoded(None, str(exc), notes)


DRAIN_BYTES = 8 << 20  # request bytes read and dropped after a 413 (then the answer)
DRAIN_SECONDS = 2.0


async def drain_refused_body(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    """Read and drop the rest of a refused request body, bounded (``DRAIN_BYTES``,
    ``DRAIN_SECONDS``), before answering: a connection closed with the client's bytes
    unread is reset, and the reset can reach the client before it has read the 413 (it
    sees "disconnected without a response" instead of the refusal). A client that sends
    more than the bound, or too slowly, gets the 413 at once and may see the reset."""
    left = DRAIN_BYTES
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while left > 0:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                left -= len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    return
    except TimeoutError:
        return


class BodyTooLarge(Exception):
    """The request body is over the limit; the rest of it was drained (see
    :func:`drain_refused_body`): answer 413 now."""


async def read_request_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]], limit: int
) -> bytes | None:
    """The whole request body of an ASGI request, at most ``limit`` bytes; None when the
    client disconnected first. Raises :class:`BodyTooLarge` (the rest drained) over it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            if msg.get("more_body", False):
                await drain_refused_body(receive)
            raise BodyTooLarge
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)
