"""The log: sequencing, integration and publication of one batch, and the read side.

Stages (the words Tessera uses):

* *sequenced*: an entry has an index; *integrated*: its hash is in the tree;
  *published*: a signed checkpoint covers it. Here all three happen in one LMDB
  transaction per batch, so an acknowledged entry is always all three, durably.

:meth:`Log.integrate` must be called from one thread only (the sequencer's writer); the
read methods are safe from any thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    LEAF_PREFIX,
    VerificationError,
    fold_perfect,
    leaf_hash,
    node_hash,
    node_path_ranges,
    perfect_subtrees,
    root_from_node_path,
    verify_consistency,
    verify_inclusion,
)
from client.formats.note import FormatError, open_note, parse_note
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import TILE_HEIGHT, TILE_WIDTH, encode_entry_bundle
from tlog.backend import (
    AuxFenced,
    Backend,
    BatchWrite,
    CommitConflict,
    CommitUnknown,
    DuplicateLeaves,
    ReadView,
    StorageCorrupt,
    StorageError,
    StorageReadOnlyInDoubt,
)
from tlog.integrity import RECOVER_HINT, CheckpointFile, Remembered, RollbackDetected
from tlog.signer import CheckpointSigner
from tlog.tree import NodeReader, RightEdge, slot_offset, tile_width

__all__ = ["BatchResult", "BlobCache", "Log", "LogHalted", "NotFound", "Published"]

log = logging.getLogger("tlog")


class NotFound(Exception):
    """The requested index, size, tile or checkpoint does not exist (yet)."""


# What a damaged read was of, from the first word of its description (Log._corrupt).
_DAMAGE_KINDS = {"stored": "checkpoint", "entry": "entry", "dedup": "dedup"}


class LogHalted(Exception):
    """The log stopped signing: it learned that its store is behind what it published."""


class _Miss(Exception):
    """A blob the memory cache does not hold (for that tree size): read the store."""


COMPLETE = 1 << 63  # the tree size a complete (immutable) blob serves: every size
# Entries another frontend committed that catch_up hashes in rather than reloading (beyond
# that a reload, which reads O(log n) blobs, is cheaper than reading the entries).
CATCH_UP_MAX = 1 << 16
PROOF_READER_BLOBS = 64  # blobs cached_inclusion_proof's reader of one size keeps (~1 MiB)


class BlobCache:
    """Stratum blobs (tile plus inner levels, :mod:`tlog.tree`) the log can serve from memory.

    Only *trusted* blobs get in: the writer's own (built in memory, then committed) and blobs
    read from the store whose every hash was checked against a signed root
    (:meth:`Log._adopt`). Each blob carries the largest tree size it serves: a blob on the
    right edge holds the nodes that were complete at that size (a later size needs a newer
    copy), a complete blob serves every size. So a proof built only from cached blobs needs no
    per-request verification and no storage access: that is what keeps proofs and tiles
    answering while the store is stalled, and cheap when it is not.
    """

    def __init__(self, max_blobs: int = 16384) -> None:  # 16,384 x 16 KB: 256 MiB at most
        self.max_blobs = max_blobs
        self._d: dict[tuple[int, int], tuple[int, bytes]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, level: int, index: int, size: int) -> bytes | None:
        v = self._d.get((level, index))
        return None if v is None or not _serves(v[0], level, index, size) else v[1]

    def put(self, level: int, index: int, size: int, blob: bytes) -> None:
        valid = COMPLETE if tile_width(size, level, index) == TILE_WIDTH else size
        key = (level, index)
        with self._lock:
            old = self._d.get(key)
            if old is not None and old[0] >= valid:
                return
            if old is None and len(self._d) >= self.max_blobs:
                del self._d[next(iter(self._d))]  # the oldest insert (FIFO)
            self._d[key] = (valid, blob)

    def getter(self, size: int) -> Callable[[int, int], bytes]:
        """A :class:`NodeReader` blob getter for tree ``size`` that raises _Miss."""
        d = self._d

        def get(level: int, index: int) -> bytes:
            v = d.get((level, index))
            if v is None or not _serves(v[0], level, index, size):
                raise _Miss
            return v[1]

        return get


def _serves(valid: int, level: int, index: int, size: int) -> bool:
    """A blob that holds the nodes complete at tree size ``valid`` serves tree ``size``: any
    smaller size (its nodes are a subset), and a larger one in which the tile holds no more
    nodes (a tile's nodes are the complete subtrees in its range, so the same width means
    the same nodes: no new node, no changed one)."""
    return valid >= size or tile_width(valid, level, index) == tile_width(size, level, index)


class Published(NamedTuple):
    size: int
    note: str  # the log-signed checkpoint note


@dataclass(frozen=True)
class BatchResult:
    """Indices for a submission, and the checkpoint that covers all of them."""

    indices: list[int]
    duplicates: list[bool]
    leaf_hashes: list[bytes]
    checkpoint: Published


class Log:
    """One log over one store.

    ``remembered``: the file that remembers the last published checkpoint outside the
    store (see :class:`tlog.integrity.CheckpointFile`). With it, a store that is behind or
    forked from that checkpoint is refused here (:class:`RollbackDetected`), and every
    batch updates the file before it is acknowledged.
    """

    def __init__(
        self,
        storage: Backend,
        signer: CheckpointSigner,
        remembered: CheckpointFile | None = None,
    ) -> None:
        self.storage = storage
        self.signer = signer
        # Served data is checked against the signed tree (see "read side"): verified signed
        # roots by tree size, and the (level, index, width) of tiles already verified.
        self._roots: dict[int, tuple[bytes, bytes]] = {}
        self._verified_tiles: set[tuple[int, int, int]] = set()
        # Trusted blobs served from memory, and range hashes computed from them only.
        self.blobs = BlobCache()
        self._vranges: dict[tuple[int, int], bytes] = {}
        self._proof_reader: tuple[int, NodeReader] | None = None  # cached_inclusion_proof's
        self.origin = signer.origin
        self._verifier = signer.verifier
        self.remembered = remembered
        # Why the last checkpoint could not be remembered (its file's disk failed: a file
        # system gone read-only, an I/O error), None once one is: /readyz fails meanwhile,
        # as every write is answered 503 then.
        self.remember_fault: str | None = None
        self.halted: str | None = None
        # Why a commit's outcome on the disk is unknown (StorageReadOnlyInDoubt): the store
        # is never reloaded (its page cache may hold what the disk lost) until a restart.
        self._in_doubt: str | None = None
        # True after a failed write whose effect on the store is not known here: nothing is
        # signed again before the state is reloaded from the store and re-verified.
        self._stale = False
        self._publish_lock = threading.Lock()
        self._remembered_size: int | None = None  # set once start-up remembered the latest
        # Reads that met a damaged record, by kind (note_damage; the metrics read it).
        self.damaged_reads: dict[str, int] = {}
        self._damage_lock = threading.Lock()
        with storage.read() as rv:
            origin, vkey = rv.meta("origin"), rv.meta("vkey")
            migrating = rv.meta("migrating")  # tlog.migrate.MARKER
        if migrating is not None:
            raise StorageError(
                "the store is an unfinished tlog migrate copy (its marker is still there): "
                "run the same tlog migrate again to finish and verify it before serving it"
            )
        self._check_identity(origin, vkey)
        self._ranges: dict[tuple[int, int], bytes] = {}
        mem = remembered.read() if remembered is not None else None
        self._load_state(mem)
        if remembered is not None and (mem is None or mem.size < self._latest.size):
            remembered.write(self._latest.note)
        self._remembered_size = self._latest.size

    def _load_state(self, mem: Remembered | None = None) -> None:
        """(Re)load the tree size, latest checkpoint and right edge from the store, checked."""
        storage = self.storage
        with storage.read() as rv:
            size = rv.tree_size()
            latest = rv.latest_checkpoint()
            if latest is None:
                if size != 0:
                    raise StorageError("store has entries but no checkpoint")
            else:
                cp_size, note = latest
                if cp_size != size:
                    raise StorageError(
                        f"tree size {size} differs from latest checkpoint size {cp_size}"
                    )
                cp = self._open(note)
                # O(log n): the stored tree must still produce the signed root.
                if NodeReader(rv.blob).root(size) != cp.root_hash:
                    raise StorageError("stored tree does not match the latest checkpoint")
            if mem is not None:
                self._check_remembered(mem, size, rv)
        if latest is None:
            note_s = self.signer.sign(Checkpoint(self.origin, 0, EMPTY_ROOT), None, [])
            try:
                storage.put_checkpoint(0, note_s.encode())
            except CommitConflict:  # another process initialised the store first
                return self._load_state(mem)
            latest = (0, note_s.encode())
        # With a replicated database, what was just read may be committed on the primary
        # but not yet on its synchronous standby: wait for that before serving it.
        storage.settle()
        pub = Published(latest[0], latest[1].decode())
        self._head = pub
        if self._remembered_size is None:  # at start-up: __init__ remembers it
            self._latest = pub
        else:  # a reload: what the store holds now is handed out only once remembered
            self.publish(pub)
        self._edge = RightEdge(size, self._edge_blob)

    def _check_remembered(self, mem: Remembered, size: int, rv: ReadView) -> None:
        where = self.remembered.path if self.remembered is not None else "?"
        if size < mem.size:
            raise RollbackDetected(
                f"the store is behind the log: it ends at tree size {size}, but this log "
                f"already signed and published tree size {mem.size} (remembered in {where}). "
                "The store was emptied, truncated or restored from an older backup. " + RECOVER_HINT
            )
        if NodeReader(rv.blob).root(mem.size) != mem.root_hash:
            raise RollbackDetected(
                f"the store's tree at size {mem.size} differs from the checkpoint this log "
                f"signed at that size (remembered in {where}): the store is not this log's "
                "history (a different store, or a fork). " + RECOVER_HINT
            )

    def halt(self, reason: str) -> None:
        """Stop signing for good (until restart): writes get 503 with ``reason``."""
        if self.halted is None:
            self.halted = reason
            log.critical("THE LOG STOPPED SIGNING: %s", reason)

    def reload(self) -> None:
        """Rebuild the writer's state from the store (after a failed compare-and-swap)."""
        doubt = self._in_doubt or getattr(self.storage, "in_doubt", None)
        if doubt is not None:  # the store's pages may not be the disk's
            raise LogHalted(f"the log is not signing: {doubt}")
        self._load_state(self.remembered.read() if self.remembered is not None else None)
        self._stale = False

    def catch_up(self, publish: bool = True) -> bool:
        """Adopt what the store holds when it moved past this writer (another frontend on a
        shared database committed), or reload if a failed write left this writer stale.
        Returns True when the state changed. Cheap when nothing changed: one read of the
        tree size.

        When the store only grew (by at most ``CATCH_UP_MAX`` entries), the new entries are
        read in the same snapshot as the store's checkpoint and hashed onto the writer's
        right edge: adopted only if the root they give is the checkpoint's, under this
        log's signature (so the store's tree extends the one this writer holds);
        otherwise, or when it shrank, a full :meth:`reload` decides. ``publish=False`` (the
        sequencer, about to commit on top of it): the adopted checkpoint is not remembered
        and handed out here; the batch's newer one will be."""
        if self._stale:
            self.reload()
            return True
        mine = self._edge.size
        with self.storage.read() as rv:
            size = rv.tree_size()
            if size == mine:
                return False
            latest = rv.latest_checkpoint() if 0 < size - mine <= CATCH_UP_MAX else None
            entries = rv.entries(mine, size) if latest is not None else []
        if latest is None or not self._extend(size, latest, entries, publish):
            self.reload()
        return True

    def _extend(
        self, size: int, latest: tuple[int, bytes], entries: list[bytes], publish: bool
    ) -> bool:
        """:meth:`catch_up`'s incremental step: True if adopted, False (nothing changed
        but the edge, which the caller's reload rebuilds) if the store's checkpoint does
        not match the edge extended by ``entries``."""
        cp_size, note = latest
        if cp_size != size or len(entries) != size - self._edge.size:
            return False
        try:
            cp = self._open(note)
        except (FormatError, VerificationError):
            return False
        self._edge.append([hashlib.sha256(LEAF_PREFIX + e).digest() for e in entries])
        if cp.size != size or self._edge.root() != cp.root_hash:
            log.warning(
                "the store's checkpoint %d does not extend this writer's tree: reloading", size
            )
            self._stale = True
            return False
        # The other frontend stored these blobs; the root proves them: trusted, not written.
        for tl, ti, blob in self._edge.take_dirty():
            self.blobs.put(tl, ti, size, blob)
        for tl, ti, blob in self._edge.blobs():
            self.blobs.put(tl, ti, size, blob)
        self.storage.settle()  # read from the primary: on the standby too before it is used
        self._head = head = Published(size, note.decode())
        if publish:
            self.publish(head)
        return True

    # -- identity --------------------------------------------------------------------------

    def _check_identity(self, origin: bytes | None, vkey: bytes | None) -> None:
        if origin is None:
            self.storage.set_meta("origin", self.origin.encode())
            self.storage.set_meta("vkey", self.signer.vkey().encode())
            return
        if origin.decode() != self.origin:
            raise StorageError(f"store belongs to origin {origin.decode()!r}, not {self.origin!r}")
        if vkey is not None and vkey.decode() != self.signer.vkey():
            raise StorageError("store was signed with another key; refusing to continue")

    def _open(self, note: bytes | str) -> Checkpoint:
        n = open_note(note, [self._verifier])
        return Checkpoint.parse(n.text)

    def _edge_blob(self, level: int, index: int) -> bytes | None:
        """A stored blob for the writer's right edge, as of the store's tree size (the
        writer's head): none beyond that tree (no read), the blobs this writer committed
        or verified from memory, the others from the store (after a reload, at start)."""
        size = self._head.size
        if tile_width(size, level, index) == 0:
            return None
        cached = self.blobs.get(level, index, size)
        if cached is not None:
            return cached
        with self.storage.read() as rv:
            b = rv.blob(level, index)
            return None if b is None else bytes(b)

    @property
    def vkey(self) -> str:
        return self.signer.vkey()

    @property
    def latest(self) -> Published:
        return self._latest

    # -- write side (one thread) -----------------------------------------------------------

    def integrate(
        self,
        entries: list[bytes],
        publish: bool = True,
        leaf_hashes: list[bytes] | None = None,
        aux: Sequence[tuple[bytes, bytes | None]] = (),
        aux_fence: bytes | None = None,
    ) -> BatchResult:
        """Sequence, integrate and publish ``entries``; durable when this returns.

        Entries already in the log (same bytes) keep their original index; duplicates within
        the batch get one index.

        ``publish=False`` (the sequencer): the batch is committed and signed, but its
        checkpoint is neither remembered nor handed out; the caller must pass the result's
        checkpoint to :meth:`publish` before it acknowledges anything of the batch. Meanwhile
        the next batch may be integrated on top of it (the writer's head runs ahead of the
        published checkpoint by at most what the caller has not published yet).

        ``aux``: auxiliary records (:meth:`tlog.backend.Backend.put_aux`'s form) committed in
        the batch's own transaction (a store with ``aux_in_batch``); written alone when
        every entry is already in the log, or when there are no entries. ``aux_fence``: the
        writer fence they were staged under (:meth:`tlog.backend.Backend.claim_aux_writer`);
        :class:`tlog.backend.AuxFenced` (nothing written, nothing signed) if it was taken.
        """
        if aux and not self.storage.aux_in_batch:
            raise ValueError(f"a {self.storage.kind} store does not commit records in a batch")
        if self._stale:
            self.reload()  # raises while the store cannot be read: nothing is signed
        sha256 = hashlib.sha256
        # RFC 6962 leaf hashes, unless the caller computed them (``leaf_hashes``, trusted:
        # the sequencer's callers hash on their own thread, off this one).
        if leaf_hashes is not None and len(leaf_hashes) != len(entries):
            raise ValueError("one leaf hash per entry")
        hashes = leaf_hashes or [sha256(LEAF_PREFIX + e).digest() for e in entries]
        known: dict[bytes, int] = {}
        if not self.storage.dedup_on_commit:
            with self.storage.read() as rv:
                known = rv.indices_of(hashes)
        # A database checks the dedup index in the commit itself (no lookup round trip
        # first): if a hash is already stored, the commit wrote nothing and says where
        # those hashes are; the batch is rebuilt without them (bounded: each retry only
        # learns more stored hashes, and a store that moved is a CommitConflict).
        for attempt in range(3):
            try:
                return self._integrate(entries, hashes, known, publish, aux, aux_fence)
            except DuplicateLeaves as exc:
                if attempt == 2 or not exc.known.keys() - known.keys():
                    self._stale = True
                    self.reload()
                    raise CommitConflict(f"{exc}, again after rebuilding the batch") from None
                known.update(exc.known)
                log.info("%s: rebuilding the batch without them", exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _integrate(
        self,
        entries: list[bytes],
        hashes: list[bytes],
        known: dict[bytes, int],
        publish: bool,
        aux: Sequence[tuple[bytes, bytes | None]] = (),
        aux_fence: bytes | None = None,
    ) -> BatchResult:
        first = self._edge.size
        indices: list[int] = []
        dup: list[bool] = []
        new_entries: list[bytes] = []
        new_hashes: list[bytes] = []
        if not known and len(set(hashes)) == len(hashes):  # the common case: all new
            indices = list(range(first, first + len(entries)))
            dup = [False] * len(entries)
            new_entries, new_hashes = entries, hashes
        else:
            seen = dict(known)
            for e, h in zip(entries, hashes, strict=True):
                j = seen.get(h)
                if j is None:
                    j = seen[h] = first + len(new_entries)
                    new_entries.append(e)
                    new_hashes.append(h)
                    dup.append(False)
                else:
                    dup.append(True)
                indices.append(j)
        if not new_entries:
            if aux:
                self.storage.put_aux(aux, fence=aux_fence)
            if publish:
                self.publish(self._head)
            return BatchResult(indices, dup, hashes, self._head)
        if self.halted is not None:
            raise LogHalted(f"the log is not signing: {self.halted}")
        base = self._head
        try:
            self._edge.append(new_hashes)
            size = self._edge.size
            reader = self._edge.reader()
            root = reader.root(size)
            prev = Checkpoint.parse(parse_note(base.note).text)
            proof = reader.consistency_proof(prev.size, size) if prev.size else []
            note = self.signer.sign(Checkpoint(self.origin, size, root), prev, proof)
            dirty = self._edge.take_dirty()
            self.storage.commit_batch(
                BatchWrite(
                    first,
                    new_entries,
                    new_hashes,
                    dirty,
                    size,
                    note.encode(),
                    base.note.encode(),
                    aux,
                    aux_fence,
                )
            )
        except DuplicateLeaves:
            # Nothing was written and the store is still at ``base``: only the in-memory
            # edge moved. Rebuild it at ``first`` (from the blobs committed so far).
            self._edge = RightEdge(first, self._edge_blob)
            raise
        except AuxFenced as exc:
            # Another frontend took the SCIM writer fence (routine with SCIM writes on several
            # frontends: the submissions are staged again, so not a warning). The fence is
            # checked only once the compare-and-swap passed, and the transaction was rolled
            # back: the store is still at ``base``, as after DuplicateLeaves.
            log.info("commit refused, its SCIM records staged under a taken fence: %s", exc)
            self._edge = RightEdge(first, self._edge_blob)
            raise
        except CommitConflict as exc:
            # The store is not what this writer built on: another writer got there first (or
            # a put failed). Nothing was written; adopt what the store holds and acknowledge
            # nothing of this batch.
            log.warning("commit refused, reloading the log state from the store: %s", exc)
            self._stale = True
            self.reload()
            raise
        except CommitUnknown as exc:
            # The commit may or may not have happened: the signature is handed out only if
            # the store, read back after a reload, holds exactly this checkpoint.
            self._stale = True
            if not self._committed_after_all(size, note.encode()):
                log.error("commit outcome unknown and not found in the store: %s", exc)
                raise
            log.warning("commit outcome was unknown; the store holds it: acknowledged")
        except StorageReadOnlyInDoubt as exc:
            # The commit may be in the page cache only: what the store reads back is not
            # what the disk holds, so nothing is reloaded from it or signed until a restart.
            self._stale = True
            self._in_doubt = str(exc)
            self.halt(str(exc))
            raise
        except BaseException:
            # The in-memory edge may be ahead of the store: nothing is signed again before
            # the state is rebuilt from what is durable.
            self._stale = True
            raise
        for tl, ti, blob in dirty:  # durable now, and built here: trusted
            self.blobs.put(tl, ti, size, blob)
        # The right-edge blobs this batch did not change serve the new size too; without
        # this the proof of a new entry missed the cache whenever an upper stratum's blob
        # was untouched (most small batches) and went to the store and its verification.
        changed = {(tl, ti) for tl, ti, _ in dirty}
        for tl, ti, blob in self._edge.blobs(skip=changed):
            self.blobs.put(tl, ti, size, blob)
        self._head = head = Published(size, note)
        if publish:
            self.publish(head)
        return BatchResult(indices, dup, hashes, head)

    def publish(self, pub: Published) -> None:
        """Hand out ``pub`` (a committed checkpoint of :meth:`integrate`): remember it outside
        the store (fsynced) and only then make it the latest. Never sign without remembering:
        nothing signed reaches anyone (GET /checkpoint, a receipt) before both the store and
        the remembered file hold it. A newer checkpoint covers the older ones (consistency),
        so publishing only the newest of several batches is enough."""
        with self._publish_lock:
            if self.remembered is not None and pub.size > (self._remembered_size or 0):
                try:
                    self.remembered.write(pub.note)
                except OSError as exc:
                    self.remember_fault = f"the checkpoint cannot be remembered: {exc}"
                    raise
                self.remember_fault = None
                self._remembered_size = pub.size
            if pub.size > self._latest.size:
                self._latest = pub

    def _committed_after_all(self, size: int, note: bytes) -> bool:
        """After :class:`CommitUnknown`: reload; True if the store holds ``note`` at
        ``size`` (then this writer's state is that checkpoint's)."""
        try:
            self.reload()
            with self.storage.read() as rv:
                stored = rv.checkpoint(size)
            if stored == note:
                self.storage.settle()  # found on the primary: on the standby too?
        except StorageError as exc:
            log.error("cannot reload after a commit of unknown outcome: %s", exc)
            return False
        return stored == note

    # -- read side -------------------------------------------------------------------------
    #
    # Nothing is served unchecked: entries against their leaf hash in the tree, proofs and
    # tiles against the signed root of the tree size they are for, stored checkpoints
    # against the log's signature. A mismatch is a damaged store: StorageCorrupt (503 with a
    # JSON reason, logged CRITICAL), never a wrong answer. Verified roots and tiles are
    # cached (they are immutable), so hot reads pay a few hashes.

    def note_damage(self, kind: str) -> None:
        """Count a read that met a damaged record of ``kind`` (``GET /metrics``:
        ``tlog_store_damaged_reads_total{kind}``)."""
        with self._damage_lock:
            self.damaged_reads[kind] = self.damaged_reads.get(kind, 0) + 1

    def _corrupt(self, what: str) -> StorageCorrupt:
        log.critical("STORE DAMAGED, refusing to serve it: %s; run tlog fsck", what)
        first = what.split(" ", 1)[0]
        self.note_damage(_DAMAGE_KINDS.get(first, "tile"))
        return StorageCorrupt(f"the log's store is damaged ({what}); the operator is alerted")

    def _signed_root(self, size: int, rv: ReadView, note: bytes | None = None) -> bytes:
        """The root of the checkpoint this log signed at ``size`` (signature verified).

        With ``note`` (stored bytes about to be served), those exact bytes are verified.
        """
        cached = self._roots.get(size)
        if cached is not None and (note is None or note == cached[0]):
            return cached[1]
        if note is None:
            latest = self._latest
            note = latest.note.encode() if size == latest.size else rv.checkpoint(size)
            if note is None:
                raise NotFound(f"no checkpoint was published for tree size {size}")
        try:
            cp = self._open(note)
        except (FormatError, VerificationError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"stored checkpoint {size} does not verify: {exc}") from None
        if cp.size != size or cp.origin != self.origin:
            raise self._corrupt(f"stored checkpoint {size} is for another size or origin")
        if len(self._roots) >= 4096:
            self._roots.clear()
        self._roots[size] = (note, cp.root_hash)
        return cp.root_hash

    def checkpoint_note(self, size: int | None = None) -> Published:
        if size is None:
            return self._latest
        with self.storage.read() as rv:
            note = rv.checkpoint(size)
            if note is None:
                raise NotFound(f"no checkpoint was published for tree size {size}")
            self._signed_root(size, rv, note)  # these bytes verify (cached once per size)
        return Published(size, note.decode())

    # Served from memory (no storage, no per-request verification: BlobCache holds only
    # trusted blobs). None means "not all in memory": the caller runs the checked storage
    # method below (off the event loop), which adopts what it verified into the cache.

    def cached_checkpoint_note(self, size: int) -> Published | None:
        latest = self._latest
        if size == latest.size:
            return latest
        c = self._roots.get(size)  # a stored note whose signature was verified
        return None if c is None else Published(size, c[0].decode())

    def cached_inclusion_proof(
        self, index: int, size: int, leaf: bytes | None = None
    ) -> list[bytes] | None:
        if not 0 <= index < size:
            raise NotFound(f"index {index} is not below tree size {size}")
        # One reader per tree size, kept while the size is the one asked for: the receipts of
        # a group's events (one size, neighbouring indices) read each blob once and share the
        # proof's part above their fork. What it holds stays right for that size: a blob it
        # read serves the size (BlobCache), and a complete node never changes.
        memo = self._proof_reader
        if memo is None or memo[0] != size or memo[1].held() > PROOF_READER_BLOBS:
            memo = self._proof_reader = (
                size,
                NodeReader(self.blobs.getter(size), self._vranges, tails=True),
            )
        try:
            reader = memo[1]
            proof = reader.inclusion_proof(index, size)
            if leaf is not None and reader.node(0, index) != leaf:
                return None  # the checked path says what is wrong
        except _Miss:
            return None
        return proof

    def cached_consistency_proof(self, old_size: int, size: int) -> list[bytes] | None:
        try:
            return NodeReader(self.blobs.getter(size), self._vranges).consistency_proof(
                old_size, size
            )
        except _Miss:
            return None

    def cached_hash_tile(self, level: int, index: int, width: int, size: int) -> bytes | None:
        have = tile_width(size, level, index)
        if have == 0 or width > have:
            raise NotFound("no such tile at the published tree size")
        blob = self.blobs.get(level, index, size)
        return None if blob is None else blob[: width * HASH_SIZE]

    def drop_caches(self) -> None:
        """Forget every blob and range hash held in memory: later reads go to the store
        (and are checked again) as after a restart."""
        self.blobs = BlobCache(self.blobs.max_blobs)
        self._vranges = {}
        self._proof_reader = None
        self._ranges.clear()
        self._verified_tiles.clear()

    def _adopt(self, rv: ReadView, reader: NodeReader, size: int) -> None:
        """Check every blob ``reader`` read from the store as of ``size`` and cache it."""
        for (tl, ti), blob in reader.loaded():
            if self.blobs.get(tl, ti, size) is None:
                b = bytes(blob)
                if self._check_blob(rv, tl, ti, b, size):
                    self.blobs.put(tl, ti, size, b)

    def _check_blob(self, rv: ReadView, level: int, index: int, blob: bytes, size: int) -> bool:
        """Every node of a stored blob that is complete at ``size`` is right: its tile hashes
        lead to the signed root and each inner node is the hash of its two children."""
        width = tile_width(size, level, index)
        if width == 0:
            return False
        self._check_tile(rv, level, index, blob[: width * HASH_SIZE], size)
        for sub in range(1, TILE_HEIGHT):
            for p in range(width >> sub):
                lo = slot_offset(sub - 1, 2 * p)
                at = slot_offset(sub, p)
                want = node_hash(
                    blob[lo : lo + HASH_SIZE], blob[lo + HASH_SIZE : lo + 2 * HASH_SIZE]
                )
                if blob[at : at + HASH_SIZE] != want:
                    raise self._corrupt(f"tile {level}/{index}: inner node {sub}/{p} is wrong")
        return True

    def inclusion_proof(self, index: int, size: int, leaf: bytes | None = None) -> list[bytes]:
        """PATH(index, D[size]), verified against the signed root at ``size`` before it is
        returned; ``leaf``: the leaf hash the caller will pair it with (else the tree's)."""
        if not 0 <= index < size:
            raise NotFound(f"index {index} is not below tree size {size}")
        with self.storage.read() as rv:
            reader = NodeReader(rv.blob, self._ranges)
            try:
                proof = reader.inclusion_proof(index, size)
                stored_leaf = reader.node(0, index)
            except KeyError as exc:
                raise self._corrupt(f"tree node missing: {exc}") from None
            root = self._signed_root(size, rv)
            try:
                verify_inclusion(index, size, leaf or stored_leaf, proof, root)
            except VerificationError as exc:
                raise self._corrupt(f"inclusion proof {index}@{size} fails: {exc}") from None
            self._adopt(rv, reader, size)
        return proof

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        with self.storage.read() as rv:
            reader = NodeReader(rv.blob, self._ranges)
            try:
                proof = reader.consistency_proof(old_size, size)
                if not 0 < old_size < size:
                    return proof
                new_root = self._signed_root(size, rv)
                try:
                    old_root = self._signed_root(old_size, rv)
                except NotFound:  # no checkpoint at that size: the stored tree's root
                    old_root = reader.root(old_size)
            except KeyError as exc:
                raise self._corrupt(f"tree node missing: {exc}") from None
            try:
                verify_consistency(old_size, size, old_root, new_root, proof)
            except VerificationError as exc:
                raise self._corrupt(f"consistency proof {old_size}->{size} fails: {exc}") from None
            self._adopt(rv, reader, size)
        return proof

    def index_of(self, leaf: bytes) -> int | None:
        with self.storage.read() as rv:
            index = rv.index_of(leaf)
            if index is None:
                return None
            # The dedup index must point at that leaf in the tree (one blob read).
            blob = rv.blob(0, index >> 8)
            off = (index & 255) * HASH_SIZE
            if blob is None or bytes(blob[off : off + HASH_SIZE]) != leaf:
                if index >= rv.tree_size():
                    return index  # written after this snapshot's tree: not ours to judge
                raise self._corrupt(f"dedup index points leaf hash to the wrong index {index}")
            return index

    def entry(self, index: int) -> bytes:
        if index >= self._latest.size:
            raise NotFound(f"no entry at index {index}")
        with self.storage.read() as rv:
            e = rv.entry(index)
            blob = rv.blob(0, index >> 8)
            off = (index & 255) * HASH_SIZE
            stored = None if blob is None else bytes(blob[off : off + HASH_SIZE])
        if e is None:
            raise self._corrupt(f"entry {index} is missing")
        if stored != leaf_hash(e):
            raise self._corrupt(f"entry {index} does not match its leaf hash in the tree")
        return e

    def _check_tile(self, rv: ReadView, level: int, index: int, data: bytes, size: int) -> None:
        """Recompute ``data`` (the hashes of tile level/index) up to the signed root at size."""
        key = (level, index, len(data) // HASH_SIZE)
        if key in self._verified_tiles:
            return
        reader = NodeReader(rv.blob, self._ranges)
        root = self._signed_root(size, rv)
        hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        try:
            for k, j in perfect_subtrees(0, len(hashes)):
                layer = hashes[j << k : (j + 1) << k]
                while len(layer) > 1:
                    layer = [fold_perfect(layer[i : i + 2]) for i in range(0, len(layer), 2)]
                nlevel, nindex = TILE_HEIGHT * level + k, (index * TILE_WIDTH >> k) + j
                path = [reader.range_hash(a, b) for a, b in node_path_ranges(nlevel, nindex, size)]
                if root_from_node_path(nlevel, nindex, size, layer[0], path) != root:
                    raise self._corrupt(f"tile {level}/{index} does not lead to the signed root")
        except KeyError as exc:
            raise self._corrupt(f"tree node missing: {exc}") from None
        except VerificationError as exc:
            raise self._corrupt(f"tile {level}/{index}: {exc}") from None
        if len(self._verified_tiles) >= 1 << 16:
            self._verified_tiles.clear()
        self._verified_tiles.add(key)

    def hash_tile(self, level: int, index: int, width: int, size: int) -> bytes:
        """Tile bytes as of tree ``size``; width must not exceed what that size has."""
        have = tile_width(size, level, index)
        if have == 0 or width > have:
            raise NotFound("no such tile at the published tree size")
        with self.storage.read() as rv:
            blob = rv.blob(level, index)
            if blob is None or len(blob) < width * HASH_SIZE:
                raise self._corrupt(f"tile {level}/{index} is missing or short")
            data = bytes(blob[: width * HASH_SIZE])
            self._check_tile(rv, level, index, data, size)
            full = bytes(blob)
            if self._check_blob(rv, level, index, full, size):
                self.blobs.put(level, index, size, full)
        return data

    def entry_bundle(self, index: int, width: int, size: int) -> bytes:
        have = tile_width(size, 0, index)
        if have == 0 or width > have:
            raise NotFound("no such entry bundle at the published tree size")
        start = index * TILE_WIDTH
        with self.storage.read() as rv:
            entries = rv.entries(start, start + width)
            blob = rv.blob(0, index)
            if len(entries) != width or blob is None or len(blob) < width * HASH_SIZE:
                raise self._corrupt(f"entry bundle {index} is missing entries or hashes")
            hashes = bytes(blob[: width * HASH_SIZE])
            self._check_tile(rv, 0, index, hashes, size)
        if b"".join(leaf_hash(e) for e in entries) != hashes:
            raise self._corrupt(f"entry bundle {index} does not match its leaf hashes")
        return encode_entry_bundle(entries)

    def tlog_proof(self, index: int, size: int, note: str, leaf: bytes | None = None) -> str:
        proof = self.inclusion_proof(index, size, leaf)
        return TlogProof(index, tuple(proof), note).format()
