"""Hypothesis properties: client.formats.merkle against the naive recursive oracle (oracle.py).

For random tree sizes (1..2000), indices and size pairs:

* node selection + hashing (``proof_from_ranges`` over ``inclusion_ranges`` /
  ``consistency_ranges``) gives exactly the oracle's PATH / PROOF, and ``root_of_range`` the
  oracle's MTH;
* the verifiers accept those proofs;
* the verifiers reject the same proof with any one hash bit flipped, a wrong index, a wrong
  size, one hash added or one hash missing.

About "wrong size": the verifier cannot know the size on its own, so the claim checked is the
honest one for the other size, ``(index, other_size, MTH(D[other_size]))``: the proof for
``size`` must not pass for it (unless the oracle says the two proofs are the same list).
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.formats.merkle import (
    EMPTY_ROOT,
    CompactRange,
    VerificationError,
    consistency_ranges,
    fold_perfect,
    inclusion_ranges,
    leaf_hash,
    perfect_subtrees,
    proof_from_ranges,
    root_from_inclusion_proof,
    root_of_range,
    verify_consistency,
    verify_inclusion,
)
from tests.formats import oracle

MAX_SIZE = 2000
LEAVES = [f"leaf {i}".encode() for i in range(MAX_SIZE)]
LEAF_HASHES = [leaf_hash(d) for d in LEAVES]
PROPERTY = settings(max_examples=200, deadline=None)

# Sizes near powers of two are where the RFC 6962 recursion changes shape.
EDGE_SIZES = sorted(
    {v for k in range(12) for v in (2**k - 1, 2**k, 2**k + 1) if 1 <= v <= MAX_SIZE} | {MAX_SIZE}
)
sizes = st.one_of(st.sampled_from(EDGE_SIZES), st.integers(1, MAX_SIZE))


@cache
def mth(n: int) -> bytes:
    return oracle.mth(LEAVES[:n])


@cache
def node(level: int, index: int) -> bytes:
    """``node(level, index)`` for proof_from_ranges, from the oracle."""
    chunk = LEAVES[index << level : (index + 1) << level]
    if len(chunk) != 1 << level:
        raise AssertionError(f"proof_from_ranges asked for a non-perfect subtree {level, index}")
    return oracle.mth(chunk)


@cache
def oracle_path(index: int, size: int) -> list[bytes]:
    return oracle.path(index, LEAVES[:size])


@cache
def oracle_proof(old: int, new: int) -> list[bytes]:
    return oracle.proof(old, LEAVES[:new])


def flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


def rejects_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        verify_inclusion(index, size, leaf, proof, root)
    except VerificationError:
        return True
    return False


def rejects_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    try:
        verify_consistency(old, new, old_root, new_root, proof)
    except VerificationError:
        return True
    return False


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    index = draw(st.one_of(st.sampled_from([0, size - 1, size // 2]), st.integers(0, size - 1)))
    return size, index


@st.composite
def size_pair(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(sizes)
    old = draw(st.one_of(st.sampled_from([1, new, new - 1 or 1]), st.integers(1, new)))
    return old, new


# --- the oracle itself ---------------------------------------------------------------------


def test_oracle_small_trees_by_hand() -> None:
    a, b, c = (oracle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert oracle.mth([]) == EMPTY_ROOT
    assert oracle.mth([b"a"]) == a
    assert oracle.mth([b"a", b"b", b"c"]) == oracle.node_hash(oracle.node_hash(a, b), c)
    assert oracle.path(2, [b"a", b"b", b"c"]) == [oracle.node_hash(a, b)]
    assert oracle.proof(2, [b"a", b"b", b"c"]) == [c]
    assert oracle.proof(1, [b"a", b"b", b"c"]) == [b, c]
    assert [oracle.split_point(n) for n in (2, 3, 4, 5, 8, 9)] == [1, 2, 2, 4, 4, 8]


# --- roots ---------------------------------------------------------------------------------


@PROPERTY
@given(size=sizes)
def test_root_of_range_is_mth(size: int) -> None:
    want = mth(size)
    assert root_of_range(LEAF_HASHES[:size]) == want
    assert proof_from_ranges([(0, size)], node) == [want]
    subtrees = perfect_subtrees(0, size)
    # The perfect subtrees of [0, n) are the binary digits of n, largest first.
    assert [1 << level for level, _ in subtrees] == [
        1 << b for b in reversed(range(size.bit_length())) if size >> b & 1
    ]
    assert fold_perfect([node(lv, ix) for lv, ix in subtrees]) == want


def test_root_of_empty_range() -> None:
    assert root_of_range([]) == EMPTY_ROOT == oracle.mth([])


def stored_range(start: int) -> CompactRange:
    """The compact range of [0, start) as a store keeps it (its perfect subtrees' hashes)."""
    return CompactRange(start, [node(lv, ix) for lv, ix in perfect_subtrees(0, start)])


def nodes_completed(start: int, size: int) -> list[tuple[int, int]]:
    """(level, index) of every node of level >= 1 of a tree of ``size`` leaves that is
    complete there but was not after the first ``start`` leaves, in order."""
    return [
        (level, index)
        for level in range(1, size.bit_length())
        for index in range(size >> level)
        if (index + 1) << level > start
    ]


def assert_range_of(cr: CompactRange, size: int) -> None:
    """``cr`` is the compact range of [0, size): its size, root and hashes, by the oracle."""
    assert cr.size == size and cr.root() == mth(size)
    assert cr.hashes == [node(lv, ix) for lv, ix in perfect_subtrees(0, size)]


@PROPERTY
@given(size=sizes, data=st.data())
def test_compact_range_visits_every_node_once(size: int, data: st.DataObject) -> None:
    # Grown in random chunks from a random stored prefix (as the log and the auditor do),
    # the range visits each complete node of level >= 1 exactly once, with the oracle's
    # hash, and its root and hashes are those of [0, size).
    start = data.draw(st.integers(0, size), label="start")
    begin = stored_range(start)
    seen: list[tuple[int, int]] = []

    def visit(level: int, index: int, h: bytes) -> None:
        assert h == node(level, index)
        seen.append((level, index))

    cr = begin.copy()
    pos = start
    while pos < size:
        step = data.draw(st.integers(1, size - pos), label="step")
        cr.extend(LEAF_HASHES[pos : pos + step], visit)
        pos += step
    assert sorted(seen) == nodes_completed(start, size)
    assert_range_of(cr, size)
    assert begin.size == start  # copy() shares nothing


@PROPERTY
@given(size=sizes, data=st.data())
def test_compact_range_layers_are_the_same_nodes(size: int, data: st.DataObject) -> None:
    # extend_layers (the writer's bulk path) against the oracle, as above: every complete
    # node of level >= 1 once, in runs of consecutive indices per level, bottom up within
    # each call, and the same range afterwards; no leaves change nothing.
    start = data.draw(st.integers(0, size), label="start")
    cr = stored_range(start)
    seen: list[tuple[int, int]] = []
    levels: list[int] = []  # the levels of the runs of one call

    def visit(level: int, first: int, hashes: list[bytes]) -> None:
        assert hashes, "an empty run"
        assert level == len(levels) + 1  # one run per level, bottom up, none skipped
        levels.append(level)
        for j, h in enumerate(hashes):
            assert h == node(level, first + j), (level, first + j)
            seen.append((level, first + j))

    cr.extend_layers([], visit)
    assert cr.size == start and not seen
    pos = start
    while pos < size:
        step = data.draw(st.integers(1, size - pos), label="step")
        levels.clear()
        cr.extend_layers(LEAF_HASHES[pos : pos + step], visit)
        pos += step
    assert sorted(seen) == nodes_completed(start, size)
    assert_range_of(cr, size)


@pytest.mark.parametrize("size,count", [(0, 1), (1, 0), (3, 1), (-1, 0)])
def test_compact_range_rejects_a_wrong_number_of_hashes(size: int, count: int) -> None:
    with pytest.raises(ValueError):
        CompactRange(size, [bytes(32)] * count)


def test_compact_range_rejects_short_hashes() -> None:
    with pytest.raises(ValueError):
        CompactRange(1, [bytes(31)])


# --- inclusion -----------------------------------------------------------------------------


@PROPERTY
@given(case=size_and_index(), data=st.data())
def test_inclusion_proof_matches_oracle_and_verifies(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    leaf, root = LEAF_HASHES[index], mth(size)
    proof = proof_from_ranges(inclusion_ranges(index, size), node)
    assert proof == oracle_path(index, size)
    verify_inclusion(index, size, leaf, proof, root)
    assert root_from_inclusion_proof(index, size, leaf, proof) == root

    bit = data.draw(st.integers(0, 255), label="bit")
    for j in range(len(proof)):
        bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
        assert rejects_inclusion(index, size, leaf, bad, root), f"bit {bit} of hash {j}"
    assert rejects_inclusion(index, size, flip(leaf, bit), proof, root)
    assert rejects_inclusion(index, size, leaf, proof, flip(root, bit))


@PROPERTY
@given(case=size_and_index(), data=st.data())
def test_inclusion_rejects_wrong_index_and_size(case: tuple[int, int], data: st.DataObject) -> None:
    size, index = case
    leaf, root = LEAF_HASHES[index], mth(size)
    proof = oracle_path(index, size)

    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="index")
        assert rejects_inclusion(other, size, leaf, proof, root)
        assert rejects_inclusion(other, size, LEAF_HASHES[other], proof, root)
    for out_of_range in (size, size + 1, -1):
        assert rejects_inclusion(out_of_range, size, leaf, proof, root)

    other_size = data.draw(
        st.integers(index + 1, MAX_SIZE).filter(lambda n: n != size), label="size"
    )
    if proof != oracle_path(index, other_size):
        assert rejects_inclusion(index, other_size, leaf, proof, mth(other_size))
    assert rejects_inclusion(index, 0, leaf, proof, root)


@PROPERTY
@given(case=size_and_index(), data=st.data())
def test_inclusion_rejects_extra_or_missing_hash(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    leaf, root = LEAF_HASHES[index], mth(size)
    proof = oracle_path(index, size)

    at = data.draw(st.integers(0, len(proof)), label="insert at")
    junk = data.draw(st.sampled_from([root, leaf, b"\x00" * 32, LEAF_HASHES[-1]]), label="junk")
    assert rejects_inclusion(index, size, leaf, [*proof[:at], junk, *proof[at:]], root)
    assert rejects_inclusion(index, size, leaf, [*proof, root], root)
    if proof:
        drop = data.draw(st.integers(0, len(proof) - 1), label="drop")
        assert rejects_inclusion(index, size, leaf, proof[:drop] + proof[drop + 1 :], root)
        for short_or_long in (proof[drop][:31], proof[drop] + b"\x00"):
            bad = [*proof[:drop], short_or_long, *proof[drop + 1 :]]
            assert rejects_inclusion(index, size, leaf, bad, root)


# --- consistency ---------------------------------------------------------------------------


@PROPERTY
@given(case=size_pair(), data=st.data())
def test_consistency_proof_matches_oracle_and_verifies(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old, new = case
    old_root, new_root = mth(old), mth(new)
    proof = proof_from_ranges(consistency_ranges(old, new), node)
    assert proof == oracle_proof(old, new)
    verify_consistency(old, new, old_root, new_root, proof)

    bit = data.draw(st.integers(0, 255), label="bit")
    for j in range(len(proof)):
        bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
        assert rejects_consistency(old, new, old_root, new_root, bad), f"bit {bit} of hash {j}"
    assert rejects_consistency(old, new, flip(old_root, bit), new_root, proof)
    assert rejects_consistency(old, new, old_root, flip(new_root, bit), proof)
    if old != new:
        assert rejects_consistency(old, new, new_root, old_root, proof)


@PROPERTY
@given(case=size_pair(), data=st.data())
def test_consistency_rejects_wrong_sizes(case: tuple[int, int], data: st.DataObject) -> None:
    old, new = case
    proof = oracle_proof(old, new)

    other_old = data.draw(st.integers(1, new).filter(lambda m: m != old), label="old")
    if new > 1 and proof != oracle_proof(other_old, new):
        assert rejects_consistency(other_old, new, mth(other_old), mth(new), proof)
    other_new = data.draw(st.integers(old, MAX_SIZE).filter(lambda n: n != new), label="new")
    if proof != oracle_proof(old, other_new):
        assert rejects_consistency(old, other_new, mth(old), mth(other_new), proof)
    # Size 0 is the caller's special case (tlog-witness); the verifier always refuses it.
    assert rejects_consistency(0, new, EMPTY_ROOT, mth(new), proof)
    assert rejects_consistency(new, old, mth(new), mth(old), proof) or old == new


@PROPERTY
@given(case=size_pair(), data=st.data())
def test_consistency_rejects_extra_or_missing_hash(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old, new = case
    old_root, new_root = mth(old), mth(new)
    proof = oracle_proof(old, new)

    at = data.draw(st.integers(0, len(proof)), label="insert at")
    junk = data.draw(st.sampled_from([old_root, new_root, b"\x00" * 32]), label="junk")
    bad = [*proof[:at], junk, *proof[at:]]
    assert rejects_consistency(old, new, old_root, new_root, bad)
    if proof:
        drop = data.draw(st.integers(0, len(proof) - 1), label="drop")
        assert rejects_consistency(old, new, old_root, new_root, proof[:drop] + proof[drop + 1 :])
        for short_or_long in (proof[drop][:31], proof[drop] + b"\x00"):
            bad = [*proof[:drop], short_or_long, *proof[drop + 1 :]]
            assert rejects_consistency(old, new, old_root, new_root, bad)


# --- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize("index,size", [(0, 0), (1, 1), (-1, 5), (5, 5)])
def test_inclusion_ranges_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ValueError):
        inclusion_ranges(index, size)


@pytest.mark.parametrize("old,new", [(2, 1), (-1, 3), (-2, -1)])
def test_consistency_ranges_bad_sizes(old: int, new: int) -> None:
    with pytest.raises(ValueError):
        consistency_ranges(old, new)


@pytest.mark.parametrize("old,new", [(0, 0), (0, 7), (5, 5)])
def test_consistency_ranges_empty(old: int, new: int) -> None:
    assert consistency_ranges(old, new) == []


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_hash_lengths_are_exact(length: int) -> None:
    leaf, root, proof = LEAF_HASHES[0], mth(2), oracle_path(0, 2)
    bad = b"\x07" * length
    with pytest.raises(VerificationError):
        verify_inclusion(0, 2, bad, proof, root)
    with pytest.raises(VerificationError):
        verify_inclusion(0, 2, leaf, [bad], root)
    with pytest.raises(VerificationError):
        verify_inclusion(0, 2, leaf, proof, bad)
    cproof = oracle_proof(1, 3)
    with pytest.raises(VerificationError):
        verify_consistency(1, 3, bad, mth(3), cproof)
    with pytest.raises(VerificationError):
        verify_consistency(1, 3, mth(1), bad, cproof)
    with pytest.raises(VerificationError):
        verify_consistency(1, 3, mth(1), mth(3), [cproof[0], bad])
