"""RFC 6962 / RFC 9162 Merkle tree hashing and proof verification (SHA-256).

Standard library only. Three separate concerns, as in transparency-dev/merkle:

* hashing: :func:`leaf_hash`, :func:`node_hash`;
* node selection: which subtrees a proof needs (:func:`inclusion_ranges`,
  :func:`consistency_ranges`, :func:`perfect_subtrees`), so that any storage (LMDB, tiles,
  memory) can serve the same proofs by reading those hashes;
* verification: :func:`verify_inclusion`, :func:`verify_consistency`, which raise
  :class:`VerificationError` and never return a "false".

Indices are 0-based; a range ``(start, end)`` means leaves ``start .. end-1``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "CompactRange",
    "LayerVisitor",
    "NodeVisitor",
    "VerificationError",
    "consistency_ranges",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "node_path_ranges",
    "perfect_subtrees",
    "root_from_inclusion_proof",
    "root_from_node_path",
    "root_of_range",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# RFC 6962 §2.1 domain separation, defined once: every leaf and node hash in the project
# (tlog.tree, tlog.log, client.tools.auditor, ...) is built with these.
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

_sha256 = hashlib.sha256


class VerificationError(Exception):
    """A proof, signature or commitment did not verify.

    Deliberately one type: callers should not branch on *why* a verification failed.
    """


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 §2.1: MTH({d0}) = SHA-256(0x00 || d0)."""
    return _sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: SHA-256(0x01 || left || right)."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _set_bits(n: int) -> list[int]:
    """The set bits of ``n``, highest first: the levels of a compact range's hashes."""
    return [k for k in range(n.bit_length() - 1, -1, -1) if n >> k & 1]


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


NodeVisitor = Callable[[int, int, bytes], None]
"""``visit(level, index, hash)``: a node that an append has just completed (level >= 1)."""

LayerVisitor = Callable[[int, int, list[bytes]], None]
"""``visit(level, first, hashes)``: the nodes ``first, first + 1, ...`` of ``level`` (>= 1)
that an append has just completed, in index order."""


