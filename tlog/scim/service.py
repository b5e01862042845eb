"""SCIM event service: ingestion (and the service object that the other stages hang off).

No HTTP here (see :mod:`tlog.scim.routes`). The flow of one submission (SCIM.md §4.3):

1. validate the event strictly (:mod:`client.scim`), check its tenant;
2. under one lock, in a worker thread: if the eid is known, take its leaf (a retry);
   otherwise draw a nonce, ``c = HMAC(nonce, det_cbor(event))``, ``leaf = {v, ts, tn, c}``,
   encrypt ``{n: nonce, b: event}`` under the subject's DEK with AAD = leaf hash, and
   stage the eid record, the envelope, the subject/tenant listings and the search index;
3. on a store with ``aux_in_batch`` (LMDB and PostgreSQL): hand the staged records and the
   leaves to the sequencer (:meth:`tlog.sequencer.Sequencer.enqueue`), which commits them
   with the batch in **one** durable transaction and answers once its checkpoint is signed
   and remembered; a store without it would commit the records in one durable ``put_aux``
   transaction, then ``await sequencer.submit(leaves)``.

Group commit: submissions that arrive while a group is being staged or committed form the
next group. A group is staged while the one before it is still being committed, on top of
that one's records (read through, never yet durable); if that commit fails, every group
staged on it fails too and nothing of them is stored (:meth:`_check_chain`).

With two commits (a store without ``aux_in_batch``), a crash between them leaves an eid
record whose leaf is not in the log; a retry of the same eid resubmits exactly those leaf
bytes, and the log deduplicates by leaf hash, so one eid never becomes two leaves. Until
then the event is invisible to search and its receipt says ``pending``.

Subjects (whose DEK encrypts an event): ``(tenant, rt, rid)``; without ``rid`` (a failed
create) ``(tenant, rt, xid)``; without either, ``(tenant, rt, userName)`` (casefolded, from
``mods``); only events with none of the three share one per-tenant ``(tenant, rt, none)``
subject, which retention expiry shreds.

The other stages, one module each, reach the store through this object's writer and reader:

* :mod:`tlog.scim.keys`: the key hierarchy and the envelope crypto (sealing and opening
  bodies and resource state);
* :mod:`tlog.scim.search` (``self.searcher``): the search index and the reads over it
  (search pages, receipts);
* :mod:`tlog.scim.access` (``self.access``): the log's own events, and access events;
* :mod:`tlog.scim.erasure` (``self.erasures``): erasure, retention and legal holds.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.formats.merkle import leaf_hash
from client.scim.cbor import EventFormatError, dumps_det
from client.scim.event import (
    ACTOR_NONCE_SIZE,
    ACTOR_SUBJECT_RT,
    MAX_SAFE_INT,
    Event,
    actor_cbor,
    actor_handle,
    actor_seal_digest,
    check_forms,
    check_parts,
    encode_event,
    pseudonymous_actor_cbor,
)
from client.scim.leaf import (
    NONCE_SIZE,
    commitment,
    commitment_unchecked,
    effect_commitment,
    make_leaf,
    parse_leaf,
)
from client.scim.leaf import pid as make_pid
from client.scim.reserved import reserved_names
from tlog.auth import Forbidden
from tlog.backend import AuxFenced, Backend, StorageError, TurnTimeout
from tlog.errors import Conflict
from tlog.limits import ScimLimits
from tlog.log import BatchResult, Log, Published
from tlog.reads import ReadPool, settle_on_loops
from tlog.scim import store
from tlog.scim.access import AccessLog
from tlog.scim.effects import (
    MEMBERS_KNOWN,
    classify,
    classify_create,
    encode_effect,
    encode_state,
    mark_members_known,
    members_known,
)
from tlog.scim.erasure import Erasures
from tlog.scim.keys import (
    ActorOpening,
    KeyRing,
    KeysRotated,
    RandomPool,
    SubjectId,
    SubjectKeys,
    TenantKeys,
    envelope_plaintext,
    epoch_of,
    legacy_user_name_keys,
    seal_actor,
    seal_envelope,
    seal_state,
    user_name_key,
)
from tlog.scim.search import FILTERS, Searcher, effect_index_values, index_values
from tlog.scim.store import Overlay, PendingWrites
from tlog.sequencer import Sequencer, SequencerStopped

__all__ = ["ScimLimits", "ScimService", "Submitted", "subject_of"]

T = TypeVar("T")

log = logging.getLogger("tlog.scim.service")
# The clock this far behind the log time (ms) is said loudly, at most every
# CLOCK_BEHIND_EVERY seconds (ScimService.log_time).
CLOCK_BEHIND_MS = 60_000
CLOCK_BEHIND_EVERY = 600.0

SYSTEM_PREFIX = "tlog."
GROUP_LINGER = 0.05  # seconds an idle group writer waits for work before its thread ends
# Several frontends on one database: how many times a submission (or an erasure) is staged
# again after another frontend took the SCIM writer fence before it committed, and the
# most a frontend waits (random, so that two frontends taking turns do not collide in
# step) before it claims the fence back: FENCE_BACKOFF after a first loss, doubling with
# each further loss of the same submission up to FENCE_BACKOFF_MAX (under heavy load two
# frontends could otherwise keep taking the fence from each other until the retries ran
# out: at most ~2.5 s of waits in all).
FENCE_RETRIES = 8
FENCE_BACKOFF = 0.01
FENCE_BACKOFF_MAX = 0.64
# Several frontends on one database: the SCIM staging turn (Backend.hold_stage_turn) is
# kept while this frontend stages and commits groups, at least STAGE_QUANTUM seconds; then,
# before each group, if another frontend waits for it, this one lets its groups in flight
# commit and gives it up (queueing for it again behind the waiter).
STAGE_QUANTUM = 0.05
_FIELD = dict(FILTERS)
_INDEX_MEMO = 1 << 14  # index conditions remembered per staging (bounded memory)
# index fields whose values differ from event to event (search.FILTERS)
_RID, _XID, _REQ = _FIELD["rid"], _FIELD["xid"], _FIELD["req"]
# Actors remembered across stagings (ScimService._actor_keys): a bound, not an LRU
_ACTOR_CACHE = 4096
_DAY_MS = 86_400_000  # a UTC day: a log time's epoch (its month) moves only between days
_UNIQUE_FIELDS = frozenset((_RID, _XID, _REQ))


def _nothing() -> None:
    """Nothing to give back (ScimService._take_claim_hold)."""


def _encode_validated(ev: Event) -> bytes:
    """The canonical encoding of an event that was validated on the way in."""
    return encode_event(ev)


@dataclass(slots=True)
class _Job:
    """A submission waiting for the group writer (:meth:`ScimService._write_grouped`)."""

    fn: Callable[[Overlay], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    sequenced: bool
    # a submission's tenant and events: the records its staging reads first, read ahead
    # with the group's others (ScimService._prefetch)
    reads: tuple[str, Sequence[Event]] | None = None
    attempts: int = 0  # stagings that another frontend's fence claim undid (FENCE_RETRIES)


def _answer(answers: list[tuple[_Job, BaseException | None, Any]]) -> None:
    """Resolve the jobs' futures: one wake-up of each event loop for all of them."""
    settle_on_loops((job.loop, job.future, err, res) for job, err, res in answers)


@dataclass(slots=True)
class _State:
    """A subject's resource state as the events of this staging left it (not yet staged)."""

    state: dict[str, Any] | None
    epoch: int
    aead: AESGCM
    dirty: bool = False
    # ``state`` was made by classify_create, its keys in deterministic order: encoded by
    # cbor2's plain encoder (the same bytes as encode_state; tested)
    ordered: bool = False


@dataclass(slots=True)
class _Batch:
    """What one staging (one batch, one transaction) looks up once and reuses.

    ``states``: each classified subject's state, decrypted once and carried from event to
    event of the batch; :meth:`ScimService._flush_states` encrypts and stages the last
    state of each subject once, at the end of the staging (not once per event)."""

    seen: dict[str, tuple[Accepted, bytes]] = field(default_factory=dict)
    subjects: dict[tuple[str, str, str], SubjectKeys] = field(default_factory=dict)
    deks: dict[tuple[bytes, int], AESGCM] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)
    states: dict[bytes, _State] = field(default_factory=dict)
    index: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)  # (field, value) → cond
    rand: RandomPool = field(default_factory=RandomPool)
    actors: dict[str, _ActorKeys] = field(default_factory=dict)  # actor id → its keys


@dataclass(frozen=True, slots=True)
class _ActorKeys:
    """An actor's subject (tenant, ACTOR_SUBJECT_RT, id) as a staging seals under it: its
    kid, the actor's pid under its pseudonym key, and its DEK of ``epoch``."""

    kid: bytes
    pid: bytes
    epoch: int
    aead: AESGCM


