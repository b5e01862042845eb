"""The Merkle tree as stored: stratum blobs that are tlog-tiles plus their inner levels.

Every node hash of the tree is stored exactly once, in the *stratum blob* of tile (L, N):
the tile's 256 hashes of tree level 8·L (the tlog-tiles hash tile, so serving
``tile/L/N[.p/W]`` is a prefix slice) followed by the hashes of tree levels 8·L+1 .. 8·L+7
above them (128, 64, ..., 2 slots). The hash of tree level 8·(L+1) lives in tile L+1.

Consequences:

* a proof needs O(log n) node reads and no re-hashing (each node is one slot);
* stored hashes are immutable once written (a node only exists when its subtree is
  complete), so proofs for every published size come from the same store;
* appends touch only the right-most blob of each level: O(1) amortised node hashes per entry
  and O(log n) memory for the right edge.

The node-selection maths (which nodes a proof needs) is :mod:`client.formats.merkle`; this module
only reads and writes hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

from client.formats.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    LayerVisitor,
    consistency_ranges,
    fold_perfect,
    perfect_subtrees,
)
from client.formats.tiles import TILE_HEIGHT, TILE_WIDTH

__all__ = ["BLOB_SIZE", "NodeReader", "RightEdge", "slot_offset"]

# Slots per blob: 256 + 128 + ... + 2 (levels 0..7 inside the stratum).
BLOB_SLOTS = 2 * TILE_WIDTH - 2
BLOB_SIZE = BLOB_SLOTS * HASH_SIZE  # 16,320 bytes: with LMDB's page header, 4 pages exactly
_LAYER_START = [(2 * TILE_WIDTH - (2 * TILE_WIDTH >> k)) for k in range(TILE_HEIGHT)]

RANGE_CACHE_SIZE = 4096

BlobGetter = Callable[[int, int], "bytes | memoryview | bytearray | None"]


def slot_offset(sublevel: int, position: int) -> int:
    """Byte offset of the node at ``sublevel`` (0..7) and in-tile ``position`` in a blob."""
    return (_LAYER_START[sublevel] + position) * HASH_SIZE


def locate(level: int, index: int) -> tuple[int, int, int]:
    """(tile level, tile index, byte offset) of tree node (level, index)."""
    tlevel, sub = divmod(level, TILE_HEIGHT)
    per_tile = TILE_WIDTH >> sub
    return tlevel, index // per_tile, slot_offset(sub, index % per_tile)


class NodeReader:
    """Reads node hashes through a blob getter; caches blobs for its lifetime (one request)."""

    __slots__ = ("_cache", "_get", "_ranges", "_tails")

    def __init__(
        self,
        get_blob: BlobGetter,
        range_cache: dict[tuple[int, int], bytes] | None = None,
        *,
        tails: bool = False,
    ) -> None:
        self._get = get_blob
        self._cache: dict[tuple[int, int], bytes | memoryview | bytearray] = {}
        # Hashes of composite (right-edge) ranges are immutable and shared by every proof at
        # the same size: a caller may pass a cache that outlives this reader.
        self._ranges = range_cache
        # ``tails``: remember each inclusion proof's part above its fork, which the proofs of
        # every index under the same fork share (a group's events, answered one by one at
        # the same tree size): :meth:`inclusion_proof` then reads only the siblings below it.
        self._tails: dict[tuple[int, int, int], list[bytes]] | None = {} if tails else None

    def node(self, level: int, index: int) -> bytes:
        tl = level >> 3
        sub = level & 7
        ti = index >> (TILE_HEIGHT - sub)
        off = (_LAYER_START[sub] + (index & ((TILE_WIDTH >> sub) - 1))) << 5
        key = (tl, ti)
        blob = self._cache.get(key)
        if blob is None:
            blob = self._get(tl, ti)
            if blob is None:
                raise KeyError(f"missing tile {tl}/{ti}")
            self._cache[key] = blob
        h = bytes(blob[off : off + HASH_SIZE])
        if len(h) != HASH_SIZE:
            raise KeyError(f"short tile {tl}/{ti}")
        return h

    def held(self) -> int:
        """How many blobs this reader holds (read so far)."""
        return len(self._cache)

    def loaded(self) -> list[tuple[tuple[int, int], bytes | memoryview | bytearray]]:
        """The blobs this reader has read so far, by (tile level, tile index)."""
        return list(self._cache.items())

    def range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range that RFC 6962 proofs use."""
        cache = self._ranges
        if cache is not None:
            h = cache.get((start, end))
            if h is not None:
                return h
        nodes = perfect_subtrees(start, end)
        if len(nodes) == 1:
            return self.node(*nodes[0])
        h = fold_perfect([self.node(lv, ix) for lv, ix in nodes])
        if cache is not None:
            if len(cache) >= RANGE_CACHE_SIZE:
                cache.clear()
            cache[(start, end)] = h
        return h

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else self.range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]), leaf sibling first, in O(log n) node reads.

        Same result as the ranges of :func:`client.formats.merkle.inclusion_ranges`, computed
        directly: below the *fork* (where the paths to ``index`` and to ``size`` part) every
        sibling is a complete node; right of the fork is one composite (ephemeral) node; left
        of it, the complete subtrees covering ``[0, begin)``, nearest first.
        """
        if not 0 <= index < size:
            raise ValueError(f"index {index} out of range for tree size {size}")
        node = self.node
        inner = (index ^ size).bit_length() - 1
        # Siblings below the fork, read straight from each stratum blob (the hot loop): all
        # eight levels of a stratum come from one blob, so one lookup per eight hashes.
        proof: list[bytes] = []
        append = proof.append
        for tl in range((inner + TILE_HEIGHT - 1) // TILE_HEIGHT):
            pos = index >> (TILE_HEIGHT * tl)  # position at tree level 8·tl
            key = (tl, pos >> TILE_HEIGHT)
            blob = self._cache.get(key)
            if blob is None:
                blob = self._get(*key)
                if blob is None:
                    raise KeyError(f"missing tile {key}")
                self._cache[key] = blob
            for sub in range(min(TILE_HEIGHT, inner - TILE_HEIGHT * tl)):
                sib = ((pos >> sub) ^ 1) & ((TILE_WIDTH >> sub) - 1)
                off = (_LAYER_START[sub] + sib) << 5
                h = bytes(blob[off : off + HASH_SIZE])
                if len(h) != HASH_SIZE:
                    raise KeyError(f"short tile {key}")
                append(h)
        begin = (index >> inner) << inner
        tails = self._tails
        if tails is not None:
            tail = tails.get((begin, inner, size))
            if tail is not None:
                proof += tail
                return proof
        above = len(proof)
        end = begin + (1 << inner)
        if end < size:
            proof.append(self.range_hash(end, size))
        # Complete subtrees left of the fork: one per set bit of begin, nearest first.
        bits = begin
        while bits:
            level = (bits & -bits).bit_length() - 1
            proof.append(node(level, (bits >> level) - 1))
            bits &= bits - 1
        if tails is not None:
            if len(tails) >= RANGE_CACHE_SIZE:
                tails.clear()
            tails[(begin, inner, size)] = proof[above:]
        return proof

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return [self.range_hash(s, e) for s, e in consistency_ranges(old_size, new_size)]


class RightEdge:
    """The writable right edge of the tree: the right-most blob of every tile level.

    The hashing is :class:`client.formats.merkle.CompactRange`'s; this class is its visitor,
    writing every node the range completes into the node's slot. ``take_dirty`` hands the
    changed blobs to the storage commit. If a commit fails, the owner must discard this
    object and rebuild it from storage (it does not roll back).
    """

    def __init__(self, size: int, get_blob: BlobGetter) -> None:
        self._get = get_blob
        self._blobs: dict[tuple[int, int], bytearray] = {}
        self._dirty: set[tuple[int, int]] = set()
        # The compact range of the stored tree: the roots of its perfect subtrees, each of
        # them a complete (so stored) node; one reader, so each blob is read once.
        stored = NodeReader(get_blob)
        self._range = CompactRange(
            size, [stored.node(level, index) for level, index in perfect_subtrees(0, size)]
        )

    @property
    def size(self) -> int:
        return self._range.size

    def _blob(self, tlevel: int, tindex: int) -> bytearray:
        key = (tlevel, tindex)
        b = self._blobs.get(key)
        if b is None:
            stored = self._get(tlevel, tindex)
            b = bytearray(stored) if stored is not None else bytearray(BLOB_SIZE)
            if len(b) != BLOB_SIZE:
                raise ValueError(f"stored tile {tlevel}/{tindex} has the wrong size")
            self._blobs[key] = b
        return b

    def append(self, leaf_hashes: Sequence[bytes]) -> None:
        """Hash ``leaf_hashes`` in at the right edge (amortised O(1) node hashes each)."""
        i, n = 0, len(leaf_hashes)
        while i < n:
            # The leaves of one tile go into its blob in one write; the range then hashes
            # them in and the visitor stores each node it completes.
            pos = self._range.size
            tindex = pos >> TILE_HEIGHT
            take = min(n - i, TILE_WIDTH - (pos & (TILE_WIDTH - 1)))
            chunk = leaf_hashes[i : i + take]
            off = (pos & (TILE_WIDTH - 1)) * HASH_SIZE
            leaves = b"".join(chunk)
            if len(leaves) != take * HASH_SIZE:
                raise ValueError("a leaf hash is 32 bytes")
            tile = self._blob(0, tindex)
            tile[off : off + take * HASH_SIZE] = leaves
            self._dirty.add((0, tindex))
            self._range.extend_layers(chunk, self._tile_visitor(tile))
            i += take

    def _tile_visitor(self, tile: bytearray) -> LayerVisitor:
        """The visitor for one level-0 tile's leaves: each level 1-7 run of nodes (most
        nodes) goes straight into that tile's blob in one write, already marked dirty;
        higher levels (the tile's root and above, a few) to :meth:`_store_node`."""
        store_node = self._store_node
        layer = _LAYER_START

        def visit(level: int, first: int, hashes: list[bytes]) -> None:
            if level < TILE_HEIGHT:
                off = (layer[level] + (first & ((TILE_WIDTH >> level) - 1))) << 5
                tile[off : off + len(hashes) * HASH_SIZE] = b"".join(hashes)
            else:
                for j, h in enumerate(hashes):
                    store_node(level, first + j, h)

        return visit

    def _store_node(self, level: int, index: int, h: bytes) -> None:
        tl, sub = level >> 3, level & 7
        key = (tl, index >> (TILE_HEIGHT - sub))
        b = self._blobs.get(key)
        if b is None:
            b = self._blob(*key)
        off = (_LAYER_START[sub] + (index & ((TILE_WIDTH >> sub) - 1))) << 5
        b[off : off + HASH_SIZE] = h
        self._dirty.add(key)

    def node(self, level: int, index: int) -> bytes:
        tl, ti, off = locate(level, index)
        b = self._blobs.get((tl, ti))
        if b is None:
            stored = self._get(tl, ti)
            if stored is None:
                raise KeyError(f"missing tile {tl}/{ti}")
            return bytes(stored[off : off + HASH_SIZE])
        return bytes(b[off : off + HASH_SIZE])

    def reader(self) -> NodeReader:
        """A node reader that sees the uncommitted appends."""
        return NodeReader(self._get_for_reader)

    def _get_for_reader(self, tl: int, ti: int) -> bytes | memoryview | bytearray | None:
        b = self._blobs.get((tl, ti))
        return b if b is not None else self._get(tl, ti)

    def root(self) -> bytes:
        return self._range.root()

    def blobs(self, skip: Container[tuple[int, int]] = ()) -> list[tuple[int, int, bytes]]:
        """The blobs currently held (the right edge) but those in ``skip``, as immutable
        copies."""
        return [
            (tl, ti, bytes(b))
            for (tl, ti), b in sorted(self._blobs.items())
            if (tl, ti) not in skip
        ]

    def take_dirty(self) -> list[tuple[int, int, bytes]]:
        """The changed blobs since the last call, and forget the blobs left of the edge."""
        out = [(tl, ti, bytes(self._blobs[(tl, ti)])) for tl, ti in sorted(self._dirty)]
        self._dirty.clear()
        # Keep only the right-most blob per tile level (memory stays O(log n)).
        keep: dict[int, int] = {}
        for tl, ti in self._blobs:
            keep[tl] = max(keep.get(tl, -1), ti)
        self._blobs = {k: v for k, v in self._blobs.items() if keep[k[0]] == k[1]}
        return out


def tile_width(size: int, tlevel: int, tindex: int) -> int:
    """How many hashes tile (tlevel, tindex) holds in a tree of ``size`` (0 if none)."""
    count = size >> (TILE_HEIGHT * tlevel)
    return max(0, min(TILE_WIDTH, count - tindex * TILE_WIDTH))
