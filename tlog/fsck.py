"""Offline integrity check: recompute the whole tree from the stored entries.

Checks, streaming in O(log n) memory:

* entries are dense (0 .. size-1) and the stored tree size matches;
* every stored stratum blob equals the one recomputed from the entries;
* the dedup index maps every leaf hash to its first index, and holds nothing else;
* every stored checkpoint is signed by the log's key, has the log's origin, and its root
  equals the root recomputed independently (a compact range) at that size;
* the latest checkpoint covers the whole tree.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from client.checkpoint import Checkpoint
from client.merkle import EMPTY_ROOT, VerificationError, leaf_hash, node_hash
from client.note import Ed25519Verifier, FormatError, open_note
from tlog.storage import Storage
from tlog.tree import RightEdge

__all__ = ["FsckReport", "fsck", "terminal_progress"]


@dataclass
class FsckReport:
    entries: int = 0
    blobs_checked: int = 0
    checkpoints_checked: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class _CompactRange:
    """Root of a growing tree from O(log n) state: an independent second computation."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, bytes]] = []

    def append(self, h: bytes) -> None:
        height = 0
        while self.stack and self.stack[-1][0] == height:
            h = node_hash(self.stack.pop()[1], h)
            height += 1
        self.stack.append((height, h))

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        h = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            h = node_hash(left, h)
        return h


def fsck(storage: Storage, progress: Callable[[int, int], None] | None = None) -> FsckReport:
    rep = FsckReport()
    err = rep.errors.append
    with storage.read() as rv:
        origin_b, vkey_b = rv.meta("origin"), rv.meta("vkey")
        size = rv.tree_size()
        checkpoints = list(rv.checkpoints())
    if origin_b is None or vkey_b is None:
        err("store has no origin or verifier key")
        return rep
    origin = origin_b.decode()
    try:
        verifier = Ed25519Verifier.from_vkey(vkey_b.decode())
    except FormatError as exc:
        err(f"stored vkey is malformed: {exc}")
        return rep
    cps = {s: n for s, n in checkpoints}
    if not checkpoints or checkpoints[-1][0] != size:
        err(f"latest checkpoint does not cover tree size {size}")

    def check_cp(n: int, root: bytes) -> None:
        note = cps.get(n)
        if note is None:
            return
        rep.checkpoints_checked += 1
        try:
            cp = Checkpoint.parse(open_note(note, [verifier]).text)
        except (FormatError, VerificationError) as exc:
            err(f"checkpoint {n}: bad signature or format: {exc}")
            return
        if cp.origin != origin or cp.size != n:
            err(f"checkpoint {n}: wrong origin or size")
        if cp.root_hash != root:
            err(f"checkpoint {n}: root does not match the entries")

    edge = RightEdge(0, lambda level, index: None)
    cr = _CompactRange()

    def verify_complete_blobs() -> None:
        for tl, ti, blob in edge.take_dirty():
            # Only a blob whose 256 hashes of its level all exist is final; the right-most
            # blob of each level is compared at the end (verify_final).
            if (edge.size >> (8 * tl)) >> 8 > ti:
                _compare_blob(storage, tl, ti, blob, rep)

    check_cp(0, EMPTY_ROOT)
    index = 0
    last_report = 0.0
    chunk = 256
    while index < size:
        with storage.read() as rv:
            entries = rv.entries(index, min(size, index + chunk))
            if not entries:
                err(f"entry {index} is missing")
                break
            hashes = [leaf_hash(e) for e in entries]
            for i, h in enumerate(hashes):
                got = rv.index_of(h)
                if got is None or got > index + i:
                    err(f"dedup index wrong for entry {index + i}")
                elif got < index + i:
                    err(f"entry {index + i} duplicates entry {got}")
        for h in hashes:
            cr.append(h)
            index += 1
            if index in cps:
                check_cp(index, cr.root())
        edge.append(hashes)
        verify_complete_blobs()
        if progress is not None and time.monotonic() - last_report > 0.2:
            progress(index, size)
            last_report = time.monotonic()
    rep.entries = index
    verify_final(storage, edge, rep)
    with storage.read() as rv:
        extra = rv.entry(size)
    with storage.env.begin() as txn:
        n_dedup = txn.stat(storage.db_dedup)["entries"]
        n_entries = txn.stat(storage.db_entries)["entries"]
    if extra is not None or n_entries != size:
        err(f"{n_entries} entries stored but the tree size is {size}")
    if n_dedup != size:
        err(f"dedup index has {n_dedup} keys for {size} entries")
    if progress is not None:
        progress(index, size)
    return rep


def _compare_blob(storage: Storage, tl: int, ti: int, blob: bytes, rep: FsckReport) -> None:
    with storage.read() as rv:
        stored = rv.blob(tl, ti)
        ok = stored is not None and bytes(stored) == blob
    rep.blobs_checked += 1
    if not ok:
        rep.errors.append(f"tile {tl}/{ti} differs from the recomputed tree")


def verify_final(storage: Storage, edge: RightEdge, rep: FsckReport) -> None:
    """Compare the right-most blob of every level (kept by the edge) with the store."""
    for tl, ti, blob in edge.blobs():
        _compare_blob(storage, tl, ti, blob, rep)


def terminal_progress(done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    pct = 100.0 * done / total if total else 100.0
    bar = "#" * int(pct / 4)
    sys.stderr.write(f"\rfsck [{bar:<25}] {done}/{total} entries ({pct:5.1f}%)")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


