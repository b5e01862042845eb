""":class:`client.adapters.receipts.ReceiptVerifier` skips the consistency proof of two
checkpoints that its fast path already proved by growing a compact range. That memo must
name both trees (sizes *and* roots): keyed on the old size alone, a forged checkpoint of that
size (a fork signed by the log, answered as an older tree: ``claimed_latest=False``) was
taken as proven once the tracker had forgotten the honest root of that size (its memory of
sizes is bounded), and the receipts in it were accepted.
"""

from __future__ import annotations

import hashlib

import pytest

import client.net.core
from client.adapters.outbox import Receipt
from client.formats.merkle import VerificationError
from client.formats.note import b64encode

from .receipt_tree import Tree, verifier_for


def test_a_fork_of_a_fast_proven_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.net.core, "MAX_KNOWN_SIZES", 2)
    tree = Tree(10)
    v = verifier_for(tree, True)
    for n in (1, 1, 1):  # the first by tiles, then 11 -> 12 and 12 -> 13 by the fast path
        floor = v.size
        new = tree.grow(n)
        note = tree.note()
        v.check(tree.receipts(new, note, len(tree.leaves)), [f"e{i}" for i in new], floor)
    assert v.size == 13

    # A fork from index 11 on, its tiles served from now on.
    fork = Tree(11)
    fork.leaves += [hashlib.sha256(b"forged %d" % i).digest() for i in (11, 12)]
    v._fetch_tile = fork.tile
    forged = fork.note(12)
    r = Receipt("x", 11, b64encode(fork.leaves[11]), 12, forged, duplicate=True)
    with pytest.raises(VerificationError):
        v.check([r], ["x"], v.size, claimed_latest=False)