def _seal(
    tk: TenantKeys,
    aead: AESGCM,
    lh: bytes,
    nonce: bytes,
    encoded: bytes,
    encoded_effect: bytes | None,
    ak: _ActorKeys | None,
    sent_actor: bytes,
    an: bytes | None,
    rand: RandomPool,
) -> tuple[bytes, bytes]:
    """The envelope (iv, ciphertext) of the event ``lh`` under its subject's ``aead``: the
    event, its effect and, with actor keys ``ak``, the actor as sent sealed under them with
    its retry digest. The same steps, and random draws, on the general path and the batch
    pipeline (:meth:`ScimService._stage`, :meth:`ScimService._stage_new`)."""
    sealed = retry = None
    if ak is not None and an is not None:
        sealed = seal_actor(ak.aead, ak.kid, ak.epoch, lh, sent_actor, an, rand)
        retry = tk.actor_retry_digest(lh, sent_actor)
    return seal_envelope(
        aead, lh, envelope_plaintext(nonce, encoded, encoded_effect, sealed, retry), rand
    )


class _Pipeline:
    """What one staging's batch pipeline (:meth:`ScimService._stage_new`) computes once:
    the parts of every leaf and key that only depend on the tenant and the log time, and
    the records it stages, in order, in bulk (:meth:`Overlay.put_many`)."""

    def __init__(self, tk: TenantKeys, now: int) -> None:
        self.now = now
        self.epoch = epoch_of(now)
        # A leaf {c, e, v, tn, ts} made by make_leaf (which checks tn and ts), cut around
        # its two commitments: each event's leaf is head ‖ c ‖ mid ‖ e ‖ tail.
        c0, e0 = b"\x00" * 32, b"\x01" * 32
        leaf = make_leaf(now, tk.tn, c0, e0)
        i, j = leaf.index(c0), leaf.index(e0)
        self.leaf_head, self.leaf_mid, self.leaf_tail = leaf[:i], leaf[i + 32 : j], leaf[j + 32 :]
        # ``ts`` is the leaf's last field (deterministic order: c, e, v, tn, ts): the tail
        # ends with its encoding, the one part of the cut that moves with the log time (at)
        self.ts_cbor = bytes(cbor2.dumps(now))
        if not self.leaf_tail.endswith(self.ts_cbor):  # pragma: no cover - make_leaf's order
            raise AssertionError("the leaf's ts is not its last field")
        self.day = now // _DAY_MS
        self.ts = store.ts_bytes(now)
        self.subject_prefix = store.subject_key(tk.tn, b"")
        self.tenant_prefix = store.tenant_events_prefix(tk.tn)
        self.index_prefix = store.index_prefix(tk.tn, b"")
        self.envelope_prefix = store.envelope_key(b"")
        # index conditions by event shape, rid/xid/req left to fill in (_new_conds)
        self.templates: dict[tuple[Any, ...], list[bytes]] = {}
        # the records staged, in order, not yet in the overlay (Overlay.put_many)
        self.keys: list[bytes] = []
        self.values: list[bytes] = []

    def clone(self) -> _Pipeline:
        """``copy.copy(self)`` with no records pending: what ``copy.copy`` of a plain
        object does (a new instance, this one's attributes), without its generic
        ``__reduce_ex__`` round (~6 µs of each single event's staging; tested equal)."""
        pipe = object.__new__(_Pipeline)
        pipe.__dict__.update(self.__dict__)
        pipe.keys, pipe.values = [], []
        return pipe

    def at(self, tk: TenantKeys, now: int) -> _Pipeline:
        """``_Pipeline(tk, now)`` for a pipeline of ``tk`` made at another log time, its
        templates kept, without making a leaf again: only the leaf's ``ts`` (the end of its
        tail), the time key and, on another UTC day, the epoch move (tested equal). A
        group's stagings rebuilt it each time the clock had moved (~3 in 4 single events)."""
        if not 0 <= now <= MAX_SAFE_INT:
            pipe = _Pipeline(tk, now)  # make_leaf refuses it
        else:
            pipe = self.clone()
            ts_cbor = bytes(cbor2.dumps(now))
            pipe.leaf_tail = self.leaf_tail[: -len(self.ts_cbor)] + ts_cbor
            pipe.ts_cbor = ts_cbor
            pipe.now, pipe.ts, pipe.day = now, store.ts_bytes(now), now // _DAY_MS
            if pipe.day != self.day:
                pipe.epoch = epoch_of(now)
        pipe.templates = self.templates
        return pipe

    def flush(self, tx: Overlay) -> None:
        """Stage the pending records (before the general path reads, and at the end)."""
        if self.keys:
            tx.put_many(self.keys, self.values)
            self.keys, self.values = [], []


class _GroupMemo:
    """What the stagings of one group share for one tenant's keys (ScimService._pipeline):
    also their random pool, so that a group of single events reads the OS's randomness a
    few times, not once each (a staging rolled back leaves its draws unused: the pool never
    hands a byte out twice)."""

    __slots__ = ("index", "pipe", "rand", "tk")

    def __init__(
        self,
        tk: TenantKeys,
        pipe: _Pipeline,
        index: dict[tuple[bytes, bytes], bytes],
        rand: RandomPool,
    ) -> None:
        self.tk = tk
        self.pipe = pipe
        self.index = index
        self.rand = rand


class Accepted(NamedTuple):
    """A staged event: its leaf, and whether it was logged before (one per event of a
    batch, so a tuple rather than a dataclass)."""

    eid: str
    leaf: bytes
    leaf_hash: bytes
    ts: int
    duplicate: bool
    # The commitment nonce of the leaf's ``c`` (and ``e``), for the submitter's answer: with
    # it, whoever submitted the event checks that the leaf commits to exactly that event.
    # None: the body is erased (a retry after an erasure) or the event is the log's own.
    nonce: bytes | None = None
    # The event's actor as the log stored it, pseudonymous (docs/design.md, "Actors"):
    # (pid, sd, an). With it the submitter rebuilds the stored event from the one it sent
    # (actor = {kind, pid, sd}) and checks sd = HMAC(an, its actor). ``an`` is None for a
    # retry whose actor was erased since. None: the actor is stored as sent.
    actor: tuple[bytes, bytes, bytes | None] | None = None


