"""SCIM event service: ingestion, encrypted bodies, search, receipts, crypto-shredding.

No HTTP here (see :mod:`tlog.scim.routes`). The flow of one submission (SCIM.md §4.3):

1. validate the event strictly (:mod:`client.scim`), check its tenant;
2. under one lock, in a worker thread: if the eid is known, take its leaf (a retry);
   otherwise draw a nonce, ``c = HMAC(nonce, det_cbor(event))``, ``leaf = {v, ts, tn, c}``,
   encrypt ``{n: nonce, b: event}`` under the subject's DEK with AAD = leaf hash, and
   stage the eid record, the envelope, the subject/tenant listings and the search index;
   commit all of it in **one** durable ``put_aux`` transaction;
3. ``await sequencer.submit(leaves)``: the leaf enters the tree.

A crash between 2 and 3 leaves an eid record whose leaf is not in the log; a retry of the
same eid resubmits exactly those leaf bytes, and the log deduplicates by leaf hash, so one
eid never becomes two leaves. Until then the event is invisible to search and its receipt
says ``pending``.

Subjects (whose DEK encrypts an event): ``(tenant, rt, rid)``; without ``rid`` (a failed
create) ``(tenant, rt, xid)``; without either, ``(tenant, rt, userName)`` (casefolded, from
``mods``); only events with none of the three share one per-tenant ``(tenant, rt, none)``
subject, which retention expiry shreds. Erasure, retention and legal holds live in
:mod:`tlog.scim.erasure` (``self.erasures``). The log's own events (``rt`` starting with ``tlog.``)
belong to a per-tenant system subject and carry no personal data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.formats.merkle import leaf_hash
from client.scim.cbor import EventFormatError, loads_det
from client.scim.event import (
    MAX_JSON_SIZE,
    Event,
    encode_event,
    new_event,
    uuid7,
    validate_event,
)
from client.scim.leaf import (
    NONCE_SIZE,
    commitment,
    commitment_unchecked,
    effect_commitment,
    make_leaf,
    parse_leaf,
)
from client.scim.reserved import reserved_names
from tlog.auth import Forbidden, Principal
from tlog.backend import Backend, StorageError
from tlog.errors import Conflict
from tlog.log import Log, Published
from tlog.reads import ReadPool
from tlog.scim import store
from tlog.scim.effects import classify, encode_effect, encode_state
from tlog.scim.erasure import Erasures
from tlog.scim.keys import (
    KeyRing,
    KeysRotated,
    RandomPool,
    SubjectId,
    SubjectKeys,
    TenantKeys,
    epoch_of,
)
from tlog.scim.store import Envelope, Overlay, Tombstone, decode_envelope
from tlog.sequencer import Sequencer

__all__ = [
    "FILTERS",
    "Conflict",
    "Filters",
    "Found",
    "ReceiptInfo",
    "ScimLimits",
    "ScimService",
    "Submitted",
    "subject_of",
]

T = TypeVar("T")

SYSTEM_PREFIX = "tlog."
REASON_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
IV_SIZE = 12
_STATE_AAD = b"tlog-scim-state\x00"

# Search index fields; the order is the preference for the index that drives a scan.
FILTERS: tuple[tuple[str, bytes], ...] = (
    ("rid", b"r"),
    ("req", b"q"),
    ("xid", b"x"),
    ("ref", b"p"),
    ("actor", b"a"),
    ("action", b"c"),
    ("outcome", b"o"),
)
_FIELD = dict(FILTERS)

# OCSF API Activity (6003): 2 = read, 1 = create, 4 = delete.
_OCSF_READ = [6003, 2]
_OCSF_CREATE = [6003, 1]
_OCSF_DELETE = [6003, 4]


def envelope_plaintext(
    nonce: bytes, encoded_event: bytes, encoded_effect: bytes | None = None
) -> bytes:
    """det_cbor({"n": nonce, "b": event}) from the event's det-CBOR bytes, without encoding
    (and checking) the event again: a 2-entry map, keys "b" < "n" in bytewise order, the
    nonce a 32-byte bstr (header 0x58 0x20). Equal to ``dumps_det`` of the dict (tested)."""
    if len(nonce) != 32:
        raise ValueError("nonce must be 32 bytes")
    if encoded_effect is not None:  # {"b", "e", "n"}: the effect the log derived (effects.py)
        return b"\xa3\x61b" + encoded_event + b"\x61e" + encoded_effect + b"\x61n\x58\x20" + nonce
    return b"\xa2\x61b" + encoded_event + b"\x61n\x58\x20" + nonce


def _encode_validated(ev: Event) -> bytes:
    """The canonical encoding of an event that was validated on the way in."""
    return encode_event(ev)


@dataclass
class _State:
    """A subject's resource state as the events of this staging left it (not yet staged)."""

    state: dict[str, Any] | None
    epoch: int
    aead: AESGCM
    dirty: bool = False


