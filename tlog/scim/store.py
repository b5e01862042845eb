"""Layout of the SCIM records in the log's ``aux`` sub-database, and their codecs.

Every key starts with ``scim/`` and a one-byte tag; the parts after it have fixed widths, so
a prefix scan is exact and big-endian integers sort numerically. No key or value holds a
plaintext SCIM identifier (resource id, externalId, actor, request id, member id): those are
inside AES-GCM ciphertext or turned into ``HMAC(tenant index key, value)[:16]``.

=== ================================== ============================================
tag key after the tag                   value
=== ================================== ============================================
K   ``check`` / ``tnkey``               master-key check value / wrapped tn key
T   tn(16)                              tenant record: wrapped KEK and index key
S   tn(16) ‖ subject hash(16)           subject record: kid, wrapped P key
D   kid(16) ‖ u32 epoch                 the subject's DEK for that month, wrapped
V   tn(16) ‖ eid(16)                    leaf bytes (eid record: dedup, receipts)
E   leaf hash(32)                       envelope, or a tombstone after erasure
L   kid(16) ‖ leaf hash(32)             empty: the subject's events (for erasure)
A   tn(16) ‖ u64 ts ‖ leaf hash(32)     empty: the tenant's events by log time
X   tn ‖ field(1) ‖ h(16) ‖ ts ‖ lh     empty: search index, h = HMAC(ik, value)
R   request id(16)                      erasure request (no personal data)
F   kid(16)                             resource state (effects.py), sealed by the DEK
=== ================================== ============================================

``tn`` is the public tenant ref of the leaf; ``kid`` is not derived from the subject (the log
time it was made at, then random bits: :func:`tlog.scim.keys.new_kid`), so once the subject
record is deleted nothing links a kid, a tombstone or an erasure event back to the subject's
identifiers.
"""

from __future__ import annotations

import struct
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client.scim.cbor import EventFormatError, dumps_det, loads_det
from tlog.backend import ReadView, StorageError

__all__ = [
    "Envelope",
    "Overlay",
    "Tombstone",
    "decode_envelope",
    "decode_record",
    "encode_envelope",
    "encode_record",
]

PREFIX = b"scim/"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
TS_KEY_SIZE = 8 + 32  # u64 ts ‖ leaf hash: the tail of A and X keys, and the paging cursor


def _k(tag: bytes, *parts: bytes) -> bytes:
    return PREFIX + tag + b"".join(parts)


# Each tag's prefix, for the keys a staging makes per event: one concatenation instead of a
# call of _k with its tuple and join (the same bytes; a part that is not bytes-like is a
# TypeError either way).
_T_, _S_, _D_, _V_, _E_, _L_, _A_, _X_, _F_, _R_ = (
    PREFIX + t for t in (b"T", b"S", b"D", b"V", b"E", b"L", b"A", b"X", b"F", b"R")
)


def check_key() -> bytes:
    return _k(b"K", b"check")


def tn_key_key() -> bytes:
    return _k(b"K", b"tnkey")


def tenant_key(tn: bytes) -> bytes:
    return _T_ + tn


def subject_key(tn: bytes, h: bytes) -> bytes:
    return _S_ + tn + h


def dek_prefix(kid: bytes) -> bytes:
    return _D_ + kid


def dek_key(kid: bytes, epoch: int) -> bytes:
    return _D_ + kid + _U32.pack(epoch)


def eid_key(tn: bytes, eid: str) -> bytes:
    # eids are validated lowercase UUIDs, so the 16-byte form is a bijection. The canonical
    # 8-4-4-4-12 form (every validated eid) is read with bytes.fromhex; anything else goes
    # to uuid.UUID, which decides (the same 16 bytes where both read it; tested).
    if len(eid) == 36 and eid[8] == eid[13] == eid[18] == eid[23] == "-":
        try:
            raw = bytes.fromhex(eid[:8] + eid[9:13] + eid[14:18] + eid[19:23] + eid[24:])
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return PREFIX + b"V" + tn + raw
    return _V_ + tn + uuid.UUID(eid).bytes


def envelope_key(leaf_hash: bytes) -> bytes:
    return _E_ + leaf_hash


def subject_events_prefix(kid: bytes) -> bytes:
    return _L_ + kid


def subject_event_key(kid: bytes, leaf_hash: bytes) -> bytes:
    return _L_ + kid + leaf_hash


def tenant_events_prefix(tn: bytes) -> bytes:
    return _A_ + tn


