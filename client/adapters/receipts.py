"""Receipt headers: what a recorded SCIM write's answer says about its events.

:data:`RECEIPT_HEADERS` (``Tlog-Status``, ``Tlog-Event-Count``, ``Tlog-Event-Id``,
``Tlog-Index``, ``Tlog-Leaf-Hash``, ``Tlog-Tree-Size``, ``Tlog-Checkpoint``) from the events'
eids and whatever receipts the relay delivered in time (:func:`wait_receipts`). Used by
:mod:`client.adapters.middleware`; inclusion proofs are never put in headers (SCIM.md §2.5).

:class:`ReceiptVerifier` checks what the log answers to ``POST /v1/scim/events/batch`` before
the relay (:mod:`client.adapters.relay`) marks anything delivered: the checkpoint's signature
under the log's pinned key, that checkpoints never go backwards or fork (consistency proofs),
each receipt's index and that its leaf hash is at that index in the signed tree. The batch
answer carries no inclusion proofs; the inclusion is proven once per batch, one of two ways:

* the batch's new leaves are all the log appended since the newest tree the verifier has
  proven (one adapter, or a quiet log): that tree's compact range
  (:class:`client.formats.merkle.CompactRange`) grown by the receipts' leaf hashes must give
  the signed root. That proves every receipt's inclusion and the consistency of the two
  checkpoints at once, with no request (about two hashes a leaf);
* otherwise (others' leaves in between, duplicates, the first batch) from the log's hash
  tiles: each level-0 tile holding receipts is checked against the signed root (node-level
  proofs, :func:`client.net.logclient.verify_tile_hashes`) and each receipt's leaf hash must
  be the tile's hash at its index; the consistency with the last checkpoint is proven from
  the same tiles.

``tests/adapters/test_receipt_verifier_paths.py`` holds the two ways to one verdict.

:func:`check_commitments` then checks that each proven leaf is *this* event's: the answer
carries each event's leaf and its commitment nonce, the leaf must hash to the receipt's leaf
hash, and its ``c`` must be HMAC(nonce, det_cbor(event)) of the event the adapter sent. So a
log cannot acknowledge an event with the proof of another leaf (and the adapter then drop
the event as delivered). A retry of an event whose body the log has erased since has no
nonce (nothing to open): only its inclusion is proven (counted, and logged by the relay),
and that its leaf is not older than the event (``CLOCK_SKEW_MS``), so no old leaf of the tree
passes for it.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from itertools import groupby

from client.adapters.outbox import Canonical, Receipt
from client.formats.checkpoint import Checkpoint
from client.formats.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    VerificationError,
    consistency_ranges,
    fold_perfect,
    perfect_subtrees,
    proof_from_ranges,
)
from client.formats.merkle import leaf_hash as rfc6962_leaf_hash
from client.formats.note import FormatError, b64decode_strict
from client.formats.tiles import TILE_WIDTH, Tile, TileHashReader
from client.net.core import CheckpointTracker
from client.net.logclient import VerifiedCheckpoint, verify_consistent, verify_tile_hashes
from client.scim.cbor import dumps_det
from client.scim.event import (
    Event,
    actor_cbor,
    actor_handle,
    actor_seal_digest,
    adopt_json_event,
    pseudonymous_actor_cbor,
)
from client.scim.fastjson import decode_event_json
from client.scim.jsonstrict import strict_json
from client.scim.leaf import commitment_unchecked, parse_leaf

__all__ = [
    "MAX_HEADER_EVENTS",
    "RECEIPT_HEADERS",
    "Commit",
    "ReceiptVerifier",
    "StoredActor",
    "check_commitments",
    "receipt_headers",
    "wait_receipts",
]

RECEIPT_HEADERS = (
    "Tlog-Status",  # logged | queued | unrecorded
    "Tlog-Event-Count",  # events recorded for this request (bulk: one per operation)
    "Tlog-Event-Id",  # their eids, comma-separated (omitted above MAX_HEADER_EVENTS)
    "Tlog-Index",  # leaf indices, same order (only when logged)
    "Tlog-Leaf-Hash",  # base64 leaf hashes, same order (only when logged)
    "Tlog-Tree-Size",  # the tree size of the checkpoint covering them (only when logged)
    "Tlog-Checkpoint",  # that signed checkpoint note, base64 (only when logged)
)
MAX_HEADER_EVENTS = 32


async def wait_receipts(futs: Sequence[Future[Receipt]], timeout: float) -> dict[str, Receipt]:
    wrapped = [asyncio.wrap_future(f) for f in futs]
    done, pending = await asyncio.wait(wrapped, timeout=timeout)
    for p in pending:
        p.cancel()
    out: dict[str, Receipt] = {}
    for d in done:
        if not d.cancelled() and d.exception() is None:
            r = d.result()
            out[r.eid] = r
    return out


def receipt_headers(
    eids: Sequence[str], receipts: Mapping[str, Receipt]
) -> list[tuple[bytes, bytes]]:
    logged = bool(eids) and all(e in receipts for e in eids)
    h = [
        (b"tlog-status", b"logged" if logged else b"queued"),
        (b"tlog-event-count", str(len(eids)).encode()),
    ]
    if len(eids) <= MAX_HEADER_EVENTS:
        h.append((b"tlog-event-id", ", ".join(eids).encode("ascii")))
        if logged:
            rs = [receipts[e] for e in eids]
            h.append((b"tlog-index", ", ".join(str(r.index) for r in rs).encode("ascii")))
            h.append((b"tlog-leaf-hash", ", ".join(r.leaf_hash for r in rs).encode("ascii")))
    if logged:
        last = max((receipts[e] for e in eids), key=lambda r: r.tree_size)
        h.append((b"tlog-tree-size", str(last.tree_size).encode()))
        h.append((b"tlog-checkpoint", base64.b64encode(last.checkpoint.encode("utf-8"))))
    return h


# Full tiles never change: kept across batches (a duplicate's old tile, the tiles left of the
# right edge). Tiles are untrusted input, checked against a signed root every time they are
# used, so a bad one cached makes a check fail, never pass; the cache is dropped then.
_TILE_CACHE = 256


def _decoded(body: str) -> tuple[Event, bytes]:
    """An event in its JSON form (the outbox record) and its det-CBOR, as the log encodes it
    inside a batch: the compiled decoder, else the reference path on the strictly parsed
    item (``ScimRoutes._parse_batch``). Not :func:`adopt_json_text`: its limit on a single
    event's JSON (``MAX_JSON_SIZE``) does not apply to a batch's events, and an event whose
    JSON is over it (control characters are six JSON bytes each) would make the relay
    refuse the log's honest answer for good."""
    data = body.encode("utf-8")
    fast = decode_event_json(data)
    return fast if fast is not None else adopt_json_event(strict_json(body))


