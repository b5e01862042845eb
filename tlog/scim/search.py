"""The SCIM search index: what each event records in it, and the reads over it.

Ingestion (:mod:`tlog.scim.service`) records, per event, one key per (field, value) under the
tenant: ``field ‖ HMAC(tenant index key, field ‖ value)`` then ``ts ‖ leaf hash``
(:func:`index_values`, :func:`effect_index_values`); values never appear in clear. The reads:

* :meth:`Searcher.search`: one page of a tenant's events matching every filter, oldest first,
  decrypted (:meth:`tlog.scim.keys.KeyRing.open_envelope`), only those in a published tree;
* :meth:`Searcher.receipts`: the receipts of one eid, or of every event of one request id.

Reads run on a fresh snapshot through the service's reader (retried when an erasure rotated
the keys meanwhile); no writes here. Logging the access itself is :mod:`tlog.scim.access`.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from client.formats.merkle import leaf_hash
from client.scim.event import ACTOR_SUBJECT_RT, Event
from tlog.backend import StorageError
from tlog.log import Published
from tlog.scim import store
from tlog.scim.keys import ActorOpening, TenantKeys
from tlog.scim.store import Overlay, Tombstone, decode_envelope

if TYPE_CHECKING:
    from tlog.scim.service import ScimService

__all__ = [
    "FILTERS",
    "Filters",
    "Found",
    "ReceiptInfo",
    "Searcher",
    "effect_index_values",
    "index_values",
]

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
    # The event's sealed actor, opened (or found unlinked); None: the actor is in the event
    actor: ActorOpening | None = None

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


def _ref_value(rt: str, pid: bytes) -> bytes:
    return rt.encode() + b"\x00" + pid


def actor_condition(tk: TenantKeys, pid: bytes) -> bytes:
    """The index condition an event by the pseudonymous actor ``pid`` is recorded and found
    under (``actor=``): what :func:`index_values` gives its ``{kind, pid, sd}`` actor."""
    fld = _FIELD["actor"]
    return fld + tk.index_hash(fld, _ref_value(ACTOR_SUBJECT_RT, pid))


def index_values(ev: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """(field, value) pairs that the search index records for ``ev``."""
    out: list[tuple[bytes, bytes]] = []
    if "rid" in ev:
        out.append((_FIELD["rid"], ev["rid"].encode()))
    if "xid" in ev:
        out.append((_FIELD["xid"], ev["xid"].encode()))
    actor = ev["actor"]
    if "pid" in actor:  # the log's pseudonymous form: keyed by the pid, as refs are
        out.append((_FIELD["actor"], _ref_value(ACTOR_SUBJECT_RT, actor["pid"])))
    elif "id" in actor:  # the log's own events (and events stored before actors had pids)
        out.append((_FIELD["actor"], actor["id"].encode()))
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


# The leaf-hash half of a cursor that ends a millisecond: no leaf has it, so the next page
# starts strictly after every key of that millisecond.
_NEXT_MS = b"\xff" * 32


def _erased_in_c(actor: ActorOpening | None) -> bool:
    """An event stored before actors were pseudonymised and re-sealed since
    (tlog.scim.reseal), whose actor has been erased: its leaf's ``c`` covers the actor as
    sent, so nothing of it can be verified any more, and it reads as erased (a search and
    its receipt alike)."""
    return actor is not None and actor.in_c and actor.actor is None


class Searcher:
    """The reads over the search index of one SCIM service (its keys, limits and reader)."""

    def __init__(self, svc: ScimService) -> None:
        self.svc = svc

    def search(
        self, tenant: str, f: Filters, limit: int, cursor: bytes | None, pub: Published
    ) -> tuple[list[Found], bytes | None]:
        """One page of the tenant's events matching all filters, in log order: by log time,
        and the events of one millisecond (a batch, a group commit) by leaf index, i.e. in
        the order they were submitted (the index records' own order within a millisecond is
        their leaf hashes', which says nothing).

        Only events in the tree of ``pub`` are returned. The page ends after ``limit``
        results, or at the end of a millisecond once ``max_scan`` index records were
        examined (so a millisecond is read whole: its events are sorted before any is
        given). The returned cursor continues it, and is None when nothing follows: the
        ``ts ‖ leaf hash`` of the last result given (continue after its index in that
        millisecond), or of the millisecond's end (``_NEXT_MS``). A cursor whose leaf hash
        is not in the log continues strictly after its key, as cursors did before.
        """
        keys = self.svc.keys
        max_scan = self.svc.limits.max_scan

        def run(tx: Overlay) -> tuple[list[Found], bytes | None]:
            tk = keys.tenant(tx, tenant)
            if tk is None:
                return [], None
            conds = self._conditions(tx, tk, f)
            if conds is None:
                return [], None
            if conds:
                prefixes = [store.index_prefix(tk.tn, c) for c in conds[0]]
            else:
                prefixes = [store.tenant_events_prefix(tk.tn)]
            others = [[store.index_prefix(tk.tn, c) for c in alts] for alts in conds[1:]]
            since = store.ts_bytes(f.since or 0)
            after: tuple[int, int] | None = None  # (ts, index) of the last result given
            strictly_after: bytes | None = None  # the tail to continue strictly after
            from_ms: bytes | None = None  # the millisecond to continue in
            if cursor is not None:
                c_ts, c_lh = store.split_tail(cursor)
                c_index = tx.rv.index_of(c_lh)
                if c_index is None:  # the end of a millisecond (_NEXT_MS), or not a leaf here
                    strictly_after = cursor + b"\x00"  # strictly after the key
                else:  # within the millisecond c_ts, after the result at c_index
                    from_ms = cursor[:8]
                    after = (c_ts, c_index)

            def start_of(prefix: bytes) -> bytes:
                start = prefix + since
                if strictly_after is not None:
                    start = max(start, prefix + strictly_after)
                elif from_ms is not None:
                    start = max(start, prefix + from_ms)
                return start

            deks: dict[tuple[bytes, int], bytes | None] = {}  # the actors' DEKs, read once
            results: list[Found] = []

            def give(ts: int, same_ms: list[tuple[int, bytes]]) -> bytes | None:
                """The matches of one millisecond, in log order; a cursor if the page fills."""
                same_ms.sort()
                for index, lh in same_ms:
                    if after is not None and (ts, index) <= after:
                        continue
                    results.append(self._found_at(tx, tk, index, lh, deks))
                    if len(results) >= limit:
                        return store.ts_bytes(ts) + lh
                return None

            scanned = 0
            run_ts = -1
            same_ms: list[tuple[int, bytes]] = []
            for tail in self._tails(tx, prefixes, start_of):
                ts, lh = store.split_tail(tail)
                if ts != run_ts:
                    if same_ms and (full := give(run_ts, same_ms)) is not None:
                        return results, full
                    same_ms = []
                    if scanned >= max_scan:
                        return results, store.ts_bytes(run_ts) + _NEXT_MS
                    if f.until is not None and ts >= f.until:
                        return results, None
                    run_ts = ts
                scanned += 1
                if all(any(tx.rv.aux(p + tail) is not None for p in alts) for alts in others):
                    index = tx.rv.index_of(lh)
                    if index is not None and index < pub.size:
                        same_ms.append((index, lh))
                    # else pending, or sequenced after the checkpoint this page answers to
            if same_ms and (full := give(run_ts, same_ms)) is not None:
                return results, full
            return results, None

        return self.svc.read(run)

    def _conditions(self, tx: Overlay, tk: TenantKeys, f: Filters) -> list[list[bytes]] | None:
        """The index conditions of the filters ``f``: each filter one condition, or several
        of which one must hold (an actor is found by its pid, for events stored since actors
        are pseudonymised, or by its id, for the log's own events and events stored before).
        None when nothing can match (a ``ref`` to a resource the tenant never named)."""
        keys = self.svc.keys
        conds: list[list[bytes]] = []
        for name, fld in FILTERS:
            value = getattr(f, name)
            if value is None:
                continue
            if name == "ref":
                p = keys.pid(tx, tk, f.ref_rt, value)
                if p is None:
                    return None
                conds.append([fld + tk.index_hash(fld, _ref_value(f.ref_rt, p))])
            elif name == "actor":
                alts = [fld + tk.index_hash(fld, value.encode())]
                p = keys.pid(tx, tk, ACTOR_SUBJECT_RT, value)
                if p is not None:
                    alts.append(actor_condition(tk, p))
                conds.append(alts)
            else:
                conds.append([fld + tk.index_hash(fld, value.encode())])
        return conds

    @staticmethod
    def _tails(
        tx: Overlay, prefixes: list[bytes], start_of: Callable[[bytes], bytes]
    ) -> Iterator[bytes]:
        """The tails (``ts ‖ leaf hash``) of the index records under ``prefixes``, each
        from ``start_of(prefix)``, in order; those of several prefixes merged (a tail under
        two of them comes once)."""

        def one(prefix: bytes) -> Iterator[bytes]:
            n = len(prefix)
            for key, _ in tx.rv.aux_range(prefix, start_of(prefix)):
                yield key[n:]

        if len(prefixes) == 1:
            yield from one(prefixes[0])
            return
        last = None
        for tail in heapq.merge(*[one(p) for p in prefixes]):
            if tail != last:
                yield tail
            last = tail

    def _found_at(
        self,
        tx: Overlay,
        tk: TenantKeys,
        index: int,
        lh: bytes,
        deks: dict[tuple[bytes, int], bytes | None] | None = None,
    ) -> Found:
        leaf = tx.rv.entry(index)
        raw = tx.get(store.envelope_key(lh))
        if leaf is None or raw is None:
            raise StorageError("SCIM event missing from the log or the store")
        env = decode_envelope(raw)
        opened = self.svc.keys.open_envelope_actor(tx, tk, lh, deks)
        if opened is None:
            return Found(index, leaf, lh, env.ts, env.eid, None, None)
        ev, nonce, effect, actor = opened
        if _erased_in_c(actor):
            return Found(index, leaf, lh, env.ts, env.eid, None, None)
        if actor is not None and actor.in_c:
            # While the actor its c covers opens, the event reads as it was sent.
            return Found(
                index, leaf, lh, env.ts, env.eid, {**ev, "actor": actor.actor}, nonce, effect
            )
        return Found(index, leaf, lh, env.ts, env.eid, ev, nonce, effect, actor)

    def _unreadable(
        self,
        tx: Overlay,
        tk: TenantKeys,
        lh: bytes,
        deks: dict[tuple[bytes, int], bytes | None],
    ) -> bool:
        """Whether the live envelope ``lh`` reads as erased in a search (:meth:`_found_at`),
        so that its receipt says so too: its own DEK is gone (shredded, or its retention
        epoch expired), or it is one re-sealed by ``tlog reseal-actors`` whose actor has
        been erased since (its ``c`` covers that actor)."""
        opened = self.svc.keys.open_envelope_actor(tx, tk, lh, deks)
        return opened is None or _erased_in_c(opened[3])

    def receipts(
        self, tenant: str, *, eid: str | None = None, req: str | None = None
    ) -> list[ReceiptInfo]:
        """Receipts of the tenant's event ``eid``, or of all events of request id ``req``."""
        keys = self.svc.keys
        max_receipts = self.svc.limits.max_receipts

        def run(tx: Overlay) -> list[ReceiptInfo]:
            tk = keys.tenant(tx, tenant)
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
                    if len(lhs) >= max_receipts:
                        break
            out = []
            deks: dict[tuple[bytes, int], bytes | None] = {}
            for lh in lhs:
                raw = tx.get(store.envelope_key(lh))
                if raw is None:
                    raise StorageError("SCIM event without an envelope")
                env = decode_envelope(raw)
                leaf = tx.get(store.eid_key(tk.tn, env.eid))
                if leaf is None:
                    raise StorageError("SCIM event without an eid record")
                erased = isinstance(env, Tombstone) or self._unreadable(tx, tk, lh, deks)
                out.append(ReceiptInfo(env.eid, leaf, lh, env.ts, tx.rv.index_of(lh), erased))
            # In log order (the index records of one millisecond sort by leaf hash); pending
            # ones last.
            out.sort(key=lambda r: (r.index is None, r.index or 0))
            return out

        return self.svc.read(run)