class CompactRange:
    """The compact range of ``[0, size)``: the roots of its maximal perfect subtrees, left
    to right (one per set bit of ``size``), from which the tree grows and its root follows
    in O(log n) memory (transparency-dev/merkle's ``compact.Range`` with begin = 0).

    This is the one place where a growing tree is hashed. Whoever needs the inner nodes
    too passes a visitor: the auditor's :class:`client.tools.auditor.TileFrontier` a
    :data:`NodeVisitor` to :meth:`extend` (node by node), the log's tile store
    (:class:`tlog.tree.RightEdge`) a :data:`LayerVisitor` to :meth:`extend_layers` (a run
    of nodes per level, written into its tiles). If the visitor raises, the append stops
    half way and the range must be discarded.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of size {size} has {size.bit_count()} hashes")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("a compact range holds 32-byte hashes")
        self.size = size
        self.hashes = list(hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.hashes)

    def append(self, h: bytes, visit: NodeVisitor | None = None) -> None:
        """Add one leaf hash (amortised one node hash)."""
        self.extend((h,), visit)

    def extend(self, leaf_hashes: Iterable[bytes], visit: NodeVisitor | None = None) -> None:
        """Add leaf hashes in order; ``visit`` sees every node they complete, bottom up."""
        hashes = self.hashes
        pop, push = hashes.pop, hashes.append
        n = self.size
        # Two copies of the loop so that the common case pays no per-node test.
        if visit is None:
            for h in leaf_hashes:
                m = n
                while m & 1:
                    h = _sha256(NODE_PREFIX + pop() + h).digest()
                    m >>= 1
                push(h)
                n += 1
        else:
            for h in leaf_hashes:
                m, level = n, 0
                while m & 1:
                    h = _sha256(NODE_PREFIX + pop() + h).digest()
                    m >>= 1
                    level += 1
                    visit(level, m, h)
                push(h)
                n += 1
        self.size = n

    def extend_layers(self, leaf_hashes: Sequence[bytes], visit: LayerVisitor) -> None:
        """:meth:`extend`, hashed a level at a time: the same nodes and the same resulting
        range, but ``visit(level, first, hashes)`` gets each level's completed nodes as one
        run (indices ``first ..``), bottom up, so a tile store writes a whole run at once.
        One list comprehension of node hashes per level instead of a loop step and a
        visitor call per node: the bulk path of a writer (:class:`tlog.tree.RightEdge`)."""
        n0 = self.size
        n1 = n0 + len(leaf_hashes)
        if n1 == n0:
            return
        # The old range's node at each level of a set bit of n0 (hashes are highest first).
        old = dict(zip(_set_bits(n0), self.hashes, strict=True))
        new: dict[int, bytes] = {}
        layer, lo, level = list(leaf_hashes), n0, 0  # the new nodes [lo, lo + len) of level
        sha, prefix = _sha256, NODE_PREFIX
        while True:
            if n1 >> level & 1:  # the new range's node at this level: new, or the old one
                i = (n1 >> level) - 1 - lo
                new[level] = layer[i] if i >= 0 else old[level]
            first, end = lo >> 1, (lo + len(layer)) >> 1  # the parents this level completes
            if end <= first:
                break
            # The children of parents first..end-1; the first one's left child is the old
            # range's node when this level's new run starts at an odd index.
            kids = [old[level], *layer] if lo & 1 else layer
            layer = [
                sha(prefix + kids[i] + kids[i + 1]).digest() for i in range(0, 2 * (end - first), 2)
            ]
            level += 1
            lo = first
            visit(level, first, layer)
        for k in range(level + 1, n1.bit_length()):  # above: what n0 had (same bits)
            if n1 >> k & 1:
                new[k] = old[k]
        self.hashes = [new[k] for k in _set_bits(n1)]
        self.size = n1

    def root(self) -> bytes:
        """RFC 6962 MTH of the tree: the right-to-left fold of the range."""
        return fold_perfect(self.hashes) if self.hashes else EMPTY_ROOT


def root_of_range(hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (or of equal-height subtree hashes). Reference helper."""
    cr = CompactRange()
    cr.extend(hashes)
    return cr.root()


