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
from client.formats.merkle import VerificationError
from client.formats.note import FormatError, b64encode

from .receipt_tree import Tree, leaf_of, verifier_for


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
        v = verifier_for(tree, fast)
        got = []
        for k, n in enumerate(batches):
            floor = v.size
            new = tree.grow(n)
            note = tree.note()
            rs = tree.receipts(new, note, len(tree.leaves))
            if k == len(batches) - 1 and lie != "none":
                i = where % n
                if lie == "leaf":
                    rs[i] = Receipt(rs[i].eid, rs[i].index, b64encode(leaf_of(-1)), rs[i].tree_size,
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
    v = verifier_for(tree, True)
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
    v = verifier_for(tree, fast)
    new = tree.grow(5)
    note = tree.note()
    assert _verdict(v, tree.receipts(new, note, 55), 0)
    old = tree.note(40)
    with pytest.raises(VerificationError, match="rollback"):
        v.check(tree.receipts(range(30, 35), old, 40), [f"e{i}" for i in range(30, 35)], 55)