@dataclass(frozen=True)
class Submitted:
    eid: str
    leaf: bytes
    leaf_hash: bytes
    ts: int
    duplicate: bool
    index: int
    nonce: bytes | None = None
    actor: tuple[bytes, bytes, bytes | None] | None = None  # as in Accepted


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
    create), casefolded (SCIM userName is case-insensitive) and in NFC
    (:func:`user_name_key`), so an erasure request by userName, in any case or normal
    form, reaches it."""
    name = user_name_sent(ev)
    return None if name is None else user_name_key(name)


def user_name_sent(ev: Mapping[str, Any]) -> str | None:
    """The userName of :func:`user_name_of` as the event carries it."""
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
                return value
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


TS_SEED_ENTRIES = 1024  # entries at the log's end searched for the newest SCIM leaf's ts


def _newest_leaf_ts(storage: Backend) -> int:
    """The ``ts`` of the newest SCIM leaf among the log's last entries (0 if none): where a
    restarted service's log time starts, whatever its clock says."""
    try:
        with storage.read() as rv:
            size = rv.tree_size()
            entries = rv.entries(max(0, size - TS_SEED_ENTRIES), size)
    except StorageError:
        return 0
    for data in reversed(entries):
        try:
            return parse_leaf(bytes(data)).ts
        except (EventFormatError, ValueError, TypeError):
            continue  # not a SCIM leaf (a raw entry)
    return 0


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
        # The log time never goes back in this process (log_time), starting from the newest
        # SCIM leaf near the log's end (a restart after the clock stepped back).
        self._ts_lock = threading.Lock()
        self._clock = clock
        self._ts_floor = _newest_leaf_ts(storage)
        self._behind_said = 0.0  # monotonic time before which a clock-behind line is not said
        # One writer of SCIM records at a time: "is this eid new?", key creation, erasure
        # and the commit must not interleave (a shred racing an ingestion could otherwise
        # leave a DEK that nothing erases).
        self._write_lock = threading.Lock()
        # Several frontends on one database (``storage.shared``): every write of SCIM
        # records carries the writer fence this process claimed before it read what it
        # staged (tlog.backend.Backend.claim_aux_writer). When another frontend claims it,
        # this one's commits under it are refused (AuxFenced: nothing written); the
        # sequencer's ``failed`` hook sets ``_fence_taken`` (under ``_chain``), and the next
        # staging claims the fence again, reads afresh and stages the refused submissions
        # again (``FENCE_RETRIES``). Under the writer lock; LMDB needs no fence (None).
        self._fence: bytes | None = None
        self._claimed = False
        self._fence_taken = False
        # The write turn taken with the latest claim (Backend.hold_turn), until the first
        # write staged under that claim is committed: no other frontend can claim the fence
        # in between, so a staging that lost the fence commits at its next attempt instead
        # of losing it again (two loaded frontends otherwise kept taking it from each other
        # until a submission's retries ran out: 503). Under the writer lock.
        self._claim_hold: Callable[[], None] | None = None
        # The SCIM staging turn (Backend.hold_stage_turn), on a shared store: held while
        # this frontend stages groups and until they are committed, so that another
        # frontend claims the fence only when nothing staged here is in flight. Without
        # it, each claim refused the other frontend's groups in flight (staged and sent to
        # the database again: under balanced load ~40% of the batches, half of the CPU a
        # request). Given back when the group writer goes idle, or at a group's start once
        # held STAGE_QUANTUM seconds if another frontend waits. Under the writer lock.
        self._stage_turn: Callable[[], None] | None = None
        self._stage_since = 0.0
        # Called after each claim of the fence on a shared store, with whether another
        # frontend had taken it (metrics: tlog_scim_writer_fence_claims).
        self.on_fence_claim: Callable[[bool], None] | None = None
        # Group commit of submissions (_write_grouped): queued jobs, and whether the writer
        # thread is draining them.
        self._group: list[_Job] = []
        self._group_lock = threading.Condition()
        self._group_running = False
        # On a store that commits records with a batch (LMDB, PG), a group's records go to the
        # sequencer with its leaves: one durable transaction for both (module docstring).
        # Until it is durable, later groups stage on top of its writes (``_pending``; only
        # the group writer touches it, under the writer lock); ``_chain`` guards the
        # counters the sequencer's threads update.
        self._coalesce = storage.aux_in_batch
        self._pending = PendingWrites()
        self._chain = threading.Condition()
        self._handed_seq = 0  # groups handed to the sequencer
        self._durable_seq = 0  # the newest of them whose commit is durable
        self._inflight = 0  # handed and not answered yet
        self._epoch = 0  # bumped when the commit of a handed group failed
        self._broken_upto = 0  # groups up to this one were staged on top of a failed one
        self._broken_by_fence = False  # ... because another frontend took the fence
        self._pending_epoch = 0
        # While the group writer stages one group (_commit_group, under the writer lock):
        # per tenant keys, what every staging of the group may share because it is a pure
        # function of those keys (and of the log time): see _pipeline. None otherwise.
        self._group_memo: dict[bytes, _GroupMemo] | None = None
        # ... and the keys of each tenant whose record is durable: read once per group,
        # not once per staging (_tenant_keys).
        self._group_tenants: dict[str, TenantKeys] | None = None
        # Actors whose subject record and DEK are durable, across stagings (the writer's
        # only): (tn, actor id) -> (the TenantKeys they were read under, their keys). An
        # erasure or expiry rotates the tenant's KEK, so its TenantKeys is another object
        # afterwards and nothing remembered before is used again (_actor_keys).
        self._actor_cache: dict[tuple[bytes, str], tuple[TenantKeys, _ActorKeys]] = {}
        # The last actor encoded, with its det-CBOR (_pseudonymous): a stream of events by
        # one actor encodes it once.
        self._last_actor: tuple[dict[str, Any], bytes] | None = None
        # The last actor's handle (_actor_keys), for the same reason.
        self._last_handle: tuple[dict[str, Any], str | None] | None = None
        # The log time of the latest staging: the DEK epoch the next group's known
        # subjects most likely use (read ahead by _prefetch; a wrong guess reads nothing
        # useful, never anything wrong).
        self._last_now: int | None = None
        self.erasures = Erasures(self)
        self.searcher = Searcher(self)
        self.access = AccessLog(self)
        # The log's read pool (tlog.reads): store reads of the async methods run there,
        # never on the event loop (without one, in a worker thread).
        self.reads = reads

    # -- plumbing -----------------------------------------------------------------------------
    # The writer, the reader and the sequencing the stage modules (search, erasure, access)
    # share: public so that they use them as callers, not through private names.

    def write(self, fn: Callable[[Overlay], T]) -> T:
        """Run ``fn`` on a fresh snapshot under the writer lock, then commit its writes
        (again from a fresh snapshot if another frontend took the writer fence meanwhile:
        ``fn`` must only stage into its overlay)."""
        return self.write_rotating(lambda tx: (fn(tx), set()))

    def write_rotating(self, fn: Callable[[Overlay], tuple[T, set[bytes]]]) -> T:
        """:meth:`write`, but when ``fn`` names tenants to re-key (erasure, expiry), their
        key chain is rotated in the same transaction (:mod:`tlog.scim.erasure`)."""
        for attempt in range(FENCE_RETRIES + 1):
            with self._write_lock:
                self._drain()
                self._enter_stage_turn()
                try:
                    done = self._write_once(fn, attempt)
                finally:
                    # Nothing of this write is in flight now: unless the group writer
                    # runs (it gives the turn back when idle), the other frontends may stage.
                    self._leave_stage_turn_if_idle()
                if done is not None:
                    return done[0]
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_once(
        self, fn: Callable[[Overlay], tuple[T, set[bytes]]], attempt: int
    ) -> tuple[T] | None:
        """One attempt of :meth:`write_rotating`, under the writer lock: ``(its result,)``,
        or None when it must be staged again under a new claim."""
        fence = self._writer_fence(attempt)
        # A direct write (an erasure, an expiry) may stage for long (an erasure rewraps
        # every key of its tenant), so it gives back at once the write turn its claim took:
        # the other frontends' batches go on meanwhile. Direct writes are rare; the group
        # writer's submissions are what kept losing the fence.
        self._give_back_claim_hold()
        try:
            with self.storage.read() as rv:
                tx = Overlay(rv)
                result, rekey = fn(tx)
                new = self.keys.stage_rotation(tx, rekey) if rekey else None
                items = tx.items()
        except KeysRotated as exc:
            self._keys_rotated(exc, attempt)
            return None
        halted = self.log.halted
        if items and halted is not None:
            # Every direct write (an erasure, an expiry, a hold, a retention period) logs an
            # event of its own after the commit; on a log that stopped signing that event
            # could not be, and the caller would be told 503 about a shred that happened
            # (red team 28). Refused before anything is committed.
            raise SequencerStopped(f"nothing was done: the log is not signing: {halted}")
        try:
            if new is None:
                if items:
                    self.storage.put_aux(items, fence=fence)
            else:
                self.keys.commit_rotation(
                    new, functools.partial(self.storage.put_aux, items, fence=fence)
                )
        except AuxFenced:
            self._fence_lost(attempt)
            return None
        return (result,)

    def _writer_fence(self, losses: int = 0) -> bytes | None:
        """Under the writer lock, before a snapshot is opened for staging: the writer fence
        this process holds, claimed (again) first if it has none or another frontend took
        it. After each claim the master key in memory is checked against the store's (an
        erasure on another frontend rotates it): nothing is staged under a stale one.
        ``losses``: how many times what is about to be staged already lost the fence."""
        with self._chain:
            taken, self._fence_taken = self._fence_taken, False
        if self._claimed and not taken:
            return self._fence
        if taken and self._stage_turn is None:
            # Another frontend writes SCIM records too: give its commit time to land
            # before taking the fence back (else both could keep refusing each other),
            # the longer the more often this staging has lost it. Not while this one
            # holds the staging turn: the other frontend gave it back with nothing of its
            # own in flight.
            ceiling = min(FENCE_BACKOFF * 2 ** max(losses - 1, 0), FENCE_BACKOFF_MAX)
            time.sleep(random.uniform(0, ceiling))
        self._claimed = False
        self._give_back_claim_hold()
        release = self.storage.hold_turn() if self.storage.shared else None
        try:
            self._fence = self.storage.claim_aux_writer()
            if self._fence is not None:
                if self.on_fence_claim is not None:
                    self.on_fence_claim(taken)
                self.keys.follow_rotation()
        except BaseException:
            if release is not None:
                release()
            raise
        self._claim_hold = release
        self._claimed = True
        return self._fence

    def _enter_stage_turn(self) -> None:
        """Under the writer lock, before :meth:`_writer_fence`, on a shared store: hold the
        SCIM staging turn (:meth:`tlog.backend.Backend.hold_stage_turn`). Held already:
        kept, unless it was held ``STAGE_QUANTUM`` seconds and another frontend waits for
        it; then every group in flight is committed first (:meth:`_drain`), so the claim
        the other frontend makes next refuses nothing of this one's, and this one queues
        for it again. On taking it, a fence that is no longer this frontend's is claimed
        again before anything is staged (without the backoff: the other frontend has
        nothing in flight). When the turn cannot be had in time (:class:`TurnTimeout`)
        the group is staged without it, as before the turn existed: the fence decides."""
        if not self.storage.shared:
            return
        if self._stage_turn is not None:
            now = time.monotonic()
            if now - self._stage_since < STAGE_QUANTUM:
                return
            self._stage_since = now
            if not self.storage.stage_turn_wanted():
                return
            self._drain()
            self._give_back_stage_turn()
        try:
            release, fence = self.storage.hold_stage_turn()
        except TurnTimeout as exc:
            log.warning("staging SCIM records without the staging turn: %s", exc)
            return
        self._stage_turn = release
        self._stage_since = time.monotonic()
        if self._claimed and fence != self._fence:
            self._mark_fence_taken()

    def _give_back_stage_turn(self) -> None:
        release, self._stage_turn = self._stage_turn, None
        if release is not None:
            release()

    def _leave_stage_turn_if_idle(self) -> None:
        """Under the writer lock: give the staging turn back if the group writer is not
        running (nothing staged here is in flight then, or it will give it back itself)."""
        if self._stage_turn is None:
            return
        self._drain()
        with self._group_lock:
            busy = self._group_running or bool(self._group)
        if not busy:
            self._give_back_stage_turn()

    def _take_claim_hold(self) -> Callable[[], None]:
        """Under the writer lock, right after :meth:`_writer_fence`: the write turn held
        since its claim, for the first write staged under it to give back once committed
        or refused (nothing to give back when no claim was made)."""
        release, self._claim_hold = self._claim_hold, None
        return release if release is not None else _nothing

    def _give_back_claim_hold(self) -> None:
        release, self._claim_hold = self._claim_hold, None
        if release is not None:
            release()

    def _keys_rotated(self, exc: KeysRotated, attempt: int) -> None:
        """A direct write's staging met tenant keys the master key in memory cannot open:
        on a shared store, another frontend rotated it (and took the fence) since this one
        last claimed. Follow the rotation and stage again under a new claim (as a group's
        submissions do, :meth:`_rotated_elsewhere`), or raise why not."""
        err = self._rotated_elsewhere(exc)
        if not isinstance(err, AuxFenced):
            raise err
        self._fence_lost(attempt)

    def _fence_lost(self, attempt: int) -> None:
        """A direct write was refused (:class:`AuxFenced`): claim again, or give up."""
        if attempt >= FENCE_RETRIES:
            raise AuxFenced(
                "other frontends kept taking the SCIM writer fence: nothing of this write was "
                f"committed after {FENCE_RETRIES + 1} attempts; retry"
            )
        self._mark_fence_taken()

    def _mark_fence_taken(self) -> None:
        """Another frontend took the writer fence: the next staging claims it again."""
        with self._chain:
            self._fence_taken = True

    def _drain(self) -> None:
        """Under the writer lock: wait until every group handed to the sequencer is answered,
        so that a direct write (erasure, expiry) reads and overwrites only durable records,
        and nothing staged before it commits after it."""
        with self._chain:
            while self._inflight:
                self._chain.wait()

    async def _write_grouped(
        self,
        fn: Callable[[Overlay], Any],
        *,
        sequenced: bool = False,
        reads: tuple[str, Sequence[Event]] | None = None,
    ) -> Any:
        """:meth:`write`, with group commit: the submissions that arrive while a commit is
        being made are staged together in the next transaction (each isolated: one that
        raises is rolled back alone and gets its exception), so concurrent single events
        share one durable write instead of one fsync each. Returns once ``fn``'s writes
        are durable.

        ``sequenced`` (a submission, only on a store that commits records with a batch):
        ``fn`` returns its :class:`Accepted` events; their leaves go to the sequencer with
        the group's records, in one transaction, and this returns what :meth:`sequence`
        returns, once the leaves are in a remembered signed checkpoint."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue_jobs([_Job(fn, loop, fut, sequenced, reads)])
        if self._coalesce:
            return await self.seq.bounded(fut)
        return await fut

    def _queue_jobs(self, jobs: list[_Job]) -> None:
        """Queue jobs for the group writer (new ones, or ones staged again), starting it."""
        with self._group_lock:
            # Only a writer that found the group empty waits: whoever fills it wakes it.
            wake = not self._group
            self._group.extend(jobs)
            start = not self._group_running
            self._group_running = True
            if wake:
                self._group_lock.notify()
        if start:
            threading.Thread(target=self._group_loop, name="tlog-scim-writer", daemon=True).start()

    def _restage(self, answers: list[tuple[_Job, BaseException | None, Any]]) -> None:
        """Answer ``answers``, except the submissions refused only because another frontend
        took the writer fence (:class:`AuxFenced`): nothing of them was written, so they
        are staged again from a fresh read (at most ``FENCE_RETRIES`` times each)."""
        again = [
            job
            for job, err, _ in answers
            if isinstance(err, AuxFenced) and job.attempts < FENCE_RETRIES
        ]
        if again:
            for job in again:
                job.attempts += 1
            retried = {id(job) for job in again}
            answers = [a for a in answers if id(a[0]) not in retried]
            self._queue_jobs(again)
        _answer(answers)

    def _group_loop(self) -> None:
        while True:
            with self._group_lock:
                if not self._group:
                    # Linger a moment before the thread ends: under steady load the next
                    # submission comes within it (no thread start per group).
                    self._group_lock.wait(GROUP_LINGER)
                jobs, self._group = self._group, []
                if not jobs:
                    self._group_running = False
                    break
            self._commit_group(jobs)
        if self._stage_turn is not None:
            # Idle: once what this writer handed off is committed, the other frontends
            # may stage (unless a new group writer started meanwhile: it keeps the turn).
            with self._write_lock:
                self._leave_stage_turn_if_idle()

    def _commit_group(self, jobs: list[_Job]) -> None:
        answers: list[tuple[_Job, BaseException | None, Any]] = []
        ok: list[tuple[_Job, Any]] = []
        try:
            with self._write_lock:
                self._enter_stage_turn()
                fence = self._writer_fence(max(job.attempts for job in jobs))
                # The write turn held since a claim just made, if any: given back below,
                # unless the group is handed off (then _group_done gives it back).
                release = self._take_claim_hold()
                try:
                    # The epoch the pending writes are pruned by: a commit that fails after
                    # this refuses the group at its hand-off (``_hand_off``).
                    epoch = self._prune_pending() if self._coalesce else self._epoch
                    with self.storage.read() as rv:
                        tx = Overlay(rv, layers=self._pending.layers())
                        self._group_memo, self._group_tenants = {}, {}
                        try:
                            self._prefetch(tx, [j.reads for j in jobs if j.reads is not None])
                            for job in jobs:
                                if job.future.cancelled():
                                    continue
                                mark = tx.mark()
                                try:
                                    ok.append((job, job.fn(tx)))
                                except KeysRotated as exc:
                                    tx.rollback(mark)
                                    answers.append((job, self._rotated_elsewhere(exc), None))
                                except Exception as exc:
                                    tx.rollback(mark)
                                    answers.append((job, exc, None))
                        finally:
                            self._group_memo = self._group_tenants = None
                        items, written = tx.items(), tx.written()
                    if not self._coalesce:
                        if items:
                            try:
                                self.storage.put_aux(items, fence=fence)
                            except AuxFenced:
                                self._mark_fence_taken()
                                raise
                        answers += [(job, None, res) for job, res in ok]
                    elif ok:
                        release = self._hand_off(ok, items, written, epoch, fence, release)
                finally:
                    release()
        except BaseException as exc:  # nothing was committed: every submission fails
            # ... the staged ones and those never staged (the claim or the staging turn
            # failed first: e.g. a master key that no longer opens the store), which would
            # otherwise wait for the commit bound.
            answered = {id(job) for job, _, _ in answers}
            answers += [(job, exc, None) for job in jobs if id(job) not in answered]
            self._restage(answers)
            if not isinstance(exc, Exception):
                raise
            return
        self._restage(answers)

    def _rotated_elsewhere(self, exc: KeysRotated) -> BaseException:
        """A staging met tenant keys that the master key in memory cannot open (``exc``):
        what to answer. Under the writer lock, on a store several frontends write, that
        happens only when another frontend rotated the master key (an erasure there, which
        also took the fence): follow the rotation and stage again under a new claim
        (:class:`AuxFenced`), or say loudly why this frontend cannot (its key file). One
        writer process (LMDB): no other frontend rotated anything; ``exc`` as before."""
        if not self.storage.shared:
            return exc
        try:
            self.keys.follow_rotation()
        except StorageError as exc:
            return exc
        self._mark_fence_taken()
        return AuxFenced("another frontend rotated the SCIM keys meanwhile: staged again")

    def _hand_off(
        self,
        ok: list[tuple[_Job, Any]],
        items: list[tuple[bytes, bytes | None]],
        written: Mapping[bytes, bytes | None],
        epoch: int,
        fence: bytes | None,
        hold: Callable[[], None],
    ) -> Callable[[], None]:
        """Give a staged group to the sequencer: its events' leaves and all its records
        (``items``; ``written``: the same as a mapping, read through by the groups staged
        before it is durable), for one transaction. Under the writer lock; raises (nothing
        handed) if the sequencer refuses it or a commit this group was staged on top of has
        failed meanwhile.
        ``hold``: the write turn to give back once the group is committed or refused
        (:meth:`_take_claim_hold`); returns what the caller still has to give back."""
        leaves: list[bytes] = []
        hashes: list[bytes] = []
        for job, res in ok:
            if job.sequenced:
                leaves += [a.leaf for a in res]
                hashes += [a.leaf_hash for a in res]
        if not leaves and not items:  # nothing to write (e.g. pseudonyms that all exist)
            _answer([(job, None, res) for job, res in ok])
            return hold
        with self._chain:
            if self._epoch != epoch:
                raise self._broken(
                    "an earlier SCIM commit failed; nothing of this submission was committed"
                )
            seq = self._handed_seq + 1
            self.seq.enqueue(
                leaves,
                hashes,
                items,
                functools.partial(self._group_done, seq, ok, hold),
                check=functools.partial(self._check_chain, seq),
                failed=self._chain_failed,
                fence=fence,
            )
            self._handed_seq = seq
            self._inflight += 1
        if items:
            self._pending.add(seq, written)
        return _nothing

    def _prune_pending(self) -> int:
        """Before a group opens its snapshot: forget the pending writes that are durable (the
        snapshot holds them); all of them when nothing is in flight or a commit failed.
        Returns the epoch this pruned by: the group's (a commit that fails later breaks it)."""
        with self._chain:
            inflight, durable, epoch = self._inflight, self._durable_seq, self._epoch
        if inflight == 0 or epoch != self._pending_epoch:
            self._pending.clear()
            self._pending_epoch = epoch
            return epoch
        self._pending.durable(durable)
        return epoch

    def _broken(self, what: str) -> Exception:
        """Under ``_chain``: why a group staged on a failed commit is refused. When the
        failure was another frontend taking the fence, the group is staged again."""
        if self._broken_by_fence:
            return AuxFenced(what)
        return SequencerStopped(what)

    def _check_chain(self, seq: int) -> None:
        """On the sequencer's writer thread, before group ``seq`` is committed."""
        with self._chain:
            if seq <= self._broken_upto:
                raise self._broken(
                    "staged on top of a SCIM commit that failed; nothing of it was committed"
                )

    def _chain_failed(self, exc: BaseException) -> None:
        """On the writer thread, when a commit carrying a group failed: every group handed
        so far was staged on top of it and must not commit. ``exc``: why it failed
        (:class:`AuxFenced`: another frontend took the fence; claim it again)."""
        with self._chain:
            self._epoch += 1
            self._broken_upto = self._handed_seq
            self._broken_by_fence = isinstance(exc, AuxFenced)
            if self._broken_by_fence:
                self._fence_taken = True

    def _group_done(
        self,
        seq: int,
        ok: list[tuple[_Job, Any]],
        hold: Callable[[], None],
        result: BatchResult | BaseException,
    ) -> None:
        """On the publisher thread: group ``seq`` is durable and in a remembered checkpoint
        (or failed); give back the write turn held since the claim it was staged under, if
        any, and answer its submissions."""
        hold()
        answers: list[tuple[_Job, BaseException | None, Any]] = []
        if isinstance(result, BaseException):
            answers = [(job, result, None) for job, _ in ok]
        else:
            pos = 0
            for job, res in ok:
                if not job.sequenced:
                    answers.append((job, None, res))
                    continue
                n = len(res)
                done = [
                    Submitted(a.eid, a.leaf, a.leaf_hash, a.ts, a.duplicate, i, a.nonce, a.actor)
                    for a, i in zip(res, result.indices[pos : pos + n], strict=True)
                ]
                pos += n
                answers.append((job, None, (done, result.checkpoint)))
            if self.on_logged is not None:
                # The group's events at once (one count per op and outcome, not one per
                # single event), before any of them is answered.
                logged = [ev for job, _ in ok if job.sequenced and job.reads for ev in job.reads[1]]
                if logged:
                    try:
                        self.on_logged(logged)
                    except Exception:  # pragma: no cover - a hook must not stop the answers
                        log.exception("on_logged hook failed")
        with self._chain:
            if not isinstance(result, BaseException):
                self._durable_seq = max(self._durable_seq, seq)
            self._inflight -= 1
            self._chain.notify_all()
        self._restage(answers)

    async def read_off_loop(self, fn: Callable[[Overlay], T], what: str) -> T:
        """:meth:`read` in the read pool (bounded: a stalled store answers 503)."""
        if self.reads is not None:
            return await self.reads.run(lambda: self.read(fn), what)
        return await asyncio.to_thread(self.read, fn)

    def read(self, fn: Callable[[Overlay], T]) -> T:
        """Run ``fn`` on a fresh snapshot (no writes)."""
        for attempt in range(20):
            try:
                with self.storage.read() as rv:
                    return fn(Overlay(rv))
            except KeysRotated:
                # An erasure or expiry rotated the key chain between this snapshot and the
                # keys in memory: a fresh snapshot matches them again. One on another
                # frontend (a shared database) rotated the master key too: adopt it from
                # the key file, or say loudly that this frontend's key file is stale.
                # (One writer process, LMDB: none, the keys in memory are the store's.)
                if self.storage.shared:
                    self.keys.follow_rotation()
                time.sleep(0.002 * (attempt + 1))
        raise StorageError("SCIM keys kept changing during a read")

    def tenant_ref(self, tenant: str) -> bytes:
        return self.keys.tenant_ref(tenant)

    @property
    def clock(self) -> Callable[[], int]:
        """The wall clock (ms) that :meth:`log_time` reads."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], int]) -> None:
        """Another time source (tests): the floor :meth:`log_time` kept from the old one's
        readings is dropped; it starts again from the store's newest SCIM leaf, as at start."""
        floor = _newest_leaf_ts(self.storage)
        with self._ts_lock:
            self._clock = clock
            self._ts_floor = floor

    def clock_is_wall(self) -> bool:
        """Whether :attr:`clock` is the machine's wall clock (not a test's time source)."""
        return self._clock is _now_ms

    def log_time(self) -> int:
        """The log time (ms since the epoch) of what is staged now: the clock, but never below
        what this service stamped before. A wall clock that steps back (an NTP correction, a
        VM restored or migrated) would otherwise give later events earlier ``ts``, and a
        reader paging by ``ts`` that had passed that time (search, ``tlog-client scim
        stream``'s cursor, retention expiry's mark) would never see them."""
        t = self.clock()
        with self._ts_lock:
            floor = self._ts_floor
            if t >= floor:
                self._ts_floor = t
                return t
        if floor - t > CLOCK_BEHIND_MS:
            self._clock_behind(floor, t)
        return floor

    def _clock_behind(self, floor: int, t: int) -> None:
        """Say (at most every CLOCK_BEHIND_EVERY seconds) that events are being stamped with
        a log time well ahead of the clock: the clock is wrong now, or it was ahead when the
        newest events were stamped (then every event since carries that time, and readers
        that wait for a time to pass, such as a SIEM stream's settle window, wait for it)."""
        now = time.monotonic()
        with self._ts_lock:
            if now < self._behind_said:
                return
            self._behind_said = now + CLOCK_BEHIND_EVERY
        log.error(
            "the wall clock is %.0f s behind the log time of the newest SCIM event "
            "(%s): events are stamped with that time, which never goes back, until the clock "
            "passes it. Check the clock (NTP); if it had jumped ahead, every event since "
            "carries that time (docs/operations.md, 'Clock steps')",
            (floor - t) / 1000,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(floor // 1000)),
        )

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
        held = self.check_events(tenant, events, system=system)
        if encoded is None:
            encoded = [_encode_validated(ev) for ev in events]
        elif len(encoded) != len(events):
            raise ValueError("one encoding per event")
        stage = self._stager(tenant, events, encoded, held=held)
        if self._coalesce:
            done: tuple[list[Submitted], Published] = await self._write_grouped(
                stage, sequenced=True, reads=(tenant, events)
            )
        else:
            done = await self.sequence(await self._write_grouped(stage, reads=(tenant, events)))
            if self.on_logged is not None:
                self.on_logged(events)
        return done

    @staticmethod
    def check_events(
        tenant: str, events: Sequence[Event], *, system: bool = False
    ) -> dict[int, str]:
        """What :meth:`submit` refuses before staging anything: an event of another tenant
        (:class:`Forbidden`), a name in the log's reserved namespace, an actor carrying the
        log's pseudonym fields (EventFormatError). Returns the events held by a rule of
        intake added after events could be stored without it (a ``mods[].form`` where the
        adapter never puts one: not a rule of the schema, so that what was stored before it
        is still read), by index, with the error: the staging refuses each of them unless
        it is a retry of an event the log already holds (:meth:`_stage_held`), which gets
        the duplicate answer as any retry does (faith20: before, a relay's retry of such a
        stored event was refused with 400). The reserved namespace stays refused outright:
        the log's own events live there, and a duplicate answer would hand a submitter the
        receipt and commitment nonce of one of them; the actor's ``pid``/``sd`` were never
        in a stored event as sent (the schema refused them before the log set them). A split's
        ``x.part``/``x.parts`` that are not its numbers are refused outright too (red team 20:
        they failed the whole submission with a 500 before, so none was ever stored)."""
        held: dict[int, str] = {}
        for i, ev in enumerate(events):
            if ev["tenant"] != tenant:
                raise Forbidden(f"event {i} is for another tenant than this token's")
            if not system and ("pid" in ev["actor"] or "sd" in ev["actor"]):
                raise EventFormatError(
                    f"event {i}: actor.pid and actor.sd are set by the log (send the actor)"
                )
            try:
                check_forms(ev)
            except EventFormatError as exc:
                held[i] = f"event {i}: {exc}"
            try:
                check_parts(ev)
            except EventFormatError as exc:
                raise EventFormatError(f"event {i}: {exc}") from None
            if not system and reserved_names(ev):
                raise EventFormatError(
                    f"event {i}: resource types and actions in the {SYSTEM_PREFIX!r} namespace "
                    "(in any spelling that normalises to it) are reserved for the log"
                )
        return held

    async def sequence(self, accepted: list[Accepted]) -> tuple[list[Submitted], Published]:
        """Sequence the staged events' leaves (one batch) and say where each landed."""
        res = await self.seq.submit([a.leaf for a in accepted])
        out = [
            Submitted(a.eid, a.leaf, a.leaf_hash, a.ts, a.duplicate, i, a.nonce)
            for a, i in zip(accepted, res.indices, strict=True)
        ]
        return out, res.checkpoint

    def _stager(
        self,
        tenant: str,
        events: Sequence[Event],
        encoded: Sequence[bytes],
        *,
        fast: bool = True,
        held: Mapping[int, str] | None = None,
    ) -> Callable[[Overlay], list[Accepted]]:
        """The staging of ``events`` (run by the writer). ``fast=False``: every event by
        the general path :meth:`_stage` (the reference the batch pipeline is tested
        against: same records, same bytes). ``held``: events an intake rule refuses
        unless they are retries of stored ones (:meth:`check_events`), by index."""
        holds = held or {}

        def stage(tx: Overlay) -> list[Accepted]:
            tk = self._tenant_keys(tx, tenant)
            now = self._last_now = self.log_time()
            batch = _Batch()
            if not fast:
                out = [
                    self._stage_held(tx, tk, ev, enc, batch, holds[i])
                    if i in holds
                    else self._stage(tx, tk, ev, enc, now, batch)
                    for i, (ev, enc) in enumerate(zip(events, encoded, strict=True))
                ]
                self._flush_states(tx, batch)
                return out
            # Creates of new resources (the bulk of a provisioning batch) take the batch
            # pipeline; any other event the general path, in the order submitted.
            pipe = self._pipeline(tk, now, batch)
            stage_new, stage_one = self._stage_new, self._stage
            out = []
            for i, (ev, enc) in enumerate(zip(events, encoded, strict=True)):
                if i in holds:
                    out.append(self._stage_held(tx, tk, ev, enc, batch, holds[i]))
                    continue
                acc = stage_new(tx, tk, ev, enc, batch, pipe)
                if acc is None:
                    pipe.flush(tx)  # staged in order: what the general path reads is there
                    acc = stage_one(tx, tk, ev, enc, now, batch)
                out.append(acc)
            self._flush_states(tx, batch, pipe)
            return out

        return stage

    def _prefetch(self, tx: Overlay, reads: Sequence[tuple[str, Sequence[Event]]]) -> None:
        """Before a group's stagings run (``_group_tenants`` set), on a store whose read
        view reads many keys in one round trip (PostgreSQL; LMDB reads are memory-mapped):
        read the records each staging reads first, for all of the group's events at once,
        instead of one round trip per record: each event's eid record (is it a retry?) and
        its subject's record (is the subject known?), keyed as :meth:`_stage_new` and
        :meth:`_stage` key them, and each tenant's key record, in the same query. A
        subject's key needs the tenant's keys: those last read are the guess (a stale guess
        only reads useless keys; the stagings then read the right ones one by one). Then
        each tenant's keys are read (from what was fetched) and remembered for the group as
        :meth:`_tenant_keys` does. Only reads are moved: every fetched value is the one the
        group's snapshot holds, and what a staging or a group in flight stages still wins
        (:meth:`Overlay.prefetch`)."""
        if not reads or getattr(tx.rv, "aux_many", None) is None:
            return
        memo = self._group_tenants
        keys: list[bytes] = []
        subjects: list[bytes] = []
        unread: dict[str, None] = {}
        for tenant, events in reads:
            tk = None if memo is None else memo.get(tenant)
            if tk is None:
                unread[tenant] = None
                tn = self.keys.tenant_ref(tenant)
                keys.append(store.tenant_key(tn))
                tk = self.keys.cached_tenant(tenant)
            else:
                tn = tk.tn
            for ev in events:
                try:
                    keys.append(store.eid_key(tn, ev["eid"]))
                    if tk is not None:
                        subjects.append(store.subject_key(tn, tk.subject_hash(subject_of(ev))))
                except (KeyError, TypeError, ValueError):  # the staging reports it itself
                    continue
        tx.prefetch(keys + subjects)
        # A known subject's staging then reads its resource state and its DEK of the
        # current epoch (which usually seals the state too): a second round trip for all
        # of them, instead of two or three each.
        later: list[bytes] = []
        epoch = epoch_of(self._last_now if self._last_now is not None else _now_ms())
        for key in subjects:
            raw = tx.get(key)
            if raw is None:
                continue
            try:
                kid = store.decode_record(raw, "subject")["kid"]
                later += [store.state_key(kid), store.dek_key(kid, epoch)]
            except (StorageError, KeyError, TypeError, ValueError, struct.error):
                continue  # the staging reports a corrupt record itself
        if later:
            tx.prefetch(later)
        if memo is None:
            return
        for tenant in unread:
            try:
                got = self.keys.tenant(tx, tenant)
            except Exception:  # its own stagings meet it again, each answered alone
                got = None
            if got is not None and not tx.staged(store.tenant_key(got.tn)):
                memo[tenant] = got

    def _tenant_keys(self, tx: Overlay, tenant: str) -> TenantKeys:
        """The tenant's keys (created if it has none). In a group, a tenant's keys read
        from a record this group did not stage are remembered for the group's other
        stagings: no staging of a group changes an existing tenant record (re-keying takes
        the writer lock and waits for the groups in flight); a record staged by this group
        (rolled back with its staging if that fails) or by one not yet durable is read
        again each time."""
        memo = self._group_tenants
        if memo is None:
            return self.keys.tenant_or_create(tx, tenant)
        tk = memo.get(tenant)
        if tk is None:
            tk = self.keys.tenant_or_create(tx, tenant)
            if not tx.staged(store.tenant_key(tk.tn)):
                memo[tenant] = tk
        return tk

    def _pipeline(self, tk: TenantKeys, now: int, batch: _Batch) -> _Pipeline:
        """A staging's pipeline. In a group (``_group_memo`` set), the stagings of one
        tenant's keys share what only depends on those keys and the log time: the leaf's
        cut and the key prefixes (the same ``now``), the index conditions by event shape
        and by (field, value), the random pool; each gets its own pending records and
        ``_Batch``. Single events are a group of one-event stagings each: without this,
        each computed all of it again. A tenant whose keys this group created is never
        shared (its record could be rolled back with the staging that made it: a new
        TenantKeys object each time)."""
        memo = self._group_memo
        if memo is None:
            return _Pipeline(tk, now)
        got = memo.get(tk.tn)
        if got is None or got.tk is not tk:
            got = memo[tk.tn] = _GroupMemo(tk, _Pipeline(tk, now), batch.index, batch.rand)
        else:
            batch.index, batch.rand = got.index, got.rand
        base = got.pipe
        if base.now != now:
            base = got.pipe = base.at(tk, now)
        return base.clone()

    def stage_one(self, tx: Overlay, tk: TenantKeys, ev: Event, now: int) -> Accepted:
        """Stage one validated event in the caller's transaction (the log's own events)."""
        batch = _Batch()
        acc = self._stage(tx, tk, ev, _encode_validated(ev), now, batch)
        self._flush_states(tx, batch)
        # No nonce in the answers of the log's own events (Accepted.nonce): an officer's
        # receipt must not open a commitment to a body (the certificate has its own route).
        return acc._replace(nonce=None)

    def _retry(
        self, tx: Overlay, tk: TenantKeys, ev: Event, encoded: bytes, batch: _Batch, vkey: bytes
    ) -> Accepted | None:
        """The duplicate answer to ``ev`` when its eid (record ``vkey``) is already logged
        (by this batch or before), after checking that it is the same event (else
        :class:`Conflict`); None for a new eid."""
        eid = ev["eid"]
        seen = batch.seen
        if eid in seen:
            first, first_encoded = seen[eid]
            if first_encoded != encoded:
                raise Conflict(f"eid {eid} appears twice in the batch with different events")
            return first._replace(duplicate=True)
        known = tx.get(vkey)
        if known is None:
            return None
        was, actor = self._check_same(tx, tk, known, ev)
        acc = Accepted(eid, known, leaf_hash(known), parse_leaf(known).ts, True, was, actor)
        seen[eid] = (acc, encoded)
        return acc

    def _stage_held(
        self, tx: Overlay, tk: TenantKeys, ev: Event, encoded: bytes, batch: _Batch, why: str
    ) -> Accepted:
        """An event an intake rule refuses (``why``, :meth:`check_events`): answered as the
        duplicate it is when the log already holds it (stored before the rule, and sent
        again: a relay's retry of the same bytes), else refused (EventFormatError, 400;
        the staging of the whole submission is rolled back)."""
        retry = self._retry(tx, tk, ev, encoded, batch, store.eid_key(tk.tn, ev["eid"]))
        if retry is None:
            raise EventFormatError(why)
        return retry

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
        vkey = store.eid_key(tk.tn, eid)
        retry = self._retry(tx, tk, ev, encoded, batch, vkey)
        if retry is not None:
            return retry
        seen = batch.seen
        rand = batch.rand
        nonce = rand(NONCE_SIZE)
        # One subject lookup and one DEK unwrap per subject per batch (cached in ``batch``);
        # the cache lives only as long as this staging, inside the writer lock.
        subject = subject_of(ev)
        if subject.kind == "userName":  # a name keyed before faith31 stays one subject
            sent = user_name_sent(ev)
            if sent is not None and any(v != subject.value for v in legacy_user_name_keys(sent)):
                subject = self.keys.user_name_subject(tx, tk, subject.rt, sent)
        skey = (subject.rt, subject.kind, subject.value)
        sk = batch.subjects.get(skey)
        if sk is None:
            sk = batch.subjects[skey] = self.keys.subject_or_create(tx, tk, subject, now, rand)
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
        submitted, sent_actor, an = encoded, b"", None
        ak = self._actor_keys(tx, tk, ev, now, epoch, batch)
        if ak is not None:
            an = rand(ACTOR_NONCE_SIZE)
            ev, encoded, sent_actor = self._pseudonymous(ev, encoded, ak.pid, an)
        leaf = make_leaf(
            now,
            tk.tn,
            commitment_unchecked(nonce, encoded),
            None if encoded_effect is None else effect_commitment(nonce, encoded_effect),
        )
        lh = leaf_hash(leaf)
        iv, ct = _seal(tk, aead, lh, nonce, encoded, encoded_effect, ak, sent_actor, an, rand)
        values = index_values(ev)
        if effect is not None:
            values = list(dict.fromkeys(values + effect_index_values(effect)))
        conds = self._conds(tk, values, batch)
        put = tx.put
        put(vkey, leaf)
        put(
            store.envelope_key(lh),
            store.encode_envelope(tk.tn, eid, now, sk.kid, epoch, iv, ct, conds),
        )
        put(store.subject_event_key(sk.kid, lh), b"")
        tail = store.ts_tail(now, lh)
        put(store.tenant_events_prefix(tk.tn) + tail, b"")
        for cond in conds:
            put(store.index_prefix(tk.tn, cond) + tail, b"")
        acc = Accepted(eid, leaf, lh, now, False, nonce, self._actor_answer(ev, an))
        seen[eid] = (acc, submitted)
        return acc

    def _stage_new(
        self,
        tx: Overlay,
        tk: TenantKeys,
        ev: Event,
        encoded: bytes,
        batch: _Batch,
        pipe: _Pipeline,
    ) -> Accepted | None:
        """:meth:`_stage` for the common case of a batch: a new eid that creates a resource
        of a subject the store does not know yet (``classify_create``'s shapes). Its
        records go to ``pipe``'s pending ones, the same bytes :meth:`_stage` writes (with the same
        random draws in the same order: tested equal). None: not that case, and nothing was
        drawn or staged (the general path stages it)."""
        rt = ev["rt"]
        rid = ev.get("rid")
        if rid is None or rt.startswith(SYSTEM_PREFIX):
            return None
        skey = (rt, "rid", rid)
        eid = ev["eid"]
        if skey in batch.subjects or eid in batch.seen:
            return None
        cl = classify_create(ev)
        if cl is None:
            return None
        vkey = store.eid_key(tk.tn, eid)
        if tx.get(vkey) is not None:
            return None  # a retry: the general path compares it with the original
        s_key = pipe.subject_prefix + tk.subject_hash_of(rt, "rid", rid)
        if tx.get(s_key) is not None:
            return None  # a known subject: its DEK and state are read by the general path
        effect, encoded_effect, state = cl
        rand = batch.rand
        epoch = pipe.epoch
        nonce = rand(NONCE_SIZE)
        kid, wrapped_p, s_rec, dek, d_rec = self.keys.new_subject_records(tk, pipe.now, epoch, rand)
        batch.subjects[skey] = SubjectKeys(kid, wrapped_p, created=True)
        aead = batch.deks[(kid, epoch)] = AESGCM(dek)
        mark_members_known(state, tk.generation)
        # A group's mark is a key out of the deterministic CBOR order classify_create keeps.
        batch.states[kid] = _State(state, epoch, aead, True, MEMBERS_KNOWN not in state)
        submitted, sent_actor, an = encoded, b"", None
        ak = self._actor_keys(tx, tk, ev, pipe.now, epoch, batch)
        if ak is not None:
            an = rand(ACTOR_NONCE_SIZE)
            ev, encoded, sent_actor = self._pseudonymous(ev, encoded, ak.pid, an)
        leaf = (
            pipe.leaf_head
            + commitment_unchecked(nonce, encoded)
            + pipe.leaf_mid
            + effect_commitment(nonce, encoded_effect)
            + pipe.leaf_tail
        )
        lh = leaf_hash(leaf)
        iv, ct = _seal(tk, aead, lh, nonce, encoded, encoded_effect, ak, sent_actor, an, rand)
        conds = self._new_conds(tk, ev, effect, encoded_effect, batch, pipe)
        tail = pipe.ts + lh
        x = pipe.index_prefix
        pipe.keys += (
            s_key,
            store.dek_key(kid, epoch),
            vkey,
            pipe.envelope_prefix + lh,
            store.subject_event_key(kid, lh),
            pipe.tenant_prefix + tail,
        )
        pipe.keys += [x + cond + tail for cond in conds]
        pipe.values += (
            s_rec,
            d_rec,
            leaf,
            store.encode_envelope(tk.tn, eid, pipe.now, kid, epoch, iv, ct, conds),
        )
        pipe.values += [b""] * (2 + len(conds))
        acc = Accepted(eid, leaf, lh, pipe.now, False, nonce, self._actor_answer(ev, an))
        batch.seen[eid] = (acc, submitted)
        return acc

    def _new_conds(
        self,
        tk: TenantKeys,
        ev: Event,
        effect: dict[str, Any],
        encoded_effect: bytes,
        batch: _Batch,
        pipe: _Pipeline,
    ) -> list[bytes]:
        """``_conds`` of the event's and the effect's index values for an event of the
        pipeline (no ``refs``): everything but its rid, xid and request id is the same for
        events of the same actor, actions, outcome and effect, so their conditions are
        worked out once per staging (a template with those three to fill in)."""
        actor = ev["actor"]
        actor = actor.get("pid", actor.get("id"))  # the pid: never a rolled-back subject's
        shape = (
            "xid" in ev,
            actor,
            tuple([a["a"] for a in ev.get("acts", ())]),
            ev["outcome"],
            encoded_effect,
        )
        template = pipe.templates.get(shape)
        if template is None:
            values = list(dict.fromkeys(index_values(ev) + effect_index_values(effect)))
            conds = self._conds(tk, values, batch)
            template = pipe.templates[shape] = [
                f if f in _UNIQUE_FIELDS else c for (f, _), c in zip(values, conds, strict=True)
            ]
            return conds
        ih = tk.index_hash
        filled = {
            _RID: _RID + ih(_RID, ev["rid"].encode()),
            _REQ: _REQ + ih(_REQ, ev["corr"]["req"].encode()),
        }
        if "xid" in ev:
            filled[_XID] = _XID + ih(_XID, ev["xid"].encode())
        return [filled.get(t, t) for t in template]

    @staticmethod
    def _conds(tk: TenantKeys, values: list[tuple[bytes, bytes]], batch: _Batch) -> list[bytes]:
        """The index conditions (field ‖ HMAC) of ``values``; each (field, value) HMAC is
        computed once per staging (outcome, action and actor recur across a batch)."""
        hashes = batch.index
        conds: list[bytes] = []
        for fv in values:
            cond = hashes.get(fv)
            if cond is None:
                f, v = fv
                cond = f + tk.index_hash(f, v)
                if len(hashes) < _INDEX_MEMO:
                    hashes[fv] = cond
            conds.append(cond)
        return conds

    # -- resource state and effects (tlog.scim.effects) ---------------------------------------

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
        if (
            "rid" not in ev
            or ev["rt"].startswith(SYSTEM_PREFIX)
            or ev["outcome"] not in ("success", "warning")  # a warning forgets: see classify
        ):
            return None
        kid = sk.kid
        cur = batch.states.get(kid)
        if cur is None:
            # A subject created by this staging has no state record: nothing to read.
            prev = None if sk.created else self.keys.state(tx, tk, kid)
            cur = batch.states[kid] = _State(prev, epoch, aead)
        effect, state, _ = classify(members_known(cur.state, tk.generation), ev)
        if effect is None:
            return None  # not classified (checked above): nothing changes
        mark_members_known(state, tk.generation)
        if state != cur.state:
            cur.state, cur.epoch, cur.aead, cur.dirty, cur.ordered = state, epoch, aead, True, False
        return effect

    def _flush_states(self, tx: Overlay, batch: _Batch, pipe: _Pipeline | None = None) -> None:
        """Stage the last state of each subject this staging changed (see :class:`_Batch`).
        With the staging's ``pipe``: its pending records first, then the states, in one
        bulk write (the same writes in the same order as flushing it before)."""
        rand = batch.rand
        prefix = store.state_key(b"")
        keys: list[bytes] = []
        values: list[bytes] = []
        for kid, cur in batch.states.items():
            if not cur.dirty:
                continue
            if cur.state is None:
                if pipe is not None:
                    pipe.flush(tx)
                tx.delete(prefix + kid)
                continue
            encoded = None
            if cur.ordered:
                try:
                    encoded = bytes(cbor2.dumps(cur.state))
                except (UnicodeEncodeError, ValueError):
                    pass
            if encoded is None:
                encoded = encode_state(cur.state)
            keys.append(prefix + kid)
            values.append(seal_state(cur.aead, kid, cur.epoch, encoded, rand))
        if pipe is not None:
            pipe.keys += keys
            pipe.values += values
            pipe.flush(tx)
        elif keys:
            tx.put_many(keys, values)  # one subject's state once each: distinct keys

    def _check_same(
        self, tx: Overlay, tk: TenantKeys, leaf: bytes, ev: Event
    ) -> tuple[bytes | None, tuple[bytes, bytes, bytes | None] | None]:
        """A retried eid must carry the same event (when the original is still readable);
        the original's nonce, or None once it is erased, and its stored actor
        (:attr:`Accepted.actor`). An original stored with a pseudonymous actor is compared
        as stored: the retry's actor must open its ``sd`` (while the actor's keys live) and
        the retry, with the stored actor in place of its own, must be what the leaf commits
        to."""
        opened = self.keys.open_envelope_actor(tx, tk, leaf_hash(leaf))
        if opened is None:
            return None, None  # erased: nothing to compare with; the original receipt stands
        stored, nonce, _, opening = opened
        actor = None
        if opening is not None and opening.in_c:
            pass  # re-sealed (tlog.scim.reseal): c covers the actor as sent, compared below
        elif opening is not None:
            kept = stored["actor"]
            an = opening.an
            if not self._same_actor(tx, tk, leaf, ev["actor"], kept, opening):
                raise Conflict(f"eid {ev['eid']} was already logged with a different event")
            ev = {**ev, "actor": kept}
            actor = (kept["pid"], kept["sd"], an)
        if not hmac.compare_digest(commitment(nonce, ev), parse_leaf(leaf).c):
            raise Conflict(f"eid {ev['eid']} was already logged with a different event")
        return nonce, actor

    def _same_actor(
        self,
        tx: Overlay,
        tk: TenantKeys,
        leaf: bytes,
        sent: Mapping[str, Any],
        kept: Mapping[str, Any],
        opening: ActorOpening,
    ) -> bool:
        """Whether a retry's actor ``sent`` is the one the original stored as ``kept``
        (``{kind, pid, sd}``). While the actor's keys live: ``sd`` opens to it. Once they
        are gone (the actor erased, or the month of their DEK expired), ``sd`` cannot be
        opened: the envelope's retry digest, which only the log can compute, decides
        (:meth:`TenantKeys.actor_retry_digest`). An envelope from before it was kept
        compares what is left: the kind, and the retry actor's pid where its keys live (an
        actor unknown to the log is taken as the erased one: it cannot be told apart)."""
        if sent["kind"] != kept["kind"]:
            return False
        if opening.an is not None:
            return hmac.compare_digest(actor_seal_digest(opening.an, sent), kept["sd"])
        handle = actor_handle(sent)
        if handle is None:
            return False  # the original named someone
        if opening.retry is not None:
            mine = tk.actor_retry_digest(leaf_hash(leaf), actor_cbor(sent))
            return hmac.compare_digest(mine, opening.retry)
        pid = self.keys.pid(tx, tk, ACTOR_SUBJECT_RT, handle)
        return pid is None or hmac.compare_digest(pid, kept["pid"])

    # -- actors (docs/design.md, "Actors") ------------------------------------------------------

    def _actor_keys(
        self, tx: Overlay, tk: TenantKeys, ev: Event, now: int, epoch: int, batch: _Batch
    ) -> _ActorKeys | None:
        """The keys the actor of ``ev`` is pseudonymised and sealed under: those of the
        subject (tenant, ACTOR_SUBJECT_RT, actor id), made if it has none (as a member's
        are, :meth:`KeyRing.pid_or_create`), with its DEK of ``epoch``; the actor id is its
        handle (:func:`client.scim.event.actor_handle`: ``id``, else ``name``, ...). None: an
        actor that names no one, or one of the log's own events (kept as they are).

        Once per actor per staging (``batch``), and across stagings while the actor's
        records are durable and the tenant's keys are the same object (an erasure or an
        expiry rotates them: nothing remembered survives it). The random draws, when a
        subject or DEK is made, are the same on the batch pipeline and the general path."""
        actor = ev["actor"]
        last = self._last_handle  # the writer's only; a pure function of the actor
        if last is not None and last[0] == actor:
            aid = last[1]
        else:
            aid = actor_handle(actor)
            self._last_handle = (actor, aid)
        if aid is None or ev["rt"].startswith(SYSTEM_PREFIX):
            return None
        got = batch.actors.get(aid)
        if got is not None and got.epoch == epoch:
            return got
        cache = self._actor_cache
        ckey = (tk.tn, aid)
        hit = cache.get(ckey)
        skey = (ACTOR_SUBJECT_RT, "rid", aid)
        if (
            hit is not None
            and hit[0] is tk
            and hit[1].epoch == epoch
            and skey not in batch.subjects
        ):
            got = batch.actors[aid] = hit[1]
            return got
        sk = batch.subjects.get(skey)
        if sk is None:
            sk = batch.subjects[skey] = self.keys.subject_or_create(
                tx, tk, SubjectId(*skey), now, batch.rand
            )
        aead = batch.deks.get((sk.kid, epoch))
        if aead is None:
            aead = batch.deks[(sk.kid, epoch)] = AESGCM(
                self.keys.dek_or_create(tx, tk, sk.kid, epoch, batch.rand, new=sk.created)
            )
        got = batch.actors[aid] = _ActorKeys(
            sk.kid, make_pid(self.keys.pseudonym_key(tk, sk), aid), epoch, aead
        )
        if (
            not sk.created
            and not tx.staged(store.subject_key(tk.tn, tk.subject_hash_of(*skey)))
            and not tx.staged(store.dek_key(sk.kid, epoch))
        ):
            if len(cache) >= _ACTOR_CACHE:
                cache.clear()
            cache[ckey] = (tk, got)
        return got

    def _pseudonymous(
        self, ev: Event, encoded: bytes, pid: bytes, an: bytes
    ) -> tuple[Event, bytes, bytes]:
        """``ev`` with its actor as the log stores it, ``{kind, pid, sd}``, that event's
        canonical encoding, and the canonical encoding of the actor as sent (what ``sd``
        and the sealed actor are over). The event's encoding is the submitted one with the
        actor's bytes replaced (the actor is one value of the top-level map, whose key
        order does not change) when those bytes occur in it exactly once; else it is
        encoded again."""
        actor = ev["actor"]
        last = self._last_actor  # the writer's only; a pure function of the actor
        if last is not None and last[0] == actor:
            sent = last[1]
        else:
            sent = actor_cbor(actor)
            self._last_actor = (actor, sent)
        sd = actor_seal_digest(an, sent)
        out = {**ev, "actor": {"kind": actor["kind"], "pid": pid, "sd": sd}}
        old = b"\x65actor" + sent
        if encoded.count(old) == 1:
            new = b"\x65actor" + pseudonymous_actor_cbor(actor["kind"], pid, sd)
            return out, encoded.replace(old, new), sent
        return out, dumps_det(out), sent

    @staticmethod
    def _actor_answer(ev: Event, an: bytes | None) -> tuple[bytes, bytes, bytes | None] | None:
        if an is None:
            return None
        actor = ev["actor"]
        return actor["pid"], actor["sd"], an

    # -- pseudonyms ---------------------------------------------------------------------------

    async def pseudonyms(self, tenant: str, refs: Sequence[tuple[str, str]]) -> list[bytes]:
        """``pid`` of each (rt, id) under that subject's pseudonym key (created if needed)."""

        def stage(tx: Overlay) -> list[bytes]:
            tk = self.keys.tenant_or_create(tx, tenant)
            now = self.log_time()
            return [self.keys.pid_or_create(tx, tk, rt, rid, now) for rt, rid in refs]

        pids: list[bytes] = await self._write_grouped(stage)
        return pids