def _canonical(body: str) -> bytes:
    """The det-CBOR of an event in its JSON form (the outbox record), as the log encodes it."""
    return _decoded(body)[1]


# How the log stored an event's actor when it pseudonymised it (the answer's ``actor``):
# (pid, sd, nonce of sd or None once the actor was erased).
StoredActor = tuple[bytes, bytes, bytes | None]
# An answer's (leaf, nonce), with the stored actor when the log pseudonymised it.
Commit = tuple[bytes, bytes | None] | tuple[bytes, bytes | None, StoredActor | None]


def _as_stored(body: str, actor: StoredActor | None) -> bytes:
    """The det-CBOR of the event sent (its JSON form) as the log stored it: with the actor
    the answer names (``{kind, pid, sd}``), whose ``sd`` must open to the actor sent when
    the answer carries its nonce (docs/design.md, "Actors").

    The stored event's encoding is the sent one with the actor's bytes replaced, as the
    log makes it (``ScimService._pseudonymous``): ``actor`` is one value of the top-level
    map, whose key order does not change, so when ``"actor"`` followed by the sent actor's
    encoding occurs once in the event's encoding, that occurrence is the actor's value.
    Otherwise the stored event is encoded again (:func:`_as_stored_reference`, which this
    equals: ``tests/adapters/test_fast_receipts.py``)."""
    ev, encoded = _decoded(body)
    if actor is None:
        return encoded
    got = _spliced(encoded, ev["actor"], actor)
    if got is not None:
        return got
    sent = ev["actor"]
    return dumps_det({**ev, "actor": {"kind": sent["kind"], "pid": actor[0], "sd": actor[1]}})


