""":class:`client.adapters.receipts.ReceiptVerifier` has two ways to prove a batch's receipts:
growing the compact range of the last verified tree by the batch's leaves (when they are all
the log appended since), and hash tiles (always possible). The fast one must give the same
verdict as the tiles on every input: honest batches pass both ways, and a lying answer (a
leaf hash changed, two swapped, a root that is not the tree's) fails both ways.

In memory: a tree of random leaves, its tiles served from it, checkpoints signed with a
test key.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.adapters.outbox import Receipt
from client.adapters.receipts import ReceiptVerifier
from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError, root_of_range
from client.formats.note import Ed25519Signer, FormatError, b64encode, sign_note
from client.formats.tiles import TILE_HEIGHT, Tile
from client.net.logclient import VerifiedCheckpoint, _verify_note

ORIGIN = "example.com/receipts-test"
SIGNER = Ed25519Signer(ORIGIN, bytes(range(32)))
VERIFIER = SIGNER.verifier()


def _leaf(i: int) -> bytes:
    return hashlib.sha256(b"leaf %d" % i).digest()


class Tree:
    """A log of leaf hashes, its tiles and its signed checkpoints; ``fetches`` counts tile
    reads."""

    def __init__(self, size: int) -> None:
        self.leaves = [_leaf(i) for i in range(size)]
        self.fetches = 0

    def grow(self, n: int) -> range:
        start = len(self.leaves)
        self.leaves += [_leaf(i) for i in range(start, start + n)]
        return range(start, start + n)

    def note(self, size: int | None = None, root: bytes | None = None) -> str:
        size = len(self.leaves) if size is None else size
        cp = Checkpoint(ORIGIN, size, root or root_of_range(self.leaves[:size]))
        return sign_note(cp.text(), [SIGNER])

    def tile(self, tile: Tile) -> bytes:
        self.fetches += 1
        span = 1 << (TILE_HEIGHT * tile.level)
        first = tile.index * 256
        out = []
        for j in range(first, first + tile.width):
            out.append(root_of_range(self.leaves[j * span : (j + 1) * span]))
        return b"".join(out)

    def receipts(self, indices: range, note: str, size: int) -> list[Receipt]:
        return [
            Receipt(f"e{i}", i, b64encode(self.leaves[i]), size, note, duplicate=False)
            for i in indices
        ]


def _verifier(tree: Tree, fast: bool) -> ReceiptVerifier:
    def verify_note(note: str) -> VerifiedCheckpoint:
        return _verify_note(note, VERIFIER, None)

    v = ReceiptVerifier(verify_note, tree.tile)
    if not fast:
        v._extends_edge = lambda *a: False  # type: ignore[method-assign]
    return v


def _verdict(v: ReceiptVerifier, receipts: list[Receipt], floor: int) -> bool:
    try:
        v.check(receipts, [r.eid for r in receipts], floor)
    except (VerificationError, FormatError):
        return False
    return True


LIES = ["none", "leaf", "swap", "root", "index"]


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 700),
    batches=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    lie=st.sampled_from(LIES),
    where=st.integers(0, 10**6),
)
def test_the_fast_path_gives_the_tiles_verdict(
    start: int, batches: list[int], lie: str, where: int
) -> None:
    verdicts: dict[bool, list[bool]] = {}
    for fast in (True, False):
        tree = Tree(start)
        v = _verifier(tree, fast)
        got = []
        for k, n in enumerate(batches):
            floor = v.size
            new = tree.grow(n)
            note = tree.note()
            rs = tree.receipts(new, note, len(tree.leaves))
            if k == len(batches) - 1 and lie != "none":
                i = where % n
                if lie == "leaf":
                    rs[i] = Receipt(rs[i].eid, rs[i].index, b64encode(_leaf(-1)), rs[i].tree_size,
                                    note)  # fmt: skip
                elif lie == "swap" and n > 1:
                    j = (i + 1) % n
                    a, b = rs[i], rs[j]
                    rs[i] = Receipt(a.eid, a.index, b.leaf_hash, a.tree_size, note)
                    rs[j] = Receipt(b.eid, b.index, a.leaf_hash, b.tree_size, note)
                elif lie == "root":
                    bad = tree.note(root=hashlib.sha256(b"not the root").digest())
                    rs = [Receipt(r.eid, r.index, r.leaf_hash, r.tree_size, bad) for r in rs]
                elif lie == "index" and n > 1:
                    rs[i] = Receipt(rs[i].eid, rs[(i + 1) % n].index, rs[i].leaf_hash,
                                    rs[i].tree_size, note)  # fmt: skip
            got.append(_verdict(v, rs, floor))
        verdicts[fast] = got
    assert verdicts[True] == verdicts[False]
    honest = lie == "none" or (lie in ("swap", "index") and batches[-1] == 1)
    assert verdicts[True] == [True] * (len(batches) - 1) + [honest]


def test_one_adapter_on_a_quiet_log_reads_no_tiles() -> None:
    """After the first batch, batches that are all the log appended are proven without a
    request; a batch with someone else's leaves in between reads tiles again."""
    tree = Tree(1000)
    v = _verifier(tree, True)
    new = tree.grow(10)
    note = tree.note()
    assert _verdict(v, tree.receipts(new, note, len(tree.leaves)), 0)
    first = tree.fetches
    assert first > 0  # the first batch: nothing known yet, tiles
    for n in (1, 5, 300, 2):
        floor = v.size
        new = tree.grow(n)
        note = tree.note()
        assert _verdict(v, tree.receipts(new, note, len(tree.leaves)), floor)
    assert tree.fetches == first
    tree.grow(3)  # another submitter's leaves
    floor = v.size
    new = tree.grow(4)
    note = tree.note()
    assert _verdict(v, tree.receipts(new, note, len(tree.leaves)), floor)
    assert tree.fetches > first


@pytest.mark.parametrize("fast", [True, False])
def test_a_rollback_is_refused_both_ways(fast: bool) -> None:
    tree = Tree(50)
    v = _verifier(tree, fast)
    new = tree.grow(5)
    note = tree.note()
    assert _verdict(v, tree.receipts(new, note, 55), 0)
    old = tree.note(40)
    with pytest.raises(VerificationError, match="rollback"):
        v.check(tree.receipts(range(30, 35), old, 40), [f"e{i}" for i in range(30, 35)], 55)
