"""Erasure (crypto-shredding with dual control), retention expiry and legal holds.

The stages of the SCIM service that *destroy* data, kept apart from ingestion and search
(:mod:`tlog.scim.service`). Every one of them:

* commits in **one** LMDB transaction: the keys and records it destroys, the records of the
  event that logs it, and a rotation of the whole wrapping chain (:meth:`KeyRing.stage_rotation`:
  a fresh KEK for the tenant, every surviving DEK and pseudonym key re-wrapped under it, every
  tenant record re-sealed under a fresh master key, which then overwrites the old one in the
  key file in place). Copies of destroyed keys left in freed LMDB pages (or in backups) are
  wrapped under keys that no longer exist anywhere (docs/design.md "Erasure");
* appends an event of the log's own (``tlog.erasure``, ``tlog.expiry``, ``tlog.hold``,
  ``tlog.retention``) to the tenant, in a per-tenant system subject that carries no personal
  data and is never expired, so its proofs and bodies stay available as evidence.

Erasure requests do not reveal whether the subject exists: a request for an unknown subject
is answered exactly like one for a known subject (201, a random-looking ``kid_hash``), and its
approval "erases" nothing, with the same answer. Only the tenant's auditors, who can read the
tenant's events anyway, can tell.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from client.formats.merkle import leaf_hash
from client.scim.cbor import EventFormatError
from client.scim.erasure import VerifiedErasure
from client.scim.event import ACTOR_SUBJECT_RT, Event
from client.scim.leaf import parse_leaf
from client.scim.reserved import is_reserved
from tlog.auth import Forbidden, Principal
from tlog.errors import Conflict
from tlog.log import NotFound
from tlog.scim import store
from tlog.scim.access import OCSF_CREATE, OCSF_DELETE, OCSF_UPDATE, system_event
from tlog.scim.keys import SubjectId, TenantKeys, epoch_of, user_name_key
from tlog.scim.store import Envelope, Overlay, Tombstone, decode_envelope

if TYPE_CHECKING:
    from tlog.scim.service import Accepted, ScimService, Submitted

__all__ = [
    "DAY_MS",
    "MAX_RETENTION_DAYS",
    "MIN_RETENTION_DAYS",
    "SYSTEM_RTS",
    "Certificate",
    "ErasureStatus",
    "Erasures",
    "ExpiryResult",
    "Hold",
]

log = logging.getLogger(__name__)
# How often the log's own events that direct writes committed are looked for and put in the
# log if their sequencing did not happen (:meth:`Erasures.resequence`): a prefix read of
# an empty range when there are none.
RESEQUENCE_EVERY = 60.0
T = TypeVar("T")

DAY_MS = 24 * 3600 * 1000
MIN_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3653  # ten years, leap days included
SYSTEM_RTS = ("tlog.access", "tlog.erasure", "tlog.expiry", "tlog.hold", "tlog.retention")
SUBJECT_KINDS = ("rid", "xid", "userName")
REASON_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # an erasure's or hold's reason code


@dataclass(frozen=True)
class ErasureStatus:
    id: str
    record: dict[str, Any]
    receipt: Submitted | None = None
    # Done, its event committed but not sequenced yet (the log stopped signing, or the
    # sequencing failed, after the commit): it reaches the log from its Q record (faith30).
    pending: bool = False
    # A retry answered with the state of the write it repeats (nothing done again).
    again: bool = False


@dataclass(frozen=True)
class Hold:
    id: str
    record: dict[str, Any]
    receipt: Submitted | None = None
    pending: bool = False  # as ErasureStatus.pending
    again: bool = False  # as ErasureStatus.again


@dataclass(frozen=True)
class ExpiryResult:
    tenant: str
    before: int  # events logged before this time (ms) were due
    events: int
    deks: int
    held: int  # events kept because of a legal hold
    receipt: Submitted | None = None


@dataclass(frozen=True)
class Certificate:
    """What an officer hands to a data subject or regulator (verified offline by
    ``client.scim.erasure.verify_certificate``)."""

    request: str
    event: Event
    nonce: bytes
    leaf: bytes
    leaf_hash: bytes
    index: int


def subject_key_of(subject: SubjectId) -> SubjectId:
    """userName subjects are keyed casefolded (SCIM userName is case-insensitive) and in
    NFC (:func:`user_name_key`; faith31, before only casefolded)."""
    if subject.kind == "userName":
        return SubjectId(subject.rt, subject.kind, user_name_key(subject.value))
    return subject


def _legacy_subject(tx: Overlay, tk: TenantKeys, keys: Any, given: SubjectId) -> SubjectId:
    """The key of subject ``given`` (as named) on this store: for a userName, the form
    :meth:`KeyRing.user_name_subject` says (the one before faith31 where only it has keys)."""
    if given.kind != "userName":
        return subject_key_of(given)
    subject: SubjectId = keys.user_name_subject(tx, tk, given.rt, given.value)
    return subject


# How far the wall clock may go beyond the time that passed (CLOCK_BOOTTIME) between two
# expiry runs of one process before expiry is refused (:meth:`Erasures._clock_step`).
CLOCK_STEP_LIMIT_MS = 3600 * 1000


def _boot_ms() -> int:
    """``CLOCK_BOOTTIME`` in ms (monotonic, counting a suspended machine's time)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def _epoch_start_ms(epoch: int) -> int:
    y, m = divmod(epoch, 12)
    return int(datetime(y, m + 1, 1, tzinfo=UTC).timestamp() * 1000)


def _hold_prefix(tn: bytes) -> bytes:
    return store.PREFIX + b"H" + tn


def _retention_key(tn: bytes) -> bytes:
    return store.PREFIX + b"Y" + tn


# Who a re-application's event names: the operator's command, not a token.
_REAPPLIER = Principal("system", "system", None, "tlog reapply-erasures", 0)


class Erasures:
    """Erasure, retention and legal holds over one :class:`ScimService`."""

    def __init__(self, service: ScimService) -> None:
        self.svc = service
        self._job: asyncio.Task[None] | None = None
        self._reseq: asyncio.Task[None] | None = None
        # The wall clock and CLOCK_BOOTTIME read together at the first expiry (ms): what
        # later expiries measure a step of the wall clock from (:meth:`_clock_step`).
        self._clock_base: tuple[int, int] | None = None
        self._clock_stepped: str | None = None  # why expiry is refused until a restart

    # -- plumbing -----------------------------------------------------------------------------

    def _log_event(
        self,
        tx: Overlay,
        tk: TenantKeys,
        tenant: str,
        principal: Principal | None,
        *,
        rt: str,
        op: str,
        action: str,
        ocsf: list[int],
        path: str,
        rid: str,
        x: dict[str, Any],
        req_id: str,
    ) -> Accepted:
        p = principal or Principal("system", "system", None, "expiry job", 0)
        ev = system_event(
            self.svc.clock,
            tenant,
            p,
            rt=rt,
            op=op,
            action=action,
            ocsf=ocsf,
            method="POST",
            path=path,
            dig=hashlib.sha256(b"").digest(),
            length=0,
            req_id=req_id,
            rid=rid,
            x=x,
        )
        acc = self.svc.stage_one(tx, tk, ev, self.svc.log_time())
        if not acc.duplicate:
            # Committed with the write, before the leaf is sequenced: a crash (or a failed
            # sequencing) in between leaves it for resequence() to put in the log.
            tx.put(store.unlogged_key(acc.leaf_hash), acc.leaf)
        return acc

    async def _sequenced(self, acc: Accepted) -> tuple[Submitted | None, bool]:
        """Sequence a committed direct write's event: its receipt, and whether the event
        is pending. Where the sequencing fails (the log stopped signing between the write's
        check and its commit, the sequencer overloaded or stopped) the write is done and its
        event pending, put in the log from its ``Q`` record (:meth:`resequence`, every
        ``RESEQUENCE_EVERY`` seconds): (None, True); unless the event is in the log already
        (a retry of a write whose event was logged): its receipt against the latest
        published checkpoint where one covers it, else (None, True), pending until one does
        (faith31; before, (None, False): neither a receipt nor pending). Before
        faith30 the failure went to the officer as 503 "not signing" for a shred that had
        happened."""
        try:
            done, _ = await self.svc.sequence([acc])
        except Exception as exc:

            def index_of() -> int | None:
                with self.svc.storage.read() as rv:
                    return rv.index_of(acc.leaf_hash)

            try:
                logged = await anyio.to_thread.run_sync(index_of)
            except Exception:  # not known: said pending (it is, or it is logged)
                logged = None
            if logged is None:
                log.warning(
                    "a direct write (erasure, hold or retention) is done; its event is "
                    "committed and will be put in the log when it signs again (%s)",
                    type(exc).__name__,
                )
                return None, True
            if logged < self.svc.log.latest.size:
                # in a published checkpoint: its receipt (against the latest)
                from tlog.scim.service import Submitted

                return Submitted(
                    acc.eid, acc.leaf, acc.leaf_hash, acc.ts, True, logged, acc.nonce
                ), False
            # stored in the tree, in no published checkpoint yet (the log stopped signing
            # after the commit, before publishing it): pending until one covers it (review
            # F6: before, answered with neither a receipt nor "pending")
            return None, True
        return done[0], False

    async def resequence(self) -> int:
        """Sequence the leaves of the log's own events that direct writes committed
        (:func:`store.unlogged_key`), then forget them: the ones already in the log are
        duplicates (nothing new), the others those of a write whose sequencing never
        happened (the process died, or the sequencing failed after the commit). Returns
        how many were found."""

        def pending(tx: Overlay) -> list[tuple[bytes, bytes]]:
            return list(tx.rv.aux_range(store.unlogged_prefix()))

        found = await self.svc.read_off_loop(pending, "a read of unsequenced events")
        if not found:
            return 0
        res = await self.svc.seq.submit([leaf for _, leaf in found])
        if not all(res.duplicates):
            log.warning(
                "%d event(s) of the log's own (erasure, expiry, hold or retention) committed "
                "by a write whose sequencing did not happen are now in the log",
                sum(1 for d in res.duplicates if not d),
            )

        def forget(tx: Overlay) -> None:
            for key, _ in found:
                tx.delete(key)

        await anyio.to_thread.run_sync(self.svc.write, forget)
        return len(found)

    @staticmethod
    def _check_tenant(principal: Principal, tenant: str) -> None:
        if principal.tenant is not None and principal.tenant != tenant:
            raise Forbidden("this token is bound to another tenant")

    def _held(self, tx: Overlay, tn: bytes, h: bytes | None) -> bool:
        """Whether a legal hold covers the tenant (or, with ``h``, that subject)."""
        for _, raw in tx.scan(_hold_prefix(tn)):
            r = store.decode_record(raw, "legal hold")
            if "released" in r:
                continue
            if r["scope"] == "tenant" or (h is not None and r.get("h") == h):
                return True
        return False

    # -- erasure ------------------------------------------------------------------------------

    async def request(
        self, principal: Principal, tenant: str, subject: SubjectId, reason: str, req_id: str
    ) -> ErasureStatus:
        """Record a pending erasure request (first of two people); logs a request event.

        Answered the same whether or not the subject has keys (module docstring)."""
        if not REASON_RE.fullmatch(reason):
            raise EventFormatError("reason must be a code matching [a-z0-9][a-z0-9._-]{0,63}")
        self._check_tenant(principal, tenant)
        if is_reserved(subject.rt):
            raise EventFormatError("the log's own events have no data subject to erase")
        if subject.kind not in SUBJECT_KINDS:
            raise EventFormatError(f"a subject is named by one of {', '.join(SUBJECT_KINDS)}")
        given = subject

        def stage(tx: Overlay) -> tuple[ErasureStatus, Accepted]:
            now = self.svc.log_time()
            tk = self.svc.keys.tenant_or_create(tx, tenant)
            subject = _legacy_subject(tx, tk, self.svc.keys, given)
            again = self._same_request(tx, tk, tenant, principal, subject, reason, now)
            if again is not None:
                return again
            sk = self.svc.keys.subject(tx, tk, subject)
            # The kid the approval will destroy; for an unknown subject a random value that
            # looks the same and never matches.
            kid_hash = hashlib.sha256(sk.kid if sk is not None else os.urandom(16)).digest()
            rid = os.urandom(16)
            record: dict[str, Any] = {
                "v": 1,
                "tenant": tenant,
                "rt": subject.rt,
                "kind": subject.kind,
                "h": tk.subject_hash(subject),
                "kid_hash": kid_hash,
                "reason": reason,
                "requested_by": principal.token_id,
                "requested_person": principal.person_id,
                "requester_name": principal.person or principal.name,
                "created": now,
                "state": "pending",
            }
            acc = self._log_event(
                tx,
                tk,
                tenant,
                principal,
                rt="tlog.erasure",
                op="create",
                action="tlog.erasure.request",
                ocsf=OCSF_CREATE,
                path="/v1/scim/erasures",
                rid=rid.hex(),
                x=self._erasure_x(rid, record),
                req_id=req_id,
            )
            record["request_eid"] = acc.eid
            tx.put(store.request_key(rid), store.encode_record(record))
            tx.put(store.request_index_key(tk.tn, record["h"], rid), b"")
            return ErasureStatus(rid.hex(), record), acc

        status, acc = await anyio.to_thread.run_sync(self.svc.write, stage)
        got, pending = await self._sequenced(acc)
        return ErasureStatus(status.id, status.record, got, pending, status.again)

    def _same_request(
        self,
        tx: Overlay,
        tk: TenantKeys,
        tenant: str,
        principal: Principal,
        subject: SubjectId,
        reason: str,
        now: int,
    ) -> tuple[ErasureStatus, Accepted] | None:
        """A pending request (not expired) of the same person for the same subject and
        reason, and its event (to sequence again: a duplicate if it is in the log), or None.
        An officer retrying a request whose answer was lost or said the log is not signing
        is answered the first one's state: no second record, no second event (faith30;
        before, each retry added a request). Read by the request index of the tenant and
        subject (:func:`store.request_index_prefix`, faith31; built here at the first look
        on a store from before it)."""
        h = tk.subject_hash(subject)
        ttl = self.svc.limits.erasure_ttl_ms
        if tx.get(store.request_index_built_key()) is None:
            self._build_request_index(tx)
        at = len(store.request_index_prefix(tk.tn, h))
        for ikey, _ in tx.scan(store.request_index_prefix(tk.tn, h)):
            rid = ikey[at:]
            raw = tx.get(store.request_key(rid))
            if raw is None:
                continue
            rec = store.decode_record(raw, "erasure request")
            if (
                rec["state"] != "pending"
                or now - rec["created"] > ttl
                or rec["tenant"] != tenant
                or rec.get("h") != h
                or rec["reason"] != reason
                or rec.get("requested_person", "token:" + rec["requested_by"])
                != principal.person_id
            ):
                continue
            acc = self._stored_event(tx, tk, rec["request_eid"])
            if acc is None:
                continue
            return ErasureStatus(rid.hex(), rec, again=True), acc
        return None

    def _build_request_index(self, tx: Overlay) -> None:
        """Index every erasure request that still names its subject (pending, or expired
        unapproved; an approved one dropped ``h``) by tenant and subject, in the write
        ``tx`` (a store made before faith31 has none), and mark it built: from then the
        index alone is read (:meth:`_same_request`; before, every request record of the
        store was read for each new request)."""
        at = len(store.request_key(b""))
        for key, raw in tx.scan(store.request_key(b"")):
            rec = store.decode_record(raw, "erasure request")
            h = rec.get("h")
            tk = self.svc.keys.tenant(tx, rec["tenant"]) if isinstance(h, bytes) else None
            if tk is not None and isinstance(h, bytes):
                tx.put(store.request_index_key(tk.tn, h, key[at:]), b"")
        tx.put(store.request_index_built_key(), store.encode_record({"v": 1}))

    @staticmethod
    def _erasure_x(rid: bytes, record: dict[str, Any]) -> dict[str, Any]:
        x: dict[str, Any] = {
            "request": rid.hex(),
            "subject_rt": record["rt"],
            "subject_kind": record["kind"],
            "kid_hash": record["kid_hash"].hex(),
            "reason": record["reason"],
            "requested_by": record["requested_by"],
        }
        if "approved_by" in record:
            x["approved_by"] = record["approved_by"]
        return x

    def _load(self, tx: Overlay, request_id: str) -> tuple[bytes, dict[str, Any]]:
        try:
            rid = bytes.fromhex(request_id)
        except ValueError:
            raise NotFound("no such erasure request") from None
        if len(rid) != 16 or rid.hex() != request_id:
            raise NotFound("no such erasure request")
        raw = tx.get(store.request_key(rid))
        if raw is None:
            raise NotFound("no such erasure request")
        return rid, store.decode_record(raw, "erasure request")

    def _visible(self, principal: Principal, request_id: str) -> Callable[[Overlay], Any]:
        def run(tx: Overlay) -> tuple[bytes, dict[str, Any]]:
            rid, rec = self._load(tx, request_id)
            if principal.tenant is not None and principal.tenant != rec["tenant"]:
                raise NotFound("no such erasure request")
            return rid, rec

        return run

    def status(self, principal: Principal, request_id: str) -> ErasureStatus:
        _, rec = self.svc.read(self._visible(principal, request_id))
        return ErasureStatus(request_id, rec)

    def requests(self, principal: Principal, *, all_states: bool = False) -> list[ErasureStatus]:
        """Erasure requests this officer may see: pending ones (not expired), or all."""
        now = self.svc.log_time()
        ttl = self.svc.limits.erasure_ttl_ms

        def run(tx: Overlay) -> list[ErasureStatus]:
            out = []
            for key, raw in tx.rv.aux_range(store.request_key(b"")):
                rec = store.decode_record(raw, "erasure request")
                if principal.tenant is not None and principal.tenant != rec["tenant"]:
                    continue
                expired = rec["state"] == "pending" and now - rec["created"] > ttl
                if not all_states and (rec["state"] != "pending" or expired):
                    continue
                if expired:
                    rec = {**rec, "state": "expired"}
                out.append(ErasureStatus(key[len(store.request_key(b"")) :].hex(), rec))
            return sorted(out, key=lambda s: (s.record["created"], s.id))

        result: list[ErasureStatus] = self.svc.read(run)
        return result

    async def approve(self, principal: Principal, request_id: str, req_id: str) -> ErasureStatus:
        """Second person: destroy the subject's DEKs (all epochs) and pseudonym key, drop its
        search index records, tombstone its envelopes, append an erasure event, and rotate
        the tenant's KEK and the master key: one transaction, then the leaf is sequenced.
        Approving a finished request again returns its receipt."""

        def stage(tx: Overlay) -> tuple[tuple[ErasureStatus, Accepted], set[bytes]]:
            rid, rec = self._visible(principal, request_id)(tx)
            tenant = rec["tenant"]
            tk = self.svc.keys.tenant(tx, tenant)
            if tk is None:
                raise NotFound("no such erasure request")
            if rec["state"] == "done":
                acc = self._stored_event(tx, tk, rec["eid"])
                if acc is None:
                    raise NotFound("finished erasure without its event")
                return (ErasureStatus(request_id, rec, again=True), acc), set()
            if rec["requested_by"] == principal.token_id or (
                rec.get("requested_person", "token:" + rec["requested_by"]) == principal.person_id
            ):
                raise Forbidden(
                    "dual control: the approver must be another person than the requester "
                    "(whatever token they use)"
                )
            now = self.svc.log_time()
            if now - rec["created"] > self.svc.limits.erasure_ttl_ms:
                raise Conflict("the erasure request has expired; make a new one")
            if self._held(tx, tk.tn, rec["h"]):
                raise Conflict("a legal hold suspends erasure for this tenant or subject")
            counts = self._shred_subject(tx, tk, rec, rid)
            rec.update(
                approved_by=principal.token_id,
                approved_person=principal.person_id,
                approver_name=principal.person or principal.name,
            )
            acc = self._log_event(
                tx,
                tk,
                tenant,
                principal,
                rt="tlog.erasure",
                op="delete",
                action="tlog.erasure.approve",
                ocsf=OCSF_DELETE,
                path=f"/v1/scim/erasures/{rid.hex()}/approve",
                rid=rid.hex(),
                x=self._erasure_x(rid, rec),
                req_id=req_id,
            )
            # The keyed subject hash is not needed any more: nothing links back (nor does
            # the request index).
            h = rec.pop("h", None)
            if isinstance(h, bytes):
                tx.delete(store.request_index_key(tk.tn, h, rid))
            rec.update(state="done", done=now, eid=acc.eid, **counts)
            tx.put(store.request_key(rid), store.encode_record(rec))
            return (ErasureStatus(request_id, rec), acc), {tk.tn}

        status, acc = await anyio.to_thread.run_sync(self.svc.write_rotating, stage)
        got, pending = await self._sequenced(acc)
        return ErasureStatus(status.id, status.record, got, pending, status.again)

    @staticmethod
    def _accepted(eid: str, leaf: bytes) -> Accepted:
        from tlog.scim.service import Accepted

        return Accepted(eid, leaf, leaf_hash(leaf), parse_leaf(leaf).ts, True)

    def _stored_event(self, tx: Overlay, tk: TenantKeys, eid: str | None) -> Accepted | None:
        """The event an earlier direct write committed (by its ``eid``), to answer a retry
        or a repeat with and sequence again (a duplicate where it is in the log); None when
        it is not stored (or the record names none)."""
        leaf = None if eid is None else tx.get(store.eid_key(tk.tn, eid))
        return None if leaf is None or eid is None else self._accepted(eid, leaf)

    def _shred_subject(
        self, tx: Overlay, tk: TenantKeys, rec: dict[str, Any], rid: bytes
    ) -> dict[str, int]:
        skey = store.subject_key(tk.tn, rec["h"])
        raw = tx.get(skey)
        if raw is None:
            return {"deks": 0, "events": 0, "index_records": 0}
        kid = store.decode_record(raw, "subject")["kid"]
        if hashlib.sha256(kid).digest() != rec["kid_hash"]:
            # Not the keys named at request time (the subject was erased and came back, or
            # did not exist then): nothing of what was asked for is left.
            return {"deks": 0, "events": 0, "index_records": 0}
        return self._shred_keys(tx, tk, skey, kid, rid)

    def _shred_keys(
        self, tx: Overlay, tk: TenantKeys, skey: bytes, kid: bytes, rid: bytes
    ) -> dict[str, int]:
        """Destroy the subject of record ``skey`` (key id ``kid``): its DEKs, its record
        (kid and pseudonym key), its resource state, its index records; tombstone its
        envelopes with the marker ``rid``. The caller rotates the tenant's key chain."""
        # Read before the DEKs go: the User's userName and e-mails name their actor keys.
        aliases = self._actor_aliases(tx, tk, skey, kid)
        deks = [k for k, _ in tx.scan(store.dek_prefix(kid))]
        for k in deks:
            tx.delete(k)
        tx.delete(skey)
        tx.delete(store.state_key(kid))  # the resource state (tlog.scim.effects)
        for akey, akid in aliases:  # keys only: such a subject has no events of its own
            for k, _ in tx.scan(store.dek_prefix(akid)):
                tx.delete(k)
            tx.delete(akey)
            tx.delete(store.state_key(akid))
        events = index_records = 0
        lprefix = store.subject_events_prefix(kid)
        for k, _ in tx.scan(lprefix):
            lh = k[len(lprefix) :]
            tx.delete(k)
            n = self._tombstone(tx, tk, lh, rid)
            if n is not None:
                events += 1
                index_records += n
        return {"deks": len(deks), "events": events, "index_records": index_records}

    def _actor_aliases(
        self, tx: Overlay, tk: TenantKeys, skey: bytes, kid: bytes
    ) -> list[tuple[bytes, bytes]]:
        """The actor subjects a User's erasure destroys with it (docs/design.md, "Actors"):
        an actor is keyed by its handle (``actor.id``, else ``name``, ...), which need not
        be the User's SCIM id: HTTP Basic gives the user name, an IdP the e-mail. The log
        holds the User's last known ``userName`` and ``emails`` in its resource state
        (sealed under the User's DEK): the subjects (tenant, User, each of them, as sent
        and casefolded) are the same person's actor keys. A subject with events of its own
        is another resource (a User whose id happens to be that text) and is left alone, as
        is one under a legal hold; ``(record key, kid)`` of the others."""
        state = self.svc.keys.state(tx, tk, kid)
        if state is None or state.get("rt") != ACTOR_SUBJECT_RT:
            return []
        names: set[str] = set()
        for text in (state.get("username"), state.get("emails")):
            if type(text) is not str:
                continue
            try:
                value = json.loads(text)
            except ValueError:
                continue
            items = value if type(value) is list else [value]
            for it in items:
                v = it.get("value") if type(it) is dict else it
                if type(v) is str and v:
                    nfd = unicodedata.normalize("NFD", v)
                    names.update((v, v.casefold(), unicodedata.normalize("NFC", v)))
                    names.update((user_name_key(v), nfd, nfd.casefold()))
        out: list[tuple[bytes, bytes]] = []
        for name in sorted(names):
            h = tk.subject_hash_of(ACTOR_SUBJECT_RT, "rid", name)
            akey = store.subject_key(tk.tn, h)
            raw = tx.get(akey)
            if akey == skey or raw is None or self._held(tx, tk.tn, h):
                continue
            akid = store.decode_record(raw, "subject")["kid"]
            if tx.scan(store.subject_events_prefix(akid)):
                continue
            out.append((akey, akid))
        return out

    async def reapply(self, erasures: Iterable[VerifiedErasure]) -> dict[str, int]:
        """Shred again, in a store restored from before them, the subjects that verified
        erasure certificates name (docs/operations.md, "Backups and erasure").

        A restored store knows nothing of an erasure approved after its backup (the request,
        the approval and its event are records it never held), and the key file of the
        backup's moment opens it: the erased subject is readable again. Each certificate
        names the destroyed keys by ``kid_hash`` (SHA-256 of the subject's key id, which the
        restored subject record still holds) and its tenant: every subject of that tenant
        whose key id hashes to it is shredded as an approval does, in one transaction with
        the rotation of the tenant's key chain and of the master key (so the restored key
        file no longer opens anything of theirs). A subject erased since, or never restored,
        is not found: applying a certificate twice does nothing the second time. Each
        certificate that shredded something is logged as the tenant's event
        ``tlog.erasure.reapply`` (rid: the request id; ``x``: what was shredded again), in the
        same transaction as the shredding, so auditors see that a restore undid an erasure
        and when it was done again; returns the counts."""
        wanted: dict[str, dict[bytes, bytes]] = {}
        for e in erasures:
            try:
                kid_hash = bytes.fromhex(e.kid_hash)
                marker = bytes.fromhex(e.request)
            except ValueError:
                raise EventFormatError("a certificate's kid_hash or request is not hex") from None
            if len(kid_hash) != 32 or len(marker) != 16:
                raise EventFormatError("a certificate's kid_hash or request has a wrong size")
            wanted.setdefault(e.tenant, {})[kid_hash] = marker

        def stage(tx: Overlay) -> tuple[tuple[dict[str, int], list[Accepted]], set[bytes]]:
            total = {"subjects": 0, "deks": 0, "events": 0, "index_records": 0}
            rekey: set[bytes] = set()
            logged: list[Accepted] = []
            for tenant, by_hash in wanted.items():
                tk = self.svc.keys.tenant(tx, tenant)
                if tk is None:
                    continue
                prefix = store.subject_key(tk.tn, b"")
                hits = []
                for key, raw in tx.scan(prefix):
                    kid = store.decode_record(raw, "subject")["kid"]
                    marker = by_hash.get(hashlib.sha256(kid).digest())
                    if marker is not None:
                        hits.append((key, kid, marker))
                done: dict[bytes, dict[str, int]] = {}
                for key, kid, marker in hits:
                    mine = done.setdefault(marker, {"subjects": 0, "deks": 0, "events": 0})
                    for k, n in self._shred_keys(tx, tk, key, kid, marker).items():
                        total[k] += n
                        if k in mine:
                            mine[k] += n
                    total["subjects"] += 1
                    mine["subjects"] += 1
                    rekey.add(tk.tn)
                for marker, counts in done.items():
                    logged.append(
                        self._log_event(
                            tx,
                            tk,
                            tenant,
                            _REAPPLIER,
                            rt="tlog.erasure",
                            op="delete",
                            action="tlog.erasure.reapply",
                            ocsf=OCSF_DELETE,
                            path=f"/v1/scim/erasures/{marker.hex()}/reapply",
                            rid=marker.hex(),
                            x={"request": marker.hex(), **counts},
                            req_id=os.urandom(16).hex(),
                        )
                    )
            return (total, logged), rekey

        total, logged = await anyio.to_thread.run_sync(self.svc.write_rotating, stage)
        if logged:
            await self.svc.sequence(logged)
        return total

    @staticmethod
    def _tombstone(tx: Overlay, tk: TenantKeys, lh: bytes, marker: bytes) -> int | None:
        """Replace the envelope of ``lh`` by a tombstone, drop its index records; returns
        how many index records went (None if it was already a tombstone)."""
        ekey = store.envelope_key(lh)
        eraw = tx.get(ekey)
        if eraw is None:
            return None
        env = decode_envelope(eraw)
        if not isinstance(env, Envelope):
            return None
        tail = store.ts_tail(env.ts, lh)
        for cond in env.ix:
            tx.delete(store.index_prefix(tk.tn, cond) + tail)
        tx.put(ekey, Tombstone(env.tn, env.eid, env.ts, marker).encode())
        return len(env.ix)

    def certificate(self, principal: Principal, request_id: str) -> Certificate:
        """The approval event of a finished erasure, with its nonce, for offline proof."""

        def run(tx: Overlay) -> Certificate:
            _, rec = self._visible(principal, request_id)(tx)
            if rec["state"] != "done":
                raise Conflict("the erasure is not approved yet")
            tk = self.svc.keys.tenant(tx, rec["tenant"])
            leaf = None if tk is None else tx.get(store.eid_key(tk.tn, rec["eid"]))
            if tk is None or leaf is None:
                raise NotFound("finished erasure without its event")
            lh = leaf_hash(leaf)
            index = tx.rv.index_of(lh)
            opened = self.svc.keys.open_envelope(tx, tk, lh)
            if index is None or opened is None:
                raise NotFound("the erasure event is not in the log yet")
            ev, nonce, _ = opened
            return Certificate(request_id, ev, nonce, leaf, lh, index)

        result: Certificate = self.svc.read(run)
        return result

    # -- legal holds --------------------------------------------------------------------------

    async def place_hold(
        self,
        principal: Principal,
        tenant: str,
        subject: SubjectId | None,
        reason: str,
        req_id: str,
    ) -> Hold:
        """A legal hold on a tenant (``subject`` None) or one subject: suspends expiry and
        erasure until released. Logged as a ``tlog.hold`` event."""
        if not REASON_RE.fullmatch(reason):
            raise EventFormatError("reason must be a code matching [a-z0-9][a-z0-9._-]{0,63}")
        self._check_tenant(principal, tenant)
        if subject is not None:
            if is_reserved(subject.rt) or subject.kind not in SUBJECT_KINDS:
                raise EventFormatError("a hold names a tenant, or a subject by rid/xid/userName")
        given = subject

        def stage(tx: Overlay) -> tuple[Hold, Accepted]:
            tk = self.svc.keys.tenant_or_create(tx, tenant)
            # (the subject as an erasure request names it: the same key, faith31)
            subject = None if given is None else _legacy_subject(tx, tk, self.svc.keys, given)
            h = None if subject is None else tk.subject_hash(subject)
            for key, raw in tx.scan(_hold_prefix(tk.tn)):
                # the same person's hold on the same scope for the same reason, in force:
                # a retry (its answer lost, or said the log is not signing) is answered
                # that hold, no second one placed nor logged (faith30)
                old = store.decode_record(raw, "legal hold")
                if (
                    "released" not in old
                    and old.get("person_id") == principal.person_id
                    and old.get("h") == h
                    and old["reason"] == reason
                    and old["scope"] == ("tenant" if subject is None else "subject")
                ):
                    acc = self._stored_event(tx, tk, old["eid"])
                    if acc is not None:
                        return Hold(key[-16:].hex(), old, again=True), acc
            hid = os.urandom(16)
            rec: dict[str, Any] = {
                "v": 1,
                "tenant": tenant,
                "scope": "tenant" if subject is None else "subject",
                "reason": reason,
                "by": principal.token_id,
                "person": principal.person or principal.name,
                "person_id": principal.person_id,
                "created": self.svc.log_time(),
            }
            if subject is not None:
                rec.update(h=h, rt=subject.rt, kind=subject.kind)
            x = {"hold": hid.hex(), "scope": rec["scope"], "reason": reason}
            acc = self._log_event(
                tx,
                tk,
                tenant,
                principal,
                rt="tlog.hold",
                op="create",
                action="tlog.hold.place",
                ocsf=OCSF_CREATE,
                path="/v1/scim/holds",
                rid=hid.hex(),
                x=x,
                req_id=req_id,
            )
            rec["eid"] = acc.eid
            tx.put(_hold_prefix(tk.tn) + hid, store.encode_record(rec))
            return Hold(hid.hex(), rec), acc

        hold, acc = await anyio.to_thread.run_sync(self.svc.write, stage)
        got, pending = await self._sequenced(acc)
        return Hold(hold.id, hold.record, got, pending, hold.again)

    def _find_hold(self, tx: Overlay, principal: Principal, hold_id: str) -> tuple[bytes, Any]:
        try:
            hid = bytes.fromhex(hold_id)
        except ValueError:
            raise NotFound("no such legal hold") from None
        if len(hid) != 16 or hid.hex() != hold_id:
            raise NotFound("no such legal hold")
        for key, raw in tx.rv.aux_range(store.PREFIX + b"H"):
            if key.endswith(hid) and len(key) == len(store.PREFIX) + 1 + 16 + 16:
                rec = store.decode_record(raw, "legal hold")
                if principal.tenant is None or principal.tenant == rec["tenant"]:
                    return key, rec
        raise NotFound("no such legal hold")

    async def release_hold(self, principal: Principal, hold_id: str, req_id: str) -> Hold:
        def stage(tx: Overlay) -> tuple[Hold, Accepted]:
            key, rec = self._find_hold(tx, principal, hold_id)
            tk = self.svc.keys.tenant(tx, rec["tenant"])
            if tk is None:
                raise NotFound("no such legal hold")
            if "released" in rec:
                # released already: a retry is answered that release (faith30; before, the
                # hold was deleted and a retry answered 404 for a release that happened)
                acc = self._stored_event(tx, tk, rec["release_eid"])
                if acc is None:
                    raise NotFound("no such legal hold")
                return Hold(hold_id, rec, again=True), acc
            acc = self._log_event(
                tx,
                tk,
                rec["tenant"],
                principal,
                rt="tlog.hold",
                op="delete",
                action="tlog.hold.release",
                ocsf=OCSF_DELETE,
                path=f"/v1/scim/holds/{hold_id}/release",
                rid=hold_id,
                x={"hold": hold_id, "scope": rec["scope"], "reason": rec["reason"]},
                req_id=req_id,
            )
            # kept, marked released (it suspends nothing: _held), so that a retry finds it;
            # without the subject's keyed hash: nothing reads it on a released hold, and it
            # would link the record back to the subject after its erasure (review 39)
            rec = {k: v for k, v in rec.items() if k != "h"}
            rec.update(released=self.svc.log_time(), release_eid=acc.eid)
            tx.put(key, store.encode_record(rec))
            return Hold(hold_id, rec), acc

        hold, acc = await anyio.to_thread.run_sync(self.svc.write, stage)
        got, pending = await self._sequenced(acc)
        return Hold(hold.id, hold.record, got, pending, hold.again)

    def holds(self, principal: Principal) -> list[Hold]:
        def run(tx: Overlay) -> list[Hold]:
            out = []
            for key, raw in tx.rv.aux_range(store.PREFIX + b"H"):
                rec = store.decode_record(raw, "legal hold")
                if "released" in rec:
                    continue
                if principal.tenant is None or principal.tenant == rec["tenant"]:
                    out.append(Hold(key[-16:].hex(), rec))
            return sorted(out, key=lambda h: (h.record["created"], h.id))

        result: list[Hold] = self.svc.read(run)
        return result

    # -- retention ----------------------------------------------------------------------------

    async def set_retention(
        self, principal: Principal, tenant: str, days: int, req_id: str
    ) -> dict[str, Any]:
        if type(days) is not int or not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
            raise EventFormatError(
                f"retention is {MIN_RETENTION_DAYS}..{MAX_RETENTION_DAYS} days "
                "(30 days to 10 years)"
            )
        self._check_tenant(principal, tenant)

        def stage(tx: Overlay) -> tuple[dict[str, Any], Accepted]:
            tk = self.svc.keys.tenant_or_create(tx, tenant)
            raw = tx.get(_retention_key(tk.tn))
            old = None if raw is None else store.decode_record(raw, "retention")
            if old is not None and old["days"] == days and old["by"] == principal.token_id:
                # the same officer setting the period it set: a retry (its answer lost, or
                # said the log is not signing) is answered that period, nothing logged again
                # (faith30)
                acc = self._stored_event(tx, tk, old.get("eid"))
                if acc is not None:
                    return {**old, "again": True}, acc
            rec = {
                "v": 1,
                "tenant": tenant,
                "days": days,
                "by": principal.token_id,
                "set": self.svc.log_time(),
            }
            acc = self._log_event(
                tx,
                tk,
                tenant,
                principal,
                rt="tlog.retention",
                op="replace",
                action="tlog.retention.set",
                ocsf=OCSF_UPDATE,
                path="/v1/scim/retention",
                rid=tk.tn.hex(),
                x={"days": days},
                req_id=req_id,
            )
            rec["eid"] = acc.eid
            tx.put(_retention_key(tk.tn), store.encode_record(rec))
            return rec, acc

        rec, acc = await anyio.to_thread.run_sync(self.svc.write, stage)
        _, pending = await self._sequenced(acc)
        return {**rec, "pending": pending}

    def retention(self, principal: Principal, tenant: str) -> dict[str, Any] | None:
        self._check_tenant(principal, tenant)

        def run(tx: Overlay) -> dict[str, Any] | None:
            raw = tx.get(_retention_key(self.svc.tenant_ref(tenant)))
            return None if raw is None else store.decode_record(raw, "retention")

        result: dict[str, Any] | None = self.svc.read(run)
        return result

    async def expire(
        self, principal: Principal | None = None, tenant: str | None = None
    ) -> list[ExpiryResult]:
        """Shred, in every tenant with a retention period (or just ``tenant``), the events
        of every month that ended more than the period ago, unless a legal hold covers the
        tenant or the subject. Leaves, proofs and roots are untouched; one ``tlog.expiry``
        event per tenant that lost anything; the tenant's keys are rotated."""
        if principal is not None and tenant is not None:
            self._check_tenant(principal, tenant)
        stepped = self._clock_step()
        if stepped is not None:
            log.error("retention expiry refused: %s", stepped)
            raise Conflict(f"retention expiry refused: {stepped}")
        try:
            await self.resequence()
        except Exception as exc:  # the expiry does not depend on it: the retry loop has it
            log.warning("the log's own unsequenced events: not sequenced yet (%s)", exc)

        def tenants(tx: Overlay) -> list[str]:
            out = []
            for _, raw in tx.rv.aux_range(store.PREFIX + b"Y"):
                rec = store.decode_record(raw, "retention")
                if tenant is None or rec["tenant"] == tenant:
                    if principal is None or principal.tenant in (None, rec["tenant"]):
                        out.append(rec["tenant"])
            return out

        results = []
        for t in await self.svc.read_off_loop(tenants, "a retention read"):
            res, acc = await anyio.to_thread.run_sync(self.svc.write_rotating, self._expirer(t))
            if acc is not None:
                done, _ = await self.svc.sequence([acc])
                res = ExpiryResult(res.tenant, res.before, res.events, res.deks, res.held, done[0])
            results.append(res)
        return results

    def _clock_step(self) -> str | None:
        """Why the wall clock cannot be trusted to say what is due (None: it can). Expiry
        shreds what the wall clock says is past its retention, for good; a wall clock that
        stepped forward while the server ran (NTP stepping a clock set wrong, an operator's
        `date -s`, a VM's clock) would shred what is not due, with an event that cannot say
        the clock jumped (red team 31). So the wall clock is read with ``CLOCK_BOOTTIME``
        (which counts a suspended machine's time too, and no step moves) at :meth:`start`
        or the first expiry; a later expiry for which the wall clock has gone more than
        :data:`CLOCK_STEP_LIMIT_MS` further is refused, loudly, until a restart (when the
        operator has checked the clock: the new process reads them anew). A step back only
        shreds less. Only for the machine's wall clock (a test's time source is its own)."""
        if self._clock_stepped is not None or not self.svc.clock_is_wall():
            return self._clock_stepped
        wall, boot = self.svc.clock(), _boot_ms()
        if self._clock_base is None:
            self._clock_base = (wall, boot)
            return None
        wall0, boot0 = self._clock_base
        ahead = (wall - wall0) - (boot - boot0)
        if ahead <= CLOCK_STEP_LIMIT_MS:
            return None
        self._clock_stepped = (
            f"the wall clock went {ahead // 1000} s further than the time that passed since "
            "this server read them together (a step forward: NTP, date -s, a VM); shredding "
            "by it could destroy what is not due. Check the clock, then restart tlog serve"
        )
        return self._clock_stepped

    def _expirer(
        self, tenant: str
    ) -> Callable[[Overlay], tuple[tuple[ExpiryResult, Accepted | None], set[bytes]]]:
        def stage(tx: Overlay) -> tuple[tuple[ExpiryResult, Accepted | None], set[bytes]]:
            tk = self.svc.keys.tenant(tx, tenant)
            raw = None if tk is None else tx.get(_retention_key(tk.tn))
            if tk is None or raw is None:
                return (ExpiryResult(tenant, 0, 0, 0, 0), None), set()
            rec = store.decode_record(raw, "retention")
            # The wall clock, not the log time: the log time never goes back, so a clock
            # that was far ahead for a moment leaves it there, and counting from it would
            # shred what is not due (the smaller of the two; equal while the clock is right).
            now = self.svc.clock()
            cut_epoch = epoch_of(max(0, now - rec["days"] * DAY_MS))
            before = _epoch_start_ms(cut_epoch)
            if self._held(tx, tk.tn, None):
                return (ExpiryResult(tenant, before, 0, 0, -1), None), set()
            keep = set()
            for rt in SYSTEM_RTS:  # the log's own events are evidence, never expired
                sk = self.svc.keys.subject(tx, tk, SubjectId(rt, "sys", ""))
                if sk is not None:
                    keep.add(sk.kid)
            held = set()
            for _, hraw in tx.scan(_hold_prefix(tk.tn)):
                hrec = store.decode_record(hraw, "legal hold")
                h = None if "released" in hrec else hrec.get("h")
                sraw = None if h is None else tx.get(store.subject_key(tk.tn, h))
                if sraw is not None:
                    held.add(store.decode_record(sraw, "subject")["kid"])
            marker = os.urandom(16)
            deks: set[bytes] = set()
            events = held_events = 0
            start = rec.get("until", 0)
            prefix = store.tenant_events_prefix(tk.tn)
            for key, _ in tx.rv.aux_range(prefix, prefix + store.ts_bytes(start)):
                ts, lh = store.split_tail(key[len(prefix) :])
                if ts >= before:
                    break
                eraw = tx.get(store.envelope_key(lh))
                env = None if eraw is None else decode_envelope(eraw)
                if not isinstance(env, Envelope) or env.kid in keep:
                    continue
                if env.kid in held:
                    held_events += 1
                    continue
                deks.add(store.dek_key(env.kid, env.epoch))
                tx.delete(store.subject_event_key(env.kid, lh))
                if self._tombstone(tx, tk, lh, marker) is not None:
                    events += 1
            for k in deks:
                tx.delete(k)
            if not held_events:
                tx.put(_retention_key(tk.tn), store.encode_record({**rec, "until": before}))
            if not events:
                return (ExpiryResult(tenant, before, 0, 0, held_events), None), set()
            acc = self._log_event(
                tx,
                tk,
                tenant,
                None,
                rt="tlog.expiry",
                op="delete",
                action="tlog.expiry.run",
                ocsf=OCSF_DELETE,
                path="/v1/scim/expire",
                rid=marker.hex(),
                x={"before": before, "days": rec["days"], "events": events, "deks": len(deks)},
                req_id=marker.hex(),
            )
            return (ExpiryResult(tenant, before, events, len(deks), held_events), acc), {tk.tn}

        return stage

    # -- background job -----------------------------------------------------------------------

    def start(self, interval: float) -> None:
        """Run :meth:`resequence` now and every :data:`RESEQUENCE_EVERY` seconds (after a
        failure sooner, backing off from 1 s), and :meth:`expire` every ``interval`` seconds
        (first run after one interval; none if ``interval`` is not positive). Before
        review 38 a failed resequencing at start (the log overloaded or not signing) was
        retried only by the next expiry run, and never with the expiry off: a committed
        shred could stay without its event in the log while the server served."""

        self._clock_step()  # the clocks read together now: a step from here on is seen

        async def resequencing() -> None:
            failures = 0
            while True:
                try:
                    await self.resequence()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    log.warning(
                        "the log's own unsequenced events: not sequenced yet, trying again (%s)",
                        exc,
                    )
                await asyncio.sleep(
                    RESEQUENCE_EVERY if not failures else min(2.0 ** (failures - 1), 60.0)
                )

        async def loop() -> None:
            self._reseq = asyncio.get_running_loop().create_task(resequencing())
            while interval > 0:
                await asyncio.sleep(interval)
                try:
                    for r in await self.expire():
                        if r.events:
                            log.info("retention expiry: %d events shredded", r.events)
                except Exception:
                    log.exception("retention expiry failed; retrying at the next interval")

        self._job = asyncio.get_running_loop().create_task(loop())

    def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self._reseq is not None:
            self._reseq.cancel()
            self._reseq = None