def _spliced(encoded: bytes, sent: Mapping[str, object], actor: StoredActor) -> bytes | None:
    """The stored event's encoding from the sent one's (``encoded``, its actor ``sent``) by
    replacing the actor's bytes (see :func:`_as_stored`), or ``None`` when the replacement
    cannot be shown to hit the actor's value only (the caller encodes again). Raises
    :class:`VerificationError` when the stored actor cannot be the one sent."""
    pid, sd, an = actor
    if actor_handle(sent) is None:
        raise VerificationError("the log pseudonymised an actor that names no one")
    sent_cbor = actor_cbor(sent)
    if an is not None and actor_seal_digest(an, sent_cbor) != sd:
        raise VerificationError("the log's stored actor does not commit to the actor sent")
    old = b"\x65actor" + sent_cbor
    if len(pid) == 16 and len(sd) == 32 and encoded.count(old) == 1:
        kind = str(sent["kind"])
        return encoded.replace(old, b"\x65actor" + pseudonymous_actor_cbor(kind, pid, sd))
    return None


def _handed_stored(canon: Canonical, actor: StoredActor | None) -> bytes | None:
    """:func:`_as_stored` from the canonical form the adapter handed over (no decode), or
    ``None`` when it cannot say (the caller decodes: :func:`check_commitments`)."""
    if actor is None:
        return canon.cbor
    try:
        return _spliced(canon.cbor, canon.actor, actor)
    except VerificationError:
        return None


def _as_stored_reference(body: str, actor: StoredActor | None) -> bytes:
    """:func:`_as_stored` by re-encoding the whole stored event (the path it replaced; kept
    for the equality test)."""
    if actor is None:
        return _canonical(body)
    ev = _decoded(body)[0]
    pid, sd, an = actor
    sent = ev["actor"]
    if actor_handle(sent) is None:
        raise VerificationError("the log pseudonymised an actor that names no one")
    if an is not None and actor_seal_digest(an, sent) != sd:
        raise VerificationError("the log's stored actor does not commit to the actor sent")
    return dumps_det({**ev, "actor": {"kind": sent["kind"], "pid": pid, "sd": sd}})


# How far the log's clock may be behind the adapter's: a leaf answered for a retry of an
# erased event must not be older than the event less this (see check_commitments).
CLOCK_SKEW_MS = 3600 * 1000


def check_commitments(
    receipts: Sequence[Receipt],
    commits: Mapping[str, Commit],
    bodies: Mapping[str, str],
    handed: Mapping[str, tuple[str, Canonical]] | None = None,
) -> int:
    """Raise :class:`VerificationError` unless every receipt's leaf is the event sent under
    its eid: ``commits[eid]`` = (leaf, nonce) from the answer, ``bodies[eid]`` the event's
    JSON form as sent. Returns how many were retries the log answered without a nonce (their
    bodies erased since: inclusion only). Error texts carry no eid or leaf hash.

    ``handed[eid]`` (:meth:`client.adapters.outbox.Outbox.handed`): the JSON form an event
    was queued with and its canonical form, made by the adapter from that JSON. Used only
    when that JSON is the body sent, and only to pass: a leaf that does not commit to it is
    checked again from the body decoded (the path without it), which alone may refuse. So a
    handed form that is missing, stale or wrong costs a decode, never an honest answer."""
    erased = 0
    for r in receipts:
        got = commits.get(r.eid)
        if got is None:
            raise VerificationError("a receipt without its leaf")
        leaf, nonce = got[0], got[1]
        if base64.b64encode(rfc6962_leaf_hash(leaf)).decode() != r.leaf_hash:
            raise VerificationError("a receipt's leaf does not hash to its leaf hash")
        if nonce is None and not r.duplicate:
            raise VerificationError("a new event answered without its commitment nonce")
        try:
            parsed = parse_leaf(leaf)
        except (FormatError, ValueError) as exc:
            raise VerificationError(f"a receipt's leaf is not a SCIM leaf: {exc}") from None
        if nonce is None:
            # Nothing to open, but the leaf can be dated: the log made it when it first took
            # the event, not before the event was made. Else any old leaf of the tree could
            # be passed off as this event's.
            made = _decoded(bodies[r.eid])[0]["ts"]
            if parsed.ts + CLOCK_SKEW_MS < made:
                raise VerificationError(
                    "a retry answered as erased with a leaf that predates the event"
                )
            erased += 1
            continue
        stored = got[2] if len(got) > 2 else None
        body = bodies[r.eid]
        h = None if handed is None else handed.get(r.eid)
        if h is not None and h[0] == body:
            fast = _handed_stored(h[1], stored)
            if fast is not None and parsed.c == commitment_unchecked(nonce, fast):
                continue
        if parsed.c != commitment_unchecked(nonce, _as_stored(body, stored)):
            raise VerificationError(
                "a receipt's leaf does not commit to the event sent under its id (the log "
                "answered with another event's leaf)"
            )
    return erased