@dataclass
class _Batch:
    """What one staging (one batch, one transaction) looks up once and reuses.

    ``states``: each classified subject's state, decrypted once and carried from event to
    event of the batch; :meth:`ScimService._flush_states` encrypts and stages the last
    state of each subject once, at the end of the staging (not once per event)."""

    seen: dict[str, tuple[Accepted, bytes]] = field(default_factory=dict)
    subjects: dict[SubjectId, SubjectKeys] = field(default_factory=dict)
    deks: dict[tuple[bytes, int], AESGCM] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)
    states: dict[bytes, _State] = field(default_factory=dict)
    rand: RandomPool = field(default_factory=RandomPool)


@dataclass(frozen=True)
class ScimLimits:
    """Explicit limits of the SCIM endpoints (documented in docs/api.md)."""

    max_event_body: int = MAX_JSON_SIZE  # bytes of one event's body, JSON or CBOR (413)
    max_batch_events: int = 1000  # events per batch request (413)
    max_batch_body: int = 8 << 20  # bytes of one batch body (413)
    max_batch_items: int = 1 << 18  # JSON elements / CBOR items in one batch body (413)
    max_search_limit: int = 100  # results per search page
    default_search_limit: int = 50
    max_scan: int = 10_000  # index records examined per search page
    max_receipts: int = 1000  # receipts per GET /v1/scim/receipts
    max_refs: int = 10_000  # ids per POST /v1/scim/pseudonyms (one request's members at once)
    erasure_ttl_ms: int = 7 * 24 * 3600 * 1000  # a pending erasure request expires


@dataclass(frozen=True)
class Accepted:
    eid: str
    leaf: bytes
    leaf_hash: bytes
    ts: int
    duplicate: bool


@dataclass(frozen=True)
class Submitted:
    eid: str
    leaf: bytes
    leaf_hash: bytes
    ts: int
    duplicate: bool
    index: int


@dataclass(frozen=True)
class Filters:
    rid: str | None = None
    req: str | None = None
    xid: str | None = None
    ref: str | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    ref_rt: str = "User"
    since: int | None = None
    until: int | None = None

    def items(self) -> list[tuple[str, str]]:
        out = [(n, getattr(self, n)) for n, _ in FILTERS if getattr(self, n) is not None]
        if self.ref is not None:
            out.append(("ref_rt", self.ref_rt))
        for n in ("since", "until"):
            v = getattr(self, n)
            if v is not None:
                out.append((n, str(v)))
        return sorted(out)


@dataclass(frozen=True)
class Found:
    """One search result: a sequenced event, decrypted, or erased (event and nonce None)."""

    index: int
    leaf: bytes
    leaf_hash: bytes
    ts: int
    eid: str
    event: Event | None
    nonce: bytes | None
    effect: dict[str, Any] | None = None  # derived by the log at ingestion (tlog.scim.effects)

    @property
    def erased(self) -> bool:
        return self.event is None


@dataclass(frozen=True)
class ReceiptInfo:
    eid: str
    leaf: bytes
    leaf_hash: bytes
    ts: int
    index: int | None  # None: accepted but not yet in the tree (pending)
    erased: bool