def index_prefix(tn: bytes, cond: bytes) -> bytes:
    """``cond`` is field(1) ‖ h(16)."""
    return _X_ + tn + cond


def ts_tail(ts: int, leaf_hash: bytes) -> bytes:
    return _U64.pack(ts) + leaf_hash


def split_tail(tail: bytes) -> tuple[int, bytes]:
    if len(tail) != TS_KEY_SIZE:
        raise StorageError("malformed SCIM index key")
    return int(_U64.unpack(tail[:8])[0]), tail[8:]


def ts_bytes(ts: int) -> bytes:
    return _U64.pack(ts)


def state_key(kid: bytes) -> bytes:
    """The subject's security-relevant state, AES-GCM under its DEK (tlog.scim.effects)."""
    return _F_ + kid


def request_key(req_id: bytes) -> bytes:
    return _R_ + req_id


def request_index_prefix(tn: bytes, h: bytes) -> bytes:
    """The erasure requests pending for the subject ``h`` (its keyed hash, 16 bytes) of the
    tenant ``tn``: :func:`request_index_key` (faith31: a retry's match,
    :meth:`tlog.scim.erasure.Erasures._same_request`, scanned every request record)."""
    return _k(b"P", tn, h)


def request_index_key(tn: bytes, h: bytes, req_id: bytes) -> bytes:
    """An empty record naming the erasure request ``req_id`` of the subject ``h`` of ``tn``,
    written with the request and deleted when it is approved (its record then drops
    ``h``: nothing links back)."""
    return _k(b"P", tn, h, req_id)


def request_index_built_key() -> bytes:
    """Present once the request index holds every request of the store (a store made
    before faith31 has request records without it: built at the first look)."""
    return _k(b"W", b"request-index")


def unlogged_key(leaf_hash: bytes) -> bytes:
    """The leaf of a log's own event staged by a direct write (an erasure, an expiry, a hold,
    a retention period), committed with it: sequenced again at the next start, expiry run
    or periodic look (:meth:`tlog.scim.erasure.Erasures.resequence`), then deleted, so a
    crash or a failed sequencing between the commit and the sequencing loses no event."""
    return _k(b"Q", leaf_hash)


def unlogged_prefix() -> bytes:
    return _k(b"Q")


# --- records ------------------------------------------------------------------------------


def encode_record(obj: dict[str, Any]) -> bytes:
    return dumps_det(obj)