class ReceiptVerifier:
    """Checks one batch answer's receipts against the log (see the module docstring).

    ``verify_note(note)`` verifies a checkpoint note under the pinned log key (signature,
    origin = key name: :meth:`client.net.logclient.LogClient.verify_note`); ``fetch_tile``
    returns a tile's raw bytes (:meth:`~client.net.logclient.LogClient.fetch_tile`).
    Thread-safe: the relay's thread and a direct delivery may check at the same time.
    """

    def __init__(
        self,
        verify_note: Callable[[str], VerifiedCheckpoint],
        fetch_tile: Callable[[Tile], bytes],
    ) -> None:
        self._verify_note = verify_note
        self._fetch_tile = fetch_tile
        self._lock = threading.Lock()
        self._tree = CheckpointTracker(self._prove)
        self._full: dict[tuple[int, int], bytes] = {}
        self._reader: TileHashReader | None = None
        # The compact range of the newest verified tree (its root is that checkpoint's),
        # and the last consistency it proved by growing: (old size, old root, new size, new
        # root): both trees, or a fork of the old size would pass as proven.
        self._edge: CompactRange | None = CompactRange()
        self._proven: tuple[int, bytes, int, bytes] | None = None

    @property
    def size(self) -> int:
        """The size of the largest checkpoint verified so far (0 before the first)."""
        cp = self._tree.latest
        return 0 if cp is None else cp.size

    def _fetch(self, tile: Tile) -> bytes:
        key = (tile.level, tile.index)
        if tile.width == TILE_WIDTH and key in self._full:
            return self._full[key]
        data = self._fetch_tile(tile)
        if tile.width == TILE_WIDTH:
            if len(self._full) >= _TILE_CACHE:
                self._full.clear()
            self._full[key] = data
        return data

    def _reader_for(self, size: int) -> TileHashReader:
        r = self._reader
        if r is None or r.size != size:
            r = self._reader = TileHashReader(size, self._fetch)
        return r

    def _prove(self, old: Checkpoint, new: Checkpoint) -> None:
        if old.size == 0:
            return  # the empty root was checked with the note
        if self._proven == (old.size, old.root_hash, new.size, new.root_hash):
            return  # the compact range of ``old`` grew into ``new`` (_extends_edge)
        reader = self._reader_for(new.size)
        verify_consistent(
            old, new, proof_from_ranges(consistency_ranges(old.size, new.size), reader.node)
        )

    def check(
        self,
        receipts: Sequence[Receipt],
        sent: Collection[str],
        floor: int,
        *,
        claimed_latest: bool = True,
    ) -> None:
        """Raise unless every receipt of one batch answer verifies.

        ``sent``: the eids of the events sent; ``floor``: :attr:`size` before they were sent
        (a new leaf cannot be in a tree signed before its event left). ``claimed_latest``:
        the answer is the newest the caller has asked for, so a smaller checkpoint than one
        verified before is a rollback (else it must be proven a prefix of it). Raises
        :class:`VerificationError` or :class:`~client.formats.note.FormatError` (evidence
        against the log), or the tile fetch's :class:`~client.net.core.HTTPFailure` (the
        log could not be asked: proves nothing). Error texts carry no eid or leaf hash.
        """
        if not receipts:
            return
        note, tree_size = receipts[0].checkpoint, receipts[0].tree_size
        if any(r.checkpoint != note or r.tree_size != tree_size for r in receipts):
            raise VerificationError("the receipts of one answer name different checkpoints")
        with self._lock:
            try:
                self._check(receipts, sent, floor, note, tree_size, claimed_latest)
            except BaseException:
                self._full.clear()  # a bad tile must not fail the next try too
                self._reader = None
                raise

    def _check(
        self,
        receipts: Sequence[Receipt],
        sent: Collection[str],
        floor: int,
        note: str,
        tree_size: int,
        claimed_latest: bool,
    ) -> None:
        cp = self._verify_note(note).checkpoint  # signature under the pinned key, origin
        if cp.size != tree_size:
            raise VerificationError(
                f"the answer's tree_size {tree_size} is not its checkpoint's size {cp.size}"
            )
        if claimed_latest and cp.size < self.size:  # said first: the rest cannot fit it
            raise VerificationError(
                f"rollback: the log answered with a checkpoint of size {cp.size}, "
                f"but it already signed size {self.size}"
            )
        wanted = set(sent)
        leaves: dict[int, bytes] = {}
        eids: dict[str, int] = {}
        fresh: set[int] = set()
        for r in receipts:
            if r.eid not in wanted:
                raise VerificationError("a receipt for an event that was not sent")
            if not 0 <= r.index < cp.size:
                raise VerificationError(
                    f"a receipt's index {r.index} is outside its checkpoint (size {cp.size})"
                )
            lh = b64decode_strict(r.leaf_hash, size=HASH_SIZE)
            if eids.setdefault(r.eid, r.index) != r.index:
                raise VerificationError("one event answered at two indices")
            if leaves.setdefault(r.index, lh) != lh:
                raise VerificationError(f"two leaf hashes answered for index {r.index}")
            if not r.duplicate:
                if r.index < floor:
                    raise VerificationError(
                        f"a new event answered at index {r.index}, inside a tree of size "
                        f"{floor} signed before it was sent"
                    )
                if r.index in fresh:
                    raise VerificationError(f"two new events answered at index {r.index}")
                fresh.add(r.index)
        if self._extends_edge(cp, leaves, fresh, claimed_latest):
            return
        # Rollback, fork, consistency with what was verified before (hash tiles).
        self._tree.observe(cp, claimed_latest=claimed_latest)
        reader = self._reader_for(cp.size)
        for t, group in groupby(sorted(leaves), key=lambda i: i // TILE_WIDTH):
            width = min(TILE_WIDTH, cp.size - t * TILE_WIDTH)
            first = t * TILE_WIDTH
            hashes = [reader.node(0, first + i) for i in range(width)]
            tile = Tile(0, t, width)
            verify_tile_hashes(tile, hashes, cp, reader.node)
            for i in group:
                if hashes[i - first] != leaves[i]:
                    raise VerificationError(
                        f"the leaf hash of a receipt is not the log's leaf at index {i}"
                    )
        latest = self._tree.latest
        if latest is not None and latest.size == cp.size:
            # The compact range of the newest verified tree, for the next batch's fast path.
            nodes = [reader.node(lv, ix) for lv, ix in perfect_subtrees(0, cp.size)]
            edge_ok = bool(nodes) and fold_perfect(nodes) == cp.root_hash
            self._edge = CompactRange(cp.size, nodes) if edge_ok else None

    def _extends_edge(
        self, cp: Checkpoint, leaves: dict[int, bytes], fresh: set[int], claimed_latest: bool
    ) -> bool:
        """The fast path: the batch's new leaves are all the log appended since the newest
        verified tree (one adapter, or a quiet log). That tree's compact range extended by
        them must give the signed root: every receipt's inclusion and the consistency of
        the two checkpoints at once, with no request. False when it does not apply (or does
        not match: the tiles then say what is wrong)."""
        edge = self._edge
        latest = self._tree.latest
        old_size = 0 if latest is None else latest.size
        old_root = EMPTY_ROOT if latest is None else latest.root_hash
        n = cp.size - old_size
        if (
            edge is None
            or edge.size != old_size
            or n <= 0
            or len(leaves) != n
            or len(fresh) != n
            or min(leaves) != old_size
            or max(leaves) != cp.size - 1
        ):
            return False
        grown = edge.copy()
        grown.extend([leaves[i] for i in range(old_size, cp.size)])
        if grown.root() != cp.root_hash:
            return False
        self._proven = (old_size, old_root, cp.size, cp.root_hash)
        self._tree.observe(cp, claimed_latest=claimed_latest)
        self._edge = grown
        return True