def subject_of(ev: Mapping[str, Any]) -> SubjectId:
    """The data subject whose DEK encrypts ``ev`` (module docstring)."""
    rt = ev["rt"]
    if rt.startswith(SYSTEM_PREFIX):
        return SubjectId(rt, "sys", "")
    if "rid" in ev:
        return SubjectId(rt, "rid", ev["rid"])
    if "xid" in ev:
        return SubjectId(rt, "xid", ev["xid"])
    un = user_name_of(ev)
    if un is not None:
        return SubjectId(rt, "userName", un)
    return SubjectId(rt, "none", "")


def user_name_of(ev: Mapping[str, Any]) -> str | None:
    """The userName an event without resource id or externalId carries (e.g. a failed
    create), casefolded (SCIM userName is case-insensitive), so an erasure request by
    userName reaches it."""
    for mod in ev.get("mods", ()):
        if str(mod.get("attr", "")).rsplit(":", 1)[-1].lower() != "username":
            continue
        for side in ("new", "old"):
            text = mod.get(side)
            if not isinstance(text, str):
                continue
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            if isinstance(value, str) and value:
                return value.casefold()
    return None


def _ref_value(rt: str, pid: bytes) -> bytes:
    return rt.encode() + b"\x00" + pid


def index_values(ev: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """(field, value) pairs that the search index records for ``ev``."""
    out: list[tuple[bytes, bytes]] = []
    if "rid" in ev:
        out.append((_FIELD["rid"], ev["rid"].encode()))
    if "xid" in ev:
        out.append((_FIELD["xid"], ev["xid"].encode()))
    if "id" in ev["actor"]:
        out.append((_FIELD["actor"], ev["actor"]["id"].encode()))
    for act in ev.get("acts", ()):
        out.append((_FIELD["action"], act["a"].encode()))
    out.append((_FIELD["outcome"], ev["outcome"].encode()))
    out.append((_FIELD["req"], ev["corr"]["req"].encode()))
    for ref in ev.get("refs", ()):
        out.append((_FIELD["ref"], _ref_value(ref["rt"], ref["pid"])))
    return list(dict.fromkeys(out))


def effect_index_values(effect: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """What the search index records for a derived effect: its actions, and the subjects
    it names (e.g. the members a PUT removed), so both are found by search."""
    out: list[tuple[bytes, bytes]] = []
    for act in effect.get("acts", ()):
        out.append((_FIELD["action"], act["a"].encode()))
    for ref in effect.get("refs", ()):
        out.append((_FIELD["ref"], _ref_value(ref["rt"], base64.b64decode(ref["pid"]))))
    return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScimService:
    """The SCIM event service over one log. Safe for concurrent use from the event loop."""

    def __init__(
        self,
        storage: Backend,
        log_: Log,
        sequencer: Sequencer,
        keys: KeyRing,
        limits: ScimLimits | None = None,
        clock: Callable[[], int] = _now_ms,
        reads: ReadPool | None = None,
    ) -> None:
        self.storage = storage
        self.log = log_
        self.seq = sequencer
        # Called with the events of each logged submission (metrics by action/outcome).
        self.on_logged: Callable[[Sequence[Event]], None] | None = None
        self.keys = keys
        self.limits = limits or ScimLimits()
        self.clock = clock
        # One writer of SCIM records at a time: "is this eid new?", key creation, erasure
        # and the commit must not interleave (a shred racing an ingestion could otherwise
        # leave a DEK that nothing erases).
        self._lock = threading.Lock()
        # Group commit of submissions (_write_grouped): queued jobs, and whether the writer
        # thread is draining them.
        self._group: list[tuple[Callable[[Overlay], Any], Future[Any]]] = []
        self._group_lock = threading.Lock()
        self._group_running = False
        self.erasures = Erasures(self)
        # The log's read pool (tlog.reads): store reads of the async methods run there,
        # never on the event loop (without one, in a worker thread).
        self.reads = reads

    # -- plumbing -----------------------------------------------------------------------------

    def _write(self, fn: Callable[[Overlay], T]) -> T:
        """Run ``fn`` on a fresh snapshot under the writer lock, then commit its writes."""
        with self._lock:
            with self.storage.read() as rv:
                tx = Overlay(rv)
                result = fn(tx)
                items = tx.items()
            if items:
                self.storage.put_aux(items)
            return result

    async def _write_grouped(self, fn: Callable[[Overlay], T]) -> T:
        """:meth:`_write`, with group commit: the submissions that arrive while a commit is
        being made are staged together in the next transaction (each isolated: one that
        raises is rolled back alone and gets its exception), so concurrent single events
        share one durable write instead of one fsync each. Returns once ``fn``'s writes
        are durable."""
        fut: Future[Any] = Future()
        with self._group_lock:
            self._group.append((fn, fut))
            start = not self._group_running
            self._group_running = True
        if start:
            threading.Thread(target=self._group_loop, name="tlog-scim-writer", daemon=True).start()
        return await asyncio.wrap_future(fut)

    def _group_loop(self) -> None:
        while True:
            with self._group_lock:
                jobs, self._group = self._group, []
                if not jobs:
                    self._group_running = False
                    return
            self._commit_group(jobs)

    def _commit_group(self, jobs: list[tuple[Callable[[Overlay], Any], Future[Any]]]) -> None:
        live = [(fn, fut) for fn, fut in jobs if fut.set_running_or_notify_cancel()]
        done: list[tuple[Future[Any], BaseException | None, Any]] = []
        try:
            with self._lock:
                with self.storage.read() as rv:
                    tx = Overlay(rv)
                    for fn, fut in live:
                        mark = tx.mark()
                        try:
                            done.append((fut, None, fn(tx)))
                        except Exception as exc:
                            tx.rollback(mark)
                            done.append((fut, exc, None))
                    items = tx.items()
                if items:
                    self.storage.put_aux(items)
        except BaseException as exc:  # nothing was committed: every submission fails
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for fut, err, result in done:
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(result)

    async def read_off_loop(self, fn: Callable[[Overlay], T], what: str) -> T:
        """:meth:`_read` in the read pool (bounded: a stalled store answers 503)."""
        if self.reads is not None:
            return await self.reads.run(lambda: self._read(fn), what)
        return await asyncio.to_thread(self._read, fn)

    def _read(self, fn: Callable[[Overlay], T]) -> T:
        for attempt in range(20):
            try:
                with self.storage.read() as rv:
                    return fn(Overlay(rv))
            except KeysRotated:
                # An erasure or expiry rotated the key chain between this snapshot and the
                # keys in memory: a fresh snapshot matches them again.
                time.sleep(0.002 * (attempt + 1))
        raise StorageError("SCIM keys kept changing during a read")

    def tenant_ref(self, tenant: str) -> bytes:
        return self.keys.tenant_ref(tenant)

    # -- ingestion ----------------------------------------------------------------------------

    async def submit(
        self,
        tenant: str,
        events: Sequence[Event],
        *,
        system: bool = False,
        encoded: Sequence[bytes] | None = None,
    ) -> tuple[list[Submitted], Published]:
        """Log ``events`` (validated dicts) for ``tenant``; durable and published on return.

        ``encoded``: the events' canonical encodings, when the caller has them from the
        validation (``client.scim.event.adopt_event``); otherwise they are encoded here.

        Raises :class:`Forbidden` for an event of another tenant, :class:`EventFormatError`
        for a reserved resource type, :class:`Conflict` for an eid reused with a different
        event; nothing is written then.
        """
        for i, ev in enumerate(events):
            if ev["tenant"] != tenant:
                raise Forbidden(f"event {i} is for another tenant than this token's")
            if not system and reserved_names(ev):
                raise EventFormatError(
                    f"event {i}: resource types and actions in the {SYSTEM_PREFIX!r} namespace "
                    "(in any spelling that normalises to it) are reserved for the log"
                )
        if encoded is None:
            encoded = [_encode_validated(ev) for ev in events]
        elif len(encoded) != len(events):
            raise ValueError("one encoding per event")
        accepted = await self._write_grouped(self._stager(tenant, events, encoded))
        done = await self._sequence(accepted)
        if self.on_logged is not None:
            self.on_logged(events)
        return done

    async def _sequence(self, accepted: list[Accepted]) -> tuple[list[Submitted], Published]:
        res = await self.seq.submit([a.leaf for a in accepted])
        out = [
            Submitted(a.eid, a.leaf, a.leaf_hash, a.ts, a.duplicate, i)
            for a, i in zip(accepted, res.indices, strict=True)
        ]
        return out, res.checkpoint

    def _stager(
        self, tenant: str, events: Sequence[Event], encoded: Sequence[bytes]
    ) -> Callable[[Overlay], list[Accepted]]:
        def stage(tx: Overlay) -> list[Accepted]:
            tk = self.keys.tenant_or_create(tx, tenant)
            now = self.clock()
            batch = _Batch()
            out = [
                self._stage(tx, tk, ev, enc, now, batch)
                for ev, enc in zip(events, encoded, strict=True)
            ]
            self._flush_states(tx, batch)
            return out

        return stage

    def _stage_one(self, tx: Overlay, tk: TenantKeys, ev: Event, now: int) -> Accepted:
        """Stage one validated event in the caller's transaction (the log's own events)."""
        batch = _Batch()
        acc = self._stage(tx, tk, ev, _encode_validated(ev), now, batch)
        self._flush_states(tx, batch)
        return acc

    def _stage(
        self,
        tx: Overlay,
        tk: TenantKeys,
        ev: Event,
        encoded: bytes,
        now: int,
        batch: _Batch,
    ) -> Accepted:
        eid = ev["eid"]
        seen = batch.seen
        if eid in seen:
            first, first_encoded = seen[eid]
            if first_encoded != encoded:
                raise Conflict(f"eid {eid} appears twice in the batch with different events")
            return Accepted(first.eid, first.leaf, first.leaf_hash, first.ts, True)
        vkey = store.eid_key(tk.tn, eid)
        known = tx.get(vkey)
        if known is not None:
            self._check_same(tx, tk, known, ev)
            acc = Accepted(eid, known, leaf_hash(known), parse_leaf(known).ts, True)
            seen[eid] = (acc, encoded)
            return acc
        rand = batch.rand
        nonce = rand(NONCE_SIZE)
        # One subject lookup and one DEK unwrap per subject per batch (cached in ``batch``);
        # the cache lives only as long as this staging, inside the writer lock.
        subject = subject_of(ev)
        sk = batch.subjects.get(subject)
        if sk is None:
            sk = batch.subjects[subject] = self.keys.subject_or_create(tx, tk, subject, rand)
        epoch = batch.epochs.get(now)
        if epoch is None:
            epoch = batch.epochs[now] = epoch_of(now)
        aead = batch.deks.get((sk.kid, epoch))
        if aead is None:
            aead = batch.deks[(sk.kid, epoch)] = AESGCM(
                self.keys.dek_or_create(tx, tk, sk.kid, epoch, rand, new=sk.created)
            )
        # The effect is derived before the leaf is made, so that the leaf commits to it
        # (``e``) exactly as it commits to the event (``c``): ev was validated on the way in
        # and ``encoded`` is its canonical form.
        effect = self._effect(tx, tk, sk, ev, epoch, aead, batch)
        encoded_effect = None if effect is None else encode_effect(effect)
        leaf = make_leaf(
            now,
            tk.tn,
            commitment_unchecked(nonce, encoded),
            None if encoded_effect is None else effect_commitment(nonce, encoded_effect),
        )
        lh = leaf_hash(leaf)
        iv = rand(IV_SIZE)
        # SCIM.md §4.3 step 3: the AAD binds the ciphertext to its leaf.
        ct = aead.encrypt(iv, envelope_plaintext(nonce, encoded, encoded_effect), lh)
        values = index_values(ev)
        if effect is not None:
            values = list(dict.fromkeys(values + effect_index_values(effect)))
        conds = tuple(f + tk.index_hash(f, v) for f, v in values)
        tx.put(vkey, leaf)
        tx.put(
            store.envelope_key(lh), Envelope(tk.tn, eid, now, sk.kid, epoch, iv, ct, conds).encode()
        )
        tx.put(store.subject_event_key(sk.kid, lh), b"")
        tail = store.ts_tail(now, lh)
        tx.put(store.tenant_events_prefix(tk.tn) + tail, b"")
        for cond in conds:
            tx.put(store.index_prefix(tk.tn, cond) + tail, b"")
        acc = Accepted(eid, leaf, lh, now, False)
        seen[eid] = (acc, encoded)
        return acc

    # -- resource state and effects (tlog.scim.effects) ---------------------------------------

    def _state(self, tx: Overlay, tk: TenantKeys, kid: bytes) -> dict[str, Any] | None:
        """The subject's security-relevant state, decrypted; None if unknown or shredded."""
        raw = tx.get(store.state_key(kid))
        if raw is None:
            return None
        rec = store.decode_record(raw, "resource state")
        dek = self.keys.dek(tx, tk, kid, rec["epoch"])
        if dek is None:
            return None  # its epoch expired or the subject was shredded
        try:
            got = loads_det(AESGCM(dek).decrypt(rec["iv"], rec["ct"], _STATE_AAD + kid))
        except (InvalidTag, EventFormatError):
            raise StorageError("SCIM resource state does not decrypt") from None
        return got if isinstance(got, dict) else None

    def _effect(
        self,
        tx: Overlay,
        tk: TenantKeys,
        sk: SubjectKeys,
        ev: Event,
        epoch: int,
        aead: AESGCM,
        batch: _Batch,
    ) -> dict[str, Any] | None:
        """Classify ``ev`` against the resource's state; the new state is kept in ``batch``
        and staged, encrypted under the subject's current DEK (so erasure and retention
        shred it too), by :meth:`_flush_states` at the end of the staging."""
        if "rid" not in ev or ev["rt"].startswith(SYSTEM_PREFIX) or ev["outcome"] != "success":
            return None
        kid = sk.kid
        cur = batch.states.get(kid)
        if cur is None:
            # A subject created by this staging has no state record: nothing to read.
            prev = None if sk.created else self._state(tx, tk, kid)
            cur = batch.states[kid] = _State(prev, epoch, aead)
        effect, state, changed = classify(cur.state, ev)
        if changed:
            cur.state, cur.epoch, cur.aead, cur.dirty = state, epoch, aead, True
        return effect

    def _flush_states(self, tx: Overlay, batch: _Batch) -> None:
        """Stage the last state of each subject this staging changed (see :class:`_Batch`)."""
        rand = batch.rand
        for kid, cur in batch.states.items():
            if not cur.dirty:
                continue
            if cur.state is None:
                tx.delete(store.state_key(kid))
                continue
            iv = rand(IV_SIZE)
            ct = cur.aead.encrypt(iv, encode_state(cur.state), _STATE_AAD + kid)
            tx.put(
                store.state_key(kid),
                # deterministic key order (v, ct, iv, epoch), known types (tested)
                bytes(cbor2.dumps({"v": 1, "ct": ct, "iv": iv, "epoch": cur.epoch})),
            )

    def _open(self, tx: Overlay, tk: TenantKeys, lh: bytes) -> tuple[Event, bytes] | None:
        """Decrypt the envelope of ``lh``: (event, nonce), or None once erased."""
        got = self._open_full(tx, tk, lh)
        return None if got is None else (got[0], got[1])

    def _open_full(
        self, tx: Overlay, tk: TenantKeys, lh: bytes
    ) -> tuple[Event, bytes, dict[str, Any] | None] | None:
        """Decrypt the envelope of ``lh``: (event, nonce, effect), or None once erased."""
        raw = tx.get(store.envelope_key(lh))
        if raw is None:
            raise StorageError("SCIM event without an envelope")
        env = decode_envelope(raw)
        if isinstance(env, Tombstone):
            return None
        dek = self.keys.dek(tx, tk, env.kid, env.epoch)
        if dek is None:  # shredded, or its retention epoch expired
            return None
        try:
            pt = AESGCM(dek).decrypt(env.iv, env.ct, lh)
        except InvalidTag:
            raise StorageError("SCIM envelope does not decrypt (modified record?)") from None
        try:
            body = loads_det(pt)
            effect = body.get("e")
            if effect is not None and not isinstance(effect, dict):
                raise TypeError("effect")
            return validate_event(body["b"]), body["n"], effect
        except (EventFormatError, KeyError, TypeError):
            raise StorageError("SCIM envelope holds a malformed body") from None

    def _check_same(self, tx: Overlay, tk: TenantKeys, leaf: bytes, ev: Event) -> None:
        """A retried eid must carry the same event (when the original is still readable)."""
        opened = self._open(tx, tk, leaf_hash(leaf))
        if opened is None:
            return  # erased: nothing to compare with; the original receipt stands
        _, nonce = opened
        if not hmac.compare_digest(commitment(nonce, ev), parse_leaf(leaf).c):
            raise Conflict(f"eid {ev['eid']} was already logged with a different event")

    # -- pseudonyms ---------------------------------------------------------------------------

    async def pseudonyms(self, tenant: str, refs: Sequence[tuple[str, str]]) -> list[bytes]:
        """``pid`` of each (rt, id) under that subject's pseudonym key (created if needed)."""

        def stage(tx: Overlay) -> list[bytes]:
            tk = self.keys.tenant_or_create(tx, tenant)
            return [self.keys.pid_or_create(tx, tk, rt, rid) for rt, rid in refs]

        return await self._write_grouped(stage)

    # -- search -------------------------------------------------------------------------------

    def search(
        self, tenant: str, f: Filters, limit: int, cursor: bytes | None, pub: Published
    ) -> tuple[list[Found], bytes | None]:
        """One page of the tenant's events matching all filters, oldest first (log time).

        Only events in the tree of ``pub`` are returned. The page ends after ``limit``
        results or ``max_scan`` index records; the returned cursor (``ts ‖ leaf hash`` of
        the last record examined) continues it, and is None when nothing follows.
        """

        def run(tx: Overlay) -> tuple[list[Found], bytes | None]:
            tk = self.keys.tenant(tx, tenant)
            if tk is None:
                return [], None
            conds: list[bytes] = []
            for name, fld in FILTERS:
                value = getattr(f, name)
                if value is None:
                    continue
                if name == "ref":
                    p = self.keys.pid(tx, tk, f.ref_rt, value)
                    if p is None:
                        return [], None
                    raw = _ref_value(f.ref_rt, p)
                else:
                    raw = value.encode()
                conds.append(fld + tk.index_hash(fld, raw))
            if conds:
                prefix = store.index_prefix(tk.tn, conds[0])
            else:
                prefix = store.tenant_events_prefix(tk.tn)
            others = conds[1:]
            start = prefix + store.ts_bytes(f.since or 0)
            if cursor is not None:
                start = max(start, prefix + cursor + b"\x00")  # strictly after the cursor
            results: list[Found] = []
            scanned = 0
            for key, _ in tx.rv.aux_range(prefix, start):
                tail = key[len(prefix) :]
                ts, lh = store.split_tail(tail)
                if f.until is not None and ts >= f.until:
                    return results, None
                scanned += 1
                if all(tx.rv.aux(store.index_prefix(tk.tn, c) + tail) is not None for c in others):
                    found = self._found(tx, tk, lh, pub)
                    if found is not None:
                        results.append(found)
                if len(results) >= limit or scanned >= self.limits.max_scan:
                    return results, tail
            return results, None

        return self._read(run)

    def _found(self, tx: Overlay, tk: TenantKeys, lh: bytes, pub: Published) -> Found | None:
        index = tx.rv.index_of(lh)
        if index is None or index >= pub.size:
            return None  # pending, or sequenced after the checkpoint this page answers to
        leaf = tx.rv.entry(index)
        raw = tx.get(store.envelope_key(lh))
        if leaf is None or raw is None:
            raise StorageError("SCIM event missing from the log or the store")
        env = decode_envelope(raw)
        opened = self._open_full(tx, tk, lh)
        if opened is None:
            return Found(index, leaf, lh, env.ts, env.eid, None, None)
        ev, nonce, effect = opened
        return Found(index, leaf, lh, env.ts, env.eid, ev, nonce, effect)

    # -- receipts -----------------------------------------------------------------------------

    def receipts(
        self, tenant: str, *, eid: str | None = None, req: str | None = None
    ) -> list[ReceiptInfo]:
        """Receipts of the tenant's event ``eid``, or of all events of request id ``req``."""

        def run(tx: Overlay) -> list[ReceiptInfo]:
            tk = self.keys.tenant(tx, tenant)
            if tk is None:
                return []
            lhs: list[bytes] = []
            if eid is not None:
                leaf = tx.get(store.eid_key(tk.tn, eid))
                if leaf is not None:
                    lhs.append(leaf_hash(leaf))
            if req is not None:
                cond = _FIELD["req"] + tk.index_hash(_FIELD["req"], req.encode())
                prefix = store.index_prefix(tk.tn, cond)
                for key, _ in tx.rv.aux_range(prefix):
                    lhs.append(store.split_tail(key[len(prefix) :])[1])
                    if len(lhs) >= self.limits.max_receipts:
                        break
            out = []
            for lh in lhs:
                raw = tx.get(store.envelope_key(lh))
                if raw is None:
                    raise StorageError("SCIM event without an envelope")
                env = decode_envelope(raw)
                leaf = tx.get(store.eid_key(tk.tn, env.eid))
                if leaf is None:
                    raise StorageError("SCIM event without an eid record")
                erased = isinstance(env, Tombstone)
                out.append(ReceiptInfo(env.eid, leaf, lh, env.ts, tx.rv.index_of(lh), erased))
            return out

        return self._read(run)

    # -- the log's own events -----------------------------------------------------------------

    def _system_event(
        self,
        tenant: str,
        principal: Principal,
        *,
        rt: str,
        op: str,
        action: str,
        ocsf: list[int],
        method: str,
        path: str,
        dig: bytes,
        length: int,
        req_id: str,
        x: dict[str, Any],
        rid: str | None = None,
    ) -> Event:
        now = self.clock()
        eid = str(uuid7(now))
        return new_event(
            tenant=tenant,
            sp={"id": "tlog"},
            op=op,
            rt=rt,
            rid=rid or eid,
            eid=eid,
            ts=now,
            actor={"kind": "bearer", "id": principal.token_id, "name": principal.role},
            corr=req_id,
            req={"m": method, "p": path, "dig": dig, "len": length},
            res=200,
            outcome="success",
            acts=[{"a": action, "ocsf": ocsf}],
            x=x,
        )

    async def record_access(
        self,
        tenant: str,
        principal: Principal,
        *,
        what: str,
        path: str,
        query: Sequence[tuple[str, str]],
        counts: Mapping[str, int],
        req_id: str,
    ) -> tuple[Submitted, Published]:
        """Append an access event: who read how many bodies with which query (keyed digest).

        No personal data: the query itself is only present as HMAC(tenant index key, query),
        which the operator can check against a suspected query and nobody else can.
        """
        qtext = "&".join(f"{k}={v}" for k, v in sorted(query)).encode()
        dig = await self.read_off_loop(
            lambda tx: self._tenant_digest(tx, tenant, qtext), "a tenant key read"
        )
        ev = self._system_event(
            tenant,
            principal,
            rt="tlog.access",
            op="create",
            action=f"tlog.access.{what}",
            ocsf=_OCSF_READ,
            method="GET",
            path=path,
            dig=dig,
            length=len(qtext),
            req_id=req_id,
            x={"what": what, **counts},
        )
        done, pub = await self.submit(tenant, [ev], system=True)
        return done[0], pub

    def _tenant_digest(self, tx: Overlay, tenant: str, data: bytes) -> bytes:
        tk = self.keys.tenant(tx, tenant)
        if tk is None:  # a tenant with no events yet: still a keyed, non-reversible digest
            return hashlib.sha256(self.tenant_ref(tenant) + data).digest()
        return tk.keyed_digest(data)
