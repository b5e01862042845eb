"""An in-memory log for the receipt verifier's tests: a tree of leaf hashes, its tiles served
from it, checkpoints signed with a test key."""

from __future__ import annotations

import hashlib

from client.adapters.outbox import Receipt
from client.adapters.receipts import ReceiptVerifier
from client.formats.checkpoint import Checkpoint
from client.formats.merkle import root_of_range
from client.formats.note import Ed25519Signer, b64encode, sign_note
from client.formats.tiles import TILE_HEIGHT, Tile
from client.net.logclient import VerifiedCheckpoint, _verify_note

ORIGIN = "example.com/receipts-test"
SIGNER = Ed25519Signer(ORIGIN, bytes(range(32)))
VERIFIER = SIGNER.verifier()


def leaf_of(i: int) -> bytes:
    return hashlib.sha256(b"leaf %d" % i).digest()


class Tree:
    """A log of leaf hashes, its tiles and its signed checkpoints; ``fetches`` counts tile
    reads."""

    def __init__(self, size: int) -> None:
        self.leaves = [leaf_of(i) for i in range(size)]
        self.fetches = 0

    def grow(self, n: int) -> range:
        start = len(self.leaves)
        self.leaves += [leaf_of(i) for i in range(start, start + n)]
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


def verifier_for(tree: Tree, fast: bool) -> ReceiptVerifier:
    def verify_note(note: str) -> VerifiedCheckpoint:
        return _verify_note(note, VERIFIER, None)

    v = ReceiptVerifier(verify_note, tree.tile)
    if not fast:
        v._extends_edge = lambda *a: False  # type: ignore[method-assign]
    return v
