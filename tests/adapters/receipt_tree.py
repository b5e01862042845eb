"""An in-memory log for the receipt verifier's tests: a tree of leaf hashes, its tiles served
from it, checkpoints signed with a test key."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from client.adapters.outbox import Receipt
from client.adapters.receipts import ReceiptVerifier
from client.formats.checkpoint import Checkpoint
from client.formats.merkle import leaf_hash as rfc6962_leaf_hash
from client.formats.merkle import root_of_range
from client.formats.note import Ed25519Signer, b64encode, sign_note
from client.formats.tiles import TILE_HEIGHT, Tile
from client.net.logclient import VerifiedCheckpoint, _verify_note
from client.scim.cbor import dumps_det
from client.scim.event import actor_seal_digest
from client.scim.leaf import commitment_unchecked, make_leaf

ORIGIN = "example.com/receipts-test"
SIGNER = Ed25519Signer(ORIGIN, bytes(range(32)))
VERIFIER = SIGNER.verifier()


def honest_answer(
    ev: dict[str, Any], nonce: bytes, pseudonym: tuple[bytes, bytes] | None
) -> tuple[Receipt, tuple[bytes, bytes, Any]]:
    """The receipt and (leaf, nonce, stored actor) an honest log answers for event ``ev``
    alone in a tree of one: its leaf commits under ``nonce`` to the event as stored, with
    the actor pseudonymised when ``pseudonym`` = (pid, actor nonce) is given."""
    stored = None
    enc = dumps_det(ev)
    if pseudonym is not None:
        pid, an = pseudonym
        sd = actor_seal_digest(an, ev["actor"])
        stored = (pid, sd, an)
        enc = dumps_det({**ev, "actor": {"kind": ev["actor"]["kind"], "pid": pid, "sd": sd}})
    leaf = make_leaf(ev["ts"], b"\x01" * 16, commitment_unchecked(nonce, enc))
    r = Receipt(
        eid=ev["eid"],
        index=0,
        leaf_hash=base64.b64encode(rfc6962_leaf_hash(leaf)).decode(),
        tree_size=1,
        checkpoint="cp",
        duplicate=False,
    )
    return r, (leaf, nonce, stored)


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