def decode_record(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = loads_det(data)
    except EventFormatError as exc:
        raise StorageError(f"corrupt {what} record: {exc}") from None
    if type(obj) is not dict:
        raise StorageError(f"corrupt {what} record")
    return obj


@dataclass(frozen=True)
class Envelope:
    """An event body, encrypted: AES-256-GCM(DEK(kid, epoch), iv, det_cbor({n, b}), AAD=lh)."""

    tn: bytes
    eid: str
    ts: int
    kid: bytes
    epoch: int
    iv: bytes
    ct: bytes
    ix: tuple[bytes, ...]  # the search index conditions (field ‖ h) written for this event

    def encode(self) -> bytes:
        return encode_envelope(
            self.tn, self.eid, self.ts, self.kid, self.epoch, self.iv, self.ct, self.ix
        )


def encode_envelope(
    tn: bytes,
    eid: str,
    ts: int,
    kid: bytes,
    epoch: int,
    iv: bytes,
    ct: bytes,
    ix: tuple[bytes, ...] | list[bytes],
) -> bytes:
    """:meth:`Envelope.encode` without building the (frozen) dataclass first: one per event
    on the ingestion path. The field types and sizes the log makes are written by
    concatenation in deterministic key order (:func:`_envelope_bytes`), anything else by
    ``dumps_det`` (tested equal)."""
    if type(ct) is bytes and type(epoch) is int and type(ts) is int and type(eid) is str:
        out = _envelope_bytes(tn, eid, ts, kid, epoch, iv, ct, ix)
        if out is not None:
            return out
    # anything else: the general encoder decides, and refuses what is not deterministic
    # CBOR (an integer beyond 64 bits, text that is not Unicode)
    return encode_record(
        {
            "v": 1,
            "ct": ct,
            "ep": epoch,
            "iv": iv,
            "ix": list(ix),
            "tn": tn,
            "ts": ts,
            "eid": eid,
            "kid": kid,
        }
    )


def _head(major: int, n: int) -> bytes:
    """A CBOR head: major type and argument ``n`` (0 <= n < 2**64) in its shortest form."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


_INDEX_COND = 17  # field(1) ‖ h(16)


def _envelope_bytes(
    tn: bytes,
    eid: str,
    ts: int,
    kid: bytes,
    epoch: int,
    iv: bytes,
    ct: bytes,
    ix: tuple[bytes, ...] | list[bytes],
) -> bytes | None:
    """The envelope map {v, ct, ep, iv, ix, tn, ts, eid, kid} written piece by piece for
    the sizes the log makes (16-byte tn and kid, 12-byte IV, 17-byte conditions, an eid of
    printable ASCII, non-negative 64-bit integers); None for anything else."""
    if not (
        type(tn) is bytes
        and len(tn) == 16
        and type(kid) is bytes
        and len(kid) == 16
        and type(iv) is bytes
        and len(iv) == 12
        and 0 <= epoch < 1 << 64
        and 0 <= ts < 1 << 64
        and eid.isascii()
        and len(ix) < 24
    ):
        return None
    for c in ix:
        if type(c) is not bytes or len(c) != _INDEX_COND:
            return None
    return b"".join(
        (
            b"\xa9\x61v\x01\x62ct",
            _head(0x40, len(ct)),
            ct,
            b"\x62ep",
            _head(0, epoch),
            b"\x62iv\x4c",
            iv,
            b"\x62ix",
            bytes((0x80 | len(ix),)),
            b"\x51" + b"\x51".join(ix) if ix else b"",
            b"\x62tn\x50",
            tn,
            b"\x62ts",
            _head(0, ts),
            b"\x63eid",
            _head(0x60, len(eid)),
            eid.encode("ascii"),
            b"\x63kid\x50",
            kid,
        )
    )


@dataclass(frozen=True)
class Tombstone:
    """What is left of an envelope after erasure: public facts and the erasure request id."""

    tn: bytes
    eid: str
    ts: int
    erasure: bytes

    def encode(self) -> bytes:
        return encode_record(
            {"v": 1, "tn": self.tn, "eid": self.eid, "ts": self.ts, "erased": self.erasure}
        )


def decode_envelope(data: bytes) -> Envelope | Tombstone:
    r = decode_record(data, "envelope")
    try:
        if "erased" in r:
            return Tombstone(r["tn"], r["eid"], r["ts"], r["erased"])
        return Envelope(
            r["tn"], r["eid"], r["ts"], r["kid"], r["ep"], r["iv"], r["ct"], tuple(r["ix"])
        )
    except (KeyError, TypeError):
        raise StorageError("corrupt envelope record") from None


class PendingWrites:
    """The writes of transactions handed to be committed but not durable yet (the SCIM
    service's group commit), for the next transactions to read through
    (``Overlay(rv, layers=pending.layers())``). One mapping per transaction, kept as the
    transaction left it (no copy, no per-record work); transactions become durable in the
    order they were handed, so the oldest go whole once durable."""

    def __init__(self) -> None:
        self._groups: deque[tuple[int, Mapping[bytes, bytes | None]]] = deque()

    def add(self, seq: int, written: Mapping[bytes, bytes | None]) -> None:
        """Transaction ``seq`` (greater than every one added before) wrote ``written``."""
        self._groups.append((seq, written))

    def durable(self, seq: int) -> None:
        """Transactions up to ``seq`` are durable: a snapshot opened now holds their writes."""
        groups = self._groups
        while groups and groups[0][0] <= seq:
            groups.popleft()

    def clear(self) -> None:
        self._groups.clear()

    def layers(self) -> list[Mapping[bytes, bytes | None]]:
        """The pending writes, the newest transaction's first."""
        return [w for _, w in reversed(self._groups)]


class Overlay:
    """Reads through the writes staged for one ``Storage.put_aux`` transaction.

    Records created earlier in the same transaction (a new subject, a DEK) must be seen by
    later events of the same batch before anything is committed.
    """

    def __init__(
        self,
        rv: ReadView,
        pending: Mapping[bytes, bytes | None] | None = None,
        *,
        layers: Sequence[Mapping[bytes, bytes | None]] = (),
    ) -> None:
        self.rv = rv
        # Writes of earlier transactions handed to the sequencer but not yet durable (the
        # service's group commit): read through, between this transaction's and ``rv``.
        # ``layers``: one mapping per such transaction, the newest first (a key's newest
        # write wins); ``pending``: all of them in one mapping (one layer).
        self._layers: tuple[Mapping[bytes, bytes | None], ...] = tuple(
            p for p in (pending, *layers) if p
        )
        self._writes: dict[bytes, bytes | None] = {}
        # Undoes writes back to a mark: (key, staged before?, its earlier staged value) per
        # write, or (None, keys, {key: earlier staged value}) per put_many.
        self._journal: list[tuple[Any, Any, Any]] = []
        # Records of ``rv`` read ahead in one round trip (:meth:`prefetch`): key -> its value
        # in ``rv``'s snapshot, None for a key known absent there. Below the staged writes.
        # On a view whose reads are round trips (``aux_many``: PostgreSQL) every read of
        # ``rv`` is kept here too: one snapshot answers a key the same way every time, and
        # a staging reads some twice (a subject's DEK for its event and for its state).
        self._read: dict[bytes, bytes | None] = {}
        self._keep = getattr(rv, "aux_many", None) is not None

    def get(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        for p in self._layers:
            if key in p:
                return p[key]
        r = self._read
        if key in r:
            return r[key]
        value = self.rv.aux(key)
        if self._keep:
            r[key] = value
        return value

    def prefetch(self, keys: Iterable[bytes]) -> int:
        """Read ``keys`` from ``rv`` now, in one round trip, for :meth:`get` to answer from
        later: only on a read view that reads many keys at once (``aux_many``: PostgreSQL;
        elsewhere nothing is done), and only keys :meth:`get` would read from ``rv`` now
        (not staged here or pending). ``rv`` is one snapshot, so what it answers now is
        what it would answer later; writes staged later still win. Returns how many keys
        were read."""
        many = getattr(self.rv, "aux_many", None)
        if many is None:
            return 0
        w, r = self._writes, self._read
        want = [
            k for k in dict.fromkeys(keys) if k not in w and k not in r and not self._layered(k)
        ]
        if not want:
            return 0
        found = many(want)
        for k in want:
            r[k] = found.get(k)
        return len(want)

    def staged(self, key: bytes) -> bool:
        """Whether ``key`` is written (not yet durably) by this transaction or a pending one."""
        return key in self._writes or self._layered(key)

    def _layered(self, key: bytes) -> bool:
        return any(key in p for p in self._layers)

    def _stage(self, key: bytes, value: bytes | None) -> None:
        w = self._writes
        self._journal.append((key, key in w, w.get(key)))
        w[key] = value

    def put(self, key: bytes, value: bytes) -> None:
        self._stage(key, value)

    def delete(self, key: bytes) -> None:
        self._stage(key, None)

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """:meth:`put` of each ``keys[i]``, ``values[i]`` in turn, in bulk (a staging's
        records: one journal entry, not one per record)."""
        if len(keys) != len(values):
            raise ValueError("one value per key")
        w = self._writes
        distinct = set(keys)
        if len(distinct) != len(keys):  # a key twice: one at a time, in order
            for key, value in zip(keys, values, strict=True):
                self._stage(key, value)
            return
        # what each key replaced: usually nothing (a staging's keys are new), and a group's
        # overlay grows with every staging: look up the few keys, not walk the overlay
        earlier = {} if w.keys().isdisjoint(distinct) else {k: w[k] for k in distinct if k in w}
        self._journal.append((None, keys, earlier))
        w.update(zip(keys, values, strict=True))

    def mark(self) -> int:
        """A point to :meth:`rollback` to (several submissions share one transaction)."""
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every write staged since ``mark``."""
        j, w = self._journal, self._writes
        while len(j) > mark:
            key, had, old = j.pop()
            if key is None:  # a put_many: its keys, and what each replaced
                for k in had:
                    if k in old:
                        w[k] = old[k]
                    else:
                        del w[k]
            elif had:
                w[key] = old
            else:
                del w[key]

    def items(self) -> list[tuple[bytes, bytes | None]]:
        return list(self._writes.items())

    def written(self) -> Mapping[bytes, bytes | None]:
        """This transaction's writes as they stand (key -> value, None for a deletion): the
        overlay's own mapping, not a copy, for a later transaction to read through as one of
        its ``layers`` once this one stages nothing more."""
        return self._writes

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every record under ``prefix`` as this transaction sees it: the committed ones
        with the staged writes and deletions applied, in key order."""
        out = {k: v for k, v in self.rv.aux_range(prefix)}
        staged = [*(kv for p in reversed(self._layers) for kv in p.items()), *self._writes.items()]
        for k, v in staged:
            if k.startswith(prefix):
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return sorted(out.items())
