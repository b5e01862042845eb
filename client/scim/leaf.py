"""The public leaf, the commitment that binds it to a private event, and pseudonyms.

SCIM.md §3.4 and §4.3. The leaf carries nothing private::

    leaf = {"v": 1, "ts": uint ms, "tn": bstr .size 16, "c": bstr .size 32,
            ? "e": bstr .size 32}

* ``tn`` = HMAC-SHA256(log tenant key, tenant id)[:16] (:func:`tenant_ref`): a tenant's
  monitor finds its own leaves, nobody else learns tenant identities.
* ``c`` = HMAC-SHA256(key = nonce, msg = det_cbor(event)) (:func:`commitment`), with a fresh
  random 32-byte nonce per event kept only inside the encrypted envelope. Without the nonce a
  low-entropy event cannot be confirmed by guessing; after crypto-shredding it cannot be
  confirmed at all.
* ``e`` (when the log derived an *effect* for the event, ``tlog.scim.effects``: what the
  request did, judged against the resource's state) = HMAC-SHA256(key = nonce,
  msg = ``"tlog-scim-effect\x00"`` ‖ det_cbor(effect)) (:func:`effect_commitment`). The
  effect is thereby fixed in the tree at ingestion, exactly like the event: the log cannot
  show an auditor a different effect later, and a reader with the nonce verifies both
  (:func:`verify_effect`). The prefix separates the two messages (an event's encoding
  starts with a CBOR map header). Leaves without ``e`` carry no effect (a failed event, or a
  leaf made before effects were committed).

The Merkle leaf hash is ``client.formats.merkle.leaf_hash(make_leaf(...))`` (RFC 6962 §2.1).

**Domain separation** (issue 7 part 5). Every leaf the log builds itself (SCIM events and the
log's own events) is a deterministic CBOR *map*: its first byte is a CBOR map header
(0xa0..0xbf; a version-1 leaf starts ``a4 61 63 58 20``, ``a5 61 63 58 20`` with ``e``).
The log refuses, on the raw ``POST /v1/entries`` and ``/v1/entries/batch`` paths, every
entry whose first byte is a CBOR map header (:func:`check_raw_entry`). So the two domains
are disjoint by their first byte, and a monitor can classify any entry of the tree offline
(:func:`entry_domain`): a leaf that parses as a SCIM leaf was made by the log's SCIM path,
never by a raw submitter; an entry in the map space that does not parse is evidence that the
log broke its own rule.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from client.formats.merkle import VerificationError
from client.scim.cbor import EventFormatError, dumps_det, loads_det
from client.scim.event import MAX_SAFE_INT, decode_event, encode_event, hmac_sha256

__all__ = [
    "COMMITMENT_SIZE",
    "LEAF_VERSION",
    "MIN_KEY_SIZE",
    "NONCE_SIZE",
    "PID_SIZE",
    "TENANT_REF_SIZE",
    "Leaf",
    "RawEntryError",
    "check_raw_entry",
    "commitment",
    "commitment_unchecked",
    "effect_commitment",
    "entry_domain",
    "is_structured_entry",
    "make_leaf",
    "new_nonce",
    "parse_leaf",
    "pid",
    "tenant_ref",
    "verify_commitment",
    "verify_effect",
]

LEAF_VERSION = 1
NONCE_SIZE = 32
COMMITMENT_SIZE = 32
TENANT_REF_SIZE = 16
PID_SIZE = 16
MIN_KEY_SIZE = 16  # 128 bits (SCIM.md §4.2: salts of at least 128 bits)
_LEAF_KEYS = ("c", "tn", "ts", "v")
_LEAF_KEYS_E = ("c", "e", "tn", "ts", "v")
# Largest valid leaf: map header 1, "c" 2+34, "e" 2+34, "tn" 3+17, "ts" 3+9, "v" 2+1.
MAX_LEAF_SIZE = 108
_EFFECT_PREFIX = b"tlog-scim-effect\x00"


@dataclass(frozen=True)
class Leaf:
    """A parsed public leaf (version 1)."""

    ts: int
    tn: bytes
    c: bytes
    e: bytes | None = None  # the effect's commitment, if the log derived one

    def encode(self) -> bytes:
        return make_leaf(self.ts, self.tn, self.c, self.e)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac_sha256(key, msg)


def _check_key(key: object, what: str) -> bytes:
    if type(key) is not bytes or len(key) < MIN_KEY_SIZE:
        raise EventFormatError(f"{what} must be at least {MIN_KEY_SIZE} bytes")
    return key


def _check_id(value: object, what: str) -> bytes:
    if type(value) is not str or not value:
        raise EventFormatError(f"{what} must be a non-empty string")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventFormatError(f"{what} is not valid Unicode") from None


def new_nonce() -> bytes:
    """A fresh random 32-byte commitment nonce."""
    return secrets.token_bytes(NONCE_SIZE)


def tenant_ref(tenant_key: bytes, tenant_id: str) -> bytes:
    """``tn`` = HMAC-SHA256(tenant_key, UTF-8 tenant_id)[:16] (SCIM.md §4.3 step 1)."""
    key = _check_key(tenant_key, "tenant key")
    return _hmac(key, _check_id(tenant_id, "tenant id"))[:TENANT_REF_SIZE]


def pid(key: bytes, id: str) -> bytes:
    """Pseudonym ``pid`` = HMAC-SHA256(key, UTF-8 id)[:16] (SCIM.md §4.3 step 5).

    ``key`` is the referenced subject's own pseudonym key (``P_user``), so shredding it
    unlinks the subject from every event that names it.
    """
    k = _check_key(key, "pseudonym key")
    return _hmac(k, _check_id(id, "id"))[:PID_SIZE]


def _event_bytes(event: Mapping[str, Any] | bytes) -> bytes:
    # Bytes must already be the canonical encoding of a valid event; a mapping is encoded.
    if isinstance(event, bytes):
        decode_event(event)
        return event
    return encode_event(event)


def commitment(nonce: bytes, event: Mapping[str, Any] | bytes) -> bytes:
    """``c`` = HMAC-SHA256(key = nonce, msg = det_cbor(event)) (SCIM.md §4.3 step 2).

    ``event`` is a dict (validated, then encoded) or its deterministic CBOR (validated and
    used as is). Raises :class:`EventFormatError` for an invalid event or a nonce that is
    not 32 bytes: never commit to something a reader could not parse back.
    """
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise EventFormatError(f"nonce must be {NONCE_SIZE} bytes")
    return _hmac(nonce, _event_bytes(event))


def commitment_unchecked(nonce: bytes, encoded_event: bytes) -> bytes:
    """:func:`commitment` over bytes the caller *itself* produced from a validated event
    (e.g. the log's ingestion path, which has just validated and encoded it). Skips the
    decode-and-validate round trip that :func:`commitment` does for bytes of unknown origin.
    """
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise EventFormatError(f"nonce must be {NONCE_SIZE} bytes")
    return _hmac(nonce, encoded_event)


def _check_leaf_fields(ts: object, tn: object, c: object) -> None:
    if type(ts) is not int or not 0 <= ts <= MAX_SAFE_INT:
        raise EventFormatError(f"leaf ts must be an integer in 0..{MAX_SAFE_INT}")
    if type(tn) is not bytes or len(tn) != TENANT_REF_SIZE:
        raise EventFormatError(f"leaf tn must be {TENANT_REF_SIZE} bytes")
    if type(c) is not bytes or len(c) != COMMITMENT_SIZE:
        raise EventFormatError(f"leaf c must be {COMMITMENT_SIZE} bytes")


def make_leaf(ts_ms: int, tn: bytes, c: bytes, e: bytes | None = None) -> bytes:
    """The leaf entry: det CBOR of ``{"v": 1, "ts": ts_ms, "tn": tn, "c": c}``, plus
    ``"e": e`` when the event has a committed effect."""
    _check_leaf_fields(ts_ms, tn, c)
    # Keys already in deterministic order (length first, then bytewise: c, e, v, tn, ts) and
    # the fields checked just above: the plain encoding is the deterministic one (tested).
    if e is None:
        return bytes(cbor2.dumps({"c": c, "v": LEAF_VERSION, "tn": tn, "ts": ts_ms}))
    if type(e) is not bytes or len(e) != COMMITMENT_SIZE:
        raise EventFormatError(f"leaf e must be {COMMITMENT_SIZE} bytes")
    return bytes(cbor2.dumps({"c": c, "e": e, "v": LEAF_VERSION, "tn": tn, "ts": ts_ms}))


def _leaf_fast(data: bytes) -> Leaf | None:
    """The leaf ``data`` is, when it is exactly what :func:`make_leaf` writes for the fields
    cbor2's C decoder reads from it (so deterministic CBOR with exactly the fields: nothing
    else can re-encode to the same bytes); None for anything else, which the strict parser
    then decides and names."""
    try:
        obj = cbor2.loads(data)
    except Exception:
        return None
    if type(obj) is not dict or obj.get("v") != LEAF_VERSION or type(obj.get("v")) is not int:
        return None
    ts, tn, c, e = obj.get("ts"), obj.get("tn"), obj.get("c"), obj.get("e")
    try:
        again = make_leaf(ts, tn, c, e)  # type: ignore[arg-type]
    except EventFormatError:
        return None
    if again != data:
        return None
    return Leaf(ts=ts, tn=tn, c=c, e=e)  # type: ignore[arg-type]


def parse_leaf(data: bytes) -> Leaf:
    """Parse a leaf strictly: deterministic CBOR, exactly the four fields, version 1.

    A leaf as :func:`make_leaf` writes it (every leaf of a log that works) is read by
    cbor2's C decoder and checked by writing it again (6 µs instead of 31 µs for the
    pure-Python deterministic decoder, which takes anything else and names what is wrong;
    tests/scim/test_leaf.py holds the two equal)."""
    if type(data) is not bytes:
        raise EventFormatError("leaf must be bytes")
    if len(data) > MAX_LEAF_SIZE:
        raise EventFormatError("leaf too large")
    fast = _leaf_fast(data)
    if fast is not None:
        return fast
    obj = loads_det(data, max_depth=1)
    if type(obj) is not dict:
        raise EventFormatError("leaf must be a CBOR map")
    if tuple(sorted(obj)) not in (_LEAF_KEYS, _LEAF_KEYS_E):
        raise EventFormatError(
            f"leaf must have exactly the fields {', '.join(_LEAF_KEYS)} (and optionally e)"
        )
    v = obj["v"]
    if type(v) is not int or v != LEAF_VERSION:
        raise EventFormatError(f"unsupported leaf version {v!r}")
    _check_leaf_fields(obj["ts"], obj["tn"], obj["c"])
    e = obj.get("e")
    if e is not None and (type(e) is not bytes or len(e) != COMMITMENT_SIZE):
        raise EventFormatError(f"leaf e must be {COMMITMENT_SIZE} bytes")
    return Leaf(ts=obj["ts"], tn=obj["tn"], c=obj["c"], e=e)


def verify_commitment(leaf: bytes | Leaf, event: Mapping[str, Any] | bytes, nonce: bytes) -> None:
    """Check that ``leaf`` commits to ``event`` under ``nonce`` (SCIM.md §4.3 step 4).

    Returns nothing on success. Raises :class:`client.formats.merkle.VerificationError` if the
    commitment does not match, and :class:`EventFormatError` if the leaf, event or nonce is
    malformed (different failures, different exceptions, as everywhere in ``client``).
    """
    parsed = leaf if isinstance(leaf, Leaf) else parse_leaf(leaf)
    if not hmac.compare_digest(commitment(nonce, event), parsed.c):
        raise VerificationError("event does not match the leaf commitment")


def effect_commitment(nonce: bytes, effect: Mapping[str, Any] | bytes) -> bytes:
    """``e`` = HMAC-SHA256(nonce, "tlog-scim-effect\\x00" ‖ det_cbor(effect)) (module doc).

    ``effect`` is the derived effect (a map in the deterministic data model) or its
    det-CBOR encoding made by the caller itself.
    """
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise EventFormatError(f"nonce must be {NONCE_SIZE} bytes")
    data = effect if isinstance(effect, bytes) else dumps_det(effect)
    return _hmac(nonce, _EFFECT_PREFIX + data)


def verify_effect(leaf: bytes | Leaf, effect: Mapping[str, Any] | None, nonce: bytes) -> bool:
    """Check the effect a log reports for an event against the leaf's ``e``.

    Returns True when the leaf commits to ``effect`` (it is attested), False when the leaf
    has no ``e`` and no effect is reported, or the leaf predates committed effects (no
    ``e``): such an effect is the log's unattested reading. Raises
    :class:`client.formats.merkle.VerificationError` when the leaf commits to an effect and the
    reported one differs or is missing (withheld).
    """
    parsed = leaf if isinstance(leaf, Leaf) else parse_leaf(leaf)
    if parsed.e is None:
        return False
    if effect is None:
        raise VerificationError("the leaf commits to an effect the log did not report")
    if not hmac.compare_digest(effect_commitment(nonce, effect), parsed.e):
        raise VerificationError("the effect does not match the leaf commitment")
    return True


class RawEntryError(EventFormatError):
    """A raw entry must not start with a CBOR map header (0xa0..0xbf), the space reserved for
    the leaves the log builds itself"""


def is_structured_entry(entry: bytes) -> bool:
    """Whether ``entry`` starts with a CBOR map header (0xa0..0xbf): the log's leaf space."""
    return bool(entry) and 0xA0 <= entry[0] <= 0xBF


def check_raw_entry(entry: bytes) -> None:
    """Refuse a raw (``/v1/entries``) entry in the structured-leaf space (module docstring)."""
    if is_structured_entry(entry):
        raise RawEntryError(f"{RawEntryError.__doc__}; wrap or prefix it")


def entry_domain(entry: bytes) -> str:
    """Classify a tree entry: ``"scim"`` (a valid SCIM leaf, made by the log's SCIM path),
    ``"raw"`` (outside the structured space: a raw submission), or ``"invalid"`` (in the
    structured space but not a valid leaf: the log accepted what it must refuse)."""
    if not is_structured_entry(entry):
        return "raw"
    try:
        parse_leaf(entry)
    except EventFormatError:
        return "invalid"
    return "scim"