# --- node selection -------------------------------------------------------------------------


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose the range [start, end) into maximal perfect subtrees, left to right.

    Each item is ``(level, index)``: the subtree covering leaves
    ``index * 2**level .. (index + 1) * 2**level - 1``. Only valid for ranges that occur in
    RFC 6962 proofs (``start`` aligned to the largest power of two that fits), which is all
    this module produces. The hash of the range is the right-to-left fold of these with
    :func:`node_hash` (RFC 6962 splits at the largest power of two, so the right edge nests).
    """
    out: list[tuple[int, int]] = []
    while start < end:
        size = end - start
        level = size.bit_length() - 1
        # Alignment: the subtree must start at a multiple of its size.
        while start & ((1 << level) - 1):
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def fold_perfect(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of :func:`perfect_subtrees` (left to right) into the range hash."""
    node = hashes[-1]
    for h in reversed(hashes[:-1]):
        node = node_hash(h, node)
    return node


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtree ranges whose hashes form PATH(index, D[size]), leaf sibling first.

    RFC 6962 §2.1.1 / RFC 9162 §2.1.3.1. Raises ValueError unless 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The subtree ranges whose hashes form PROOF(old_size, D[new_size]).

    RFC 6962 §2.1.2 / RFC 9162 §2.1.4.1. Empty when the sizes are equal or old_size is 0.
    Raises ValueError if old_size > new_size or either is negative.
    """
    if old_size < 0 or new_size < old_size:
        raise ValueError(f"bad consistency sizes {old_size} -> {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    out.reverse()
    return out


def node_path_ranges(level: int, index: int, size: int) -> list[tuple[int, int]]:
    """The sibling ranges from the complete node ``(level, index)`` up to the root of a tree
    of ``size`` leaves, nearest first: the audit path of a subtree (e.g. a full tile).

    Raises ValueError unless the node's leaves ``index·2^level .. (index+1)·2^level - 1``
    all exist. Every complete aligned subtree is a node of the RFC 6962 tree, so this is the
    leaf path of its first leaf without the ``level`` siblings inside it.
    """
    if level < 0 or index < 0 or (index + 1) << level > size:
        raise ValueError(f"node ({level}, {index}) is not complete in a tree of size {size}")
    return inclusion_ranges(index << level, size)[level:]


def root_from_node_path(
    level: int, index: int, size: int, node: bytes, path: Sequence[bytes]
) -> bytes:
    """The root that the node ``(level, index)`` with hash ``node`` and its ``path`` (the
    hashes of :func:`node_path_ranges`) imply; VerificationError if the path is malformed."""
    try:
        ranges = node_path_ranges(level, index, size)
    except ValueError as exc:
        raise VerificationError(str(exc)) from None
    if len(path) != len(ranges):
        raise VerificationError(f"node path has {len(path)} hashes, want {len(ranges)}")
    _check_hash(node, "node hash")
    start = index << level
    h = node
    for (lo, _), sib in zip(ranges, path, strict=True):
        _check_hash(sib, "path hash")
        if lo < start:
            h = node_hash(sib, h)
            start = lo
        else:
            h = node_hash(h, sib)
    return h


def proof_from_ranges(
    ranges: Sequence[tuple[int, int]], node: Callable[[int, int], bytes]
) -> list[bytes]:
    """Turn ranges into hashes, given ``node(level, index)`` for perfect subtrees."""
    out = []
    for start, end in ranges:
        out.append(fold_perfect([node(lv, ix) for lv, ix in perfect_subtrees(start, end)]))
    return out


# --- verification ---------------------------------------------------------------------------


def _check_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise VerificationError(f"{what} is {len(h)} bytes, want {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 1-4 (with the exact proof length checked first).

    Returns the root the proof implies; raises VerificationError if it cannot imply one.
    """
    if not 0 <= index < size:
        raise VerificationError(f"index {index} not below tree size {size}")
    _check_hash(leaf, "leaf hash")
    # The proof length is a function of (index, size); Go rejects extra or missing hashes.
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    if len(proof) != inner + border:
        raise VerificationError(f"proof has {len(proof)} hashes, want {inner + border}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        _check_hash(p, "proof hash")
        if sn == 0:  # step 4.1
            raise VerificationError("proof too long")
        if fn & 1 or fn == sn:  # step 4.2
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # step 4.3
        sn >>= 1
    if sn != 0:  # step 5
        raise VerificationError("proof too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` with ``root``."""
    _check_hash(root, "root hash")
    got = root_from_inclusion_proof(index, size, leaf, proof)
    if not hmac.compare_digest(got, root):
        raise VerificationError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """RFC 9162 §2.1.4.2, with the edge cases of transparency-dev/merkle.

    * ``old_size == 0`` is an error ("consistency from the empty tree is meaningless"); a
      witness that must accept old size 0 special-cases it before calling this.
    * equal sizes need an empty proof and equal roots.
    """
    if old_size < 0 or new_size < old_size:
        raise VerificationError(f"new size {new_size} < old size {old_size}")
    if old_size == 0:
        raise VerificationError("consistency proof from the empty tree is meaningless")
    if old_size == new_size:
        if proof:
            raise VerificationError("sizes are equal but the proof is not empty")
        if not hmac.compare_digest(old_root, new_root):
            raise VerificationError("sizes are equal but the roots differ")
        return
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if not proof:  # step 1
        raise VerificationError("empty consistency proof")
    for p in proof:
        _check_hash(p, "proof hash")
    # Expected length (as in Go's proof.VerifyConsistency): shift past the common
    # right-aligned part, then inner + border nodes.
    shift = (old_size & -old_size).bit_length() - 1
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length() - shift
    border = bin((old_size - 1) >> (inner + shift)).count("1")
    start = 0 if old_size == 1 << shift else 1
    if len(proof) != start + inner + border:
        raise VerificationError(
            f"consistency proof has {len(proof)} hashes, want {start + inner + border}"
        )
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: old size is a power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise VerificationError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof too short")
    if not hmac.compare_digest(fr, old_root):
        raise VerificationError("consistency proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise VerificationError("consistency proof does not lead to the new root")
