"""Integrity check of a whole store, safe on a live one (``tlog fsck``).

Every problem is one line in :attr:`FsckReport.errors` (``tlog fsck`` prints each as
``fsck: ERROR <text>`` and exits 2). In order:

1. **structure** (the backend's :meth:`~tlog.backend.Backend.check_structure`): for LMDB,
   py-lmdb's offline verifier (:mod:`lmdb.verify`) walks every page of ``data.mdb`` with
   plain reads, never through the mapped engine, so a truncated or damaged file gives ERROR
   lines instead of a SIGBUS. If the structure is broken, the logical checks are skipped
   (liblmdb must not be handed that file). PostgreSQL checks its own pages (checksums,
   ``pg_amcheck``); its schema is checked when the store is opened.
2. **logical**, all in ONE read snapshot (:meth:`~tlog.backend.Backend.read`: a running
   server keeps appending without disturbing the check, and no lock is taken), over the
   backend-neutral tables of :mod:`tlog.backend`, streaming in O(log n) memory:

   * entries, by cursor scan *and* by point lookup, are dense ``0 .. size-1``;
   * dedup, both ways: every entry's leaf hash maps to its index, and every dedup key is
     the leaf hash of the entry it points at (so counts match too);
   * tiles: every stratum blob equals the one recomputed from the entries, and no other
     tile key exists;
   * checkpoints: each is signed by the log's key for its origin and size, and its root
     equals the root recomputed independently (a compact range) at that size; they are
     therefore consistent with each other; the latest covers the whole tree;
   * cosignatures: stored for a size that has a checkpoint, and parse as note signature
     lines (verifying them needs the witness keys: ``tlog-witness``/the auditor do that);
   * tokens: each record parses as a token for the key it is stored under;
   * SCIM records (``aux``): each parses, and each leaf hash it references is in the log,
     or is the leaf of one of the log's own events that a direct write committed and whose
     sequencing has not happened yet (a ``Q`` record: the next start sequences it; counted in
     :attr:`FsckReport.pending`, not an error).

Any storage error on the way becomes an ERROR line, never a traceback.

A store that holds nothing at all (no record in any table but the format marker: an LMDB
file or a PostgreSQL schema that ``tlog serve`` never started a log in) is not checked:
:attr:`FsckReport.empty` is set, and ``tlog fsck`` says there is no log there (exit 1, like
every store command), the same on both backends. A store with *some* records but no origin
or checkpoint is checked, and fails.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import EMPTY_ROOT, CompactRange, VerificationError, leaf_hash
from client.formats.note import Ed25519Verifier, FormatError, open_note, parse_note
from client.scim.cbor import EventFormatError, loads_det
from tlog.auth import Principal
from tlog.backend import TABLES, Backend, ReadView, storage_fault, tile_key, u64
from tlog.scim import store
from tlog.tree import BLOB_SIZE, RightEdge

__all__ = ["FsckReport", "fsck", "terminal_progress"]

_U64 = struct.Struct(">Q")


@dataclass
class FsckReport:
    entries: int = 0
    blobs_checked: int = 0
    checkpoints_checked: int = 0
    records_checked: int = 0
    errors: list[str] = field(default_factory=list)
    empty: bool = False  # the store holds no record at all: no log to check
    # Not damage, but the store cannot be served as it is (an unfinished tlog migrate copy:
    # its marker); each with the command that settles it. Not counted by ``ok``: tlog
    # migrate checks its own copy with fsck before it removes the marker.
    findings: list[str] = field(default_factory=list)
    # Events of the log's own (an erasure, an expiry, a hold, a retention period) committed
    # by a direct write whose sequencing did not happen yet (``scim/Q`` records): neither
    # damage nor a finding, ``tlog serve`` sequences them when it starts.
    pending: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def check_structure(db_dir: Path) -> list[str]:
    """Problems py-lmdb's offline verifier finds in ``<db_dir>/data.mdb`` (reads, never maps
    it), for an LMDB store that cannot even be opened."""
    from tlog.storage import verify_structure

    return verify_structure(db_dir / "data.mdb")


def fsck(
    storage: Backend,
    progress: Callable[[int, int], None] | None = None,
    *,
    structure: bool = True,
) -> FsckReport:
    rep = FsckReport()
    try:
        # The read snapshot comes first: on a live LMDB store it pins the snapshot, so the
        # writer cannot reuse its pages while the structure walk reads them.
        with storage.read() as rv:
            if structure:
                rep.errors.extend(storage.check_structure())
                if rep.errors:
                    rep.errors.append("the file structure is damaged: logical checks skipped")
                    return rep
            if holds_nothing(rv):
                rep.empty = True
                return rep
            _migrate_marker(rv, rep, storage.location)
            _Check(rv, rep, progress).run()
    except Exception as exc:
        fault = storage_fault(exc)
        if fault is None:
            raise
        rep.errors.append(
            f"the store failed while being read ({storage.kind}): {type(exc).__name__}: {exc}"
        )
    return rep


def _migrate_marker(rv: ReadView, rep: FsckReport, location: str) -> None:
    """The marker of an unfinished ``tlog migrate`` copy (:data:`tlog.migrate.MARKER`) as a
    finding naming both ways out: the same command again (resumes), or ``--restart`` when
    the source changed since (clears exactly this copy and starts over)."""
    from tlog.migrate import MARKER, describe_marker

    marker = rv.meta(MARKER)
    if marker is None:
        return
    rep.findings.append(
        f"this store is an unfinished tlog migrate copy (of {describe_marker(marker)}); "
        "tlog serve refuses it until the migration completes. Finish it: tlog migrate "
        f"--from <its source> --to {location} (the same command again resumes the copy); "
        "if the source changed since: the same command with --restart (it clears exactly "
        "this copy, which its marker identifies, and copies again)"
    )


def holds_nothing(rv: ReadView) -> bool:
    """No record in any table, the store's format marker aside: a store no log was ever
    started in (stricter than :meth:`~tlog.backend.Backend.is_empty`, which only looks for
    the origin and a checkpoint: stray records without them are damage, not emptiness)."""
    for table in TABLES:
        for k, _v in rv.raw(table):
            if table != "meta" or k != b"format":
                return False
    return True


class _Check:
    """The logical checks inside one read transaction."""

    def __init__(
        self,
        rv: ReadView,
        rep: FsckReport,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.rv = rv
        self.get = rv.raw_get
        self.rep = rep
        self.err = rep.errors.append
        self.progress = progress

    def run(self) -> None:
        origin_b, vkey_b = self.get("meta", b"origin"), self.get("meta", b"vkey")
        size_b = self.get("meta", b"tree_size")
        if size_b is not None and len(size_b) != 8:
            self.err(f"stored tree size is {len(size_b)} bytes, not 8")
            size_b = None
        size = 0 if size_b is None else int(_U64.unpack(size_b)[0])
        cps: dict[int, bytes] = {}
        for k, v in self.rv.raw("checkpts"):
            if len(k) != 8:
                self.err(f"checkpoint key {bytes(k).hex()} is not a u64")
                continue
            cps[int(_U64.unpack(k)[0])] = bytes(v)
        verifier = None
        if origin_b is None or vkey_b is None:
            self.err("store has no origin or verifier key")
        else:
            try:
                verifier = Ed25519Verifier.from_vkey(vkey_b.decode())
            except (FormatError, UnicodeDecodeError) as exc:
                self.err(f"stored vkey is malformed: {exc}")
        origin = origin_b.decode("utf-8", "replace") if origin_b is not None else ""
        if not cps or max(cps) != size:
            self.err(f"latest checkpoint does not cover tree size {size}")
        for n in cps:
            if n > size:
                self.err(f"checkpoint {n} is beyond the tree size {size}")
        hashes_ok = self.tree(size, cps, origin, verifier)
        self.dedup_reverse(size)
        self.tiles(size)
        self.cosignatures(cps)
        self.tokens()
        self.scim(hashes_ok)

    # -- entries, dedup, tiles, checkpoints ------------------------------------------------

    def check_cp(
        self, n: int, note: bytes, root: bytes, origin: str, verifier: Ed25519Verifier | None
    ) -> None:
        self.rep.checkpoints_checked += 1
        if verifier is None:
            return
        try:
            cp = Checkpoint.parse(open_note(note, [verifier]).text)
        except (FormatError, VerificationError, UnicodeDecodeError) as exc:
            self.err(f"checkpoint {n}: bad signature or format: {exc}")
            return
        if cp.origin != origin or cp.size != n:
            self.err(f"checkpoint {n}: wrong origin or size")
        elif cp.root_hash != root:
            self.err(f"checkpoint {n}: root does not match the entries")

    def tree(
        self, size: int, cps: dict[int, bytes], origin: str, verifier: Ed25519Verifier | None
    ) -> set[bytes] | None:
        """Walk the entries; returns the set of leaf hashes if small enough to keep."""
        edge = RightEdge(0, lambda level, index: None)
        cr = CompactRange()  # independent of the RightEdge that rebuilds the tiles
        if 0 in cps:
            self.check_cp(0, cps[0], EMPTY_ROOT, origin, verifier)
        if self.progress is not None:
            self.progress(0, size)
        keep: set[bytes] | None = set() if size <= 1 << 20 else None
        index = 0
        last_report = 0.0
        batch: list[bytes] = []
        for k, v in self.rv.raw("entries"):
            if len(k) != 8 or int(_U64.unpack(k)[0]) != index:
                got = bytes(k).hex()
                self.err(f"entry key {got} found where entry {index} should be (keys not dense)")
                break
            if index >= size:
                self.err(f"entry {index} is beyond the tree size {size}")
                break
            entry = v
            if self.get("entries", u64(index)) != entry:  # point lookup agrees with scan
                self.err(f"entry {index}: point lookup differs from the scan")
            h = leaf_hash(entry)
            got_i = self.get("dedup", h)
            if got_i is None or len(got_i) != 8:
                self.err(f"dedup index has no entry for the leaf hash of entry {index}")
            else:
                j = int(_U64.unpack(got_i)[0])
                if j < index:
                    self.err(f"entry {index} duplicates entry {j}")
                elif j != index:
                    self.err(f"dedup index maps the leaf hash of entry {index} to {j}")
            if keep is not None:
                keep.add(h)
            cr.append(h)
            batch.append(h)
            index += 1
            if index in cps:
                self.check_cp(index, cps[index], cr.root(), origin, verifier)
            if len(batch) == 256:
                edge.append(batch)
                batch = []
                self.complete_blobs(edge)
            if self.progress is not None and time.monotonic() - last_report > 0.2:
                self.progress(index, size)
                last_report = time.monotonic()
        edge.append(batch)
        self.complete_blobs(edge)
        if index != size:
            self.err(f"{index} entries stored but the tree size is {size}")
        self.rep.entries = index
        for tl, ti, blob in edge.blobs():  # the right-most blob of every level
            self.compare_blob(tl, ti, blob)
        if self.progress is not None:
            self.progress(index, size)
        return keep

    def complete_blobs(self, edge: RightEdge) -> None:
        for tl, ti, blob in edge.take_dirty():
            # Only a blob whose 256 hashes of its level all exist is final; the right-most
            # blob of each level is compared at the end.
            if (edge.size >> (8 * tl)) >> 8 > ti:
                self.compare_blob(tl, ti, blob)

    def compare_blob(self, tl: int, ti: int, blob: bytes) -> None:
        self.rep.blobs_checked += 1
        stored = self.get("tiles", tile_key(tl, ti))
        if stored != blob:
            self.err(f"tile {tl}/{ti} differs from the recomputed tree")

    def dedup_reverse(self, size: int) -> None:
        for k, v in self.rv.raw("dedup"):
            if len(v) != 8:
                self.err(f"dedup value for {k.hex()[:16]}... is not a u64")
                continue
            j = int(_U64.unpack(v)[0])
            e = self.get("entries", v) if j < size else None
            if e is None or leaf_hash(e) != k:
                self.err(f"dedup key {k.hex()[:16]}... points at entry {j}, not its leaf")

    def tiles(self, size: int) -> None:
        for k, v in self.rv.raw("tiles"):
            if len(k) != 9:
                self.err(f"tile key {bytes(k).hex()} is malformed")
                continue
            tl, ti = k[0], int(_U64.unpack(k[1:])[0])
            count = size >> (8 * tl)
            if tl > 7 or ti * 256 >= count or len(v) != BLOB_SIZE:
                self.err(f"tile {tl}/{ti} should not exist at tree size {size} (or wrong size)")

    # -- cosignatures, tokens, SCIM records ------------------------------------------------

    def cosignatures(self, cps: dict[int, bytes]) -> None:
        for k, v in self.rv.raw("cosigs"):
            self.rep.records_checked += 1
            n = int(_U64.unpack(k)[0]) if len(k) == 8 else -1
            note = cps.get(n)
            if note is None:
                self.err(f"cosignatures stored for size {n}, which has no checkpoint")
                continue
            try:
                parse_note(note + v)
            except (FormatError, UnicodeDecodeError) as exc:
                self.err(f"cosignatures for checkpoint {n} do not parse: {exc}")

    def tokens(self) -> None:
        for k, v in self.rv.raw("tokens"):
            self.rep.records_checked += 1
            try:
                rec = json.loads(v)
                p = Principal(**rec)
                ok = (
                    len(k) == 32
                    and p.token_id == k.hex()[:16]
                    and isinstance(p.role, str)
                    and isinstance(p.created, int)
                )
            except (ValueError, TypeError) as exc:
                self.err(f"token {k.hex()[:16]}: record does not parse: {exc}")
                continue
            if not ok:
                self.err(f"token {k.hex()[:16]}: record does not belong to its key")

    def scim(self, leaves: set[bytes] | None) -> None:
        # The leaves of the log's own events that a direct write committed and whose
        # sequencing has not happened yet (a crash in between, red team 28): the next start
        # sequences them, so the records naming them are pending, not damage.
        plen = len(store.PREFIX)
        pending = {k[plen + 1 :] for k, _ in self.rv.aux_range(store.unlogged_prefix())}

        def in_log(lh: bytes) -> bool:
            if leaves is not None:
                return lh in leaves
            return self.get("dedup", lh) is not None

        def known(lh: bytes) -> bool:
            return in_log(lh) or lh in pending

        self.rep.pending = sum(1 for lh in pending if not in_log(lh))

        for k, v in self.rv.raw("aux"):
            if not k.startswith(store.PREFIX):
                continue
            self.rep.records_checked += 1
            tag, rest = k[plen : plen + 1], k[plen + 1 :]
            problem = _scim_problem(tag, rest, v, known)
            if problem:
                what = f"{tag.decode('ascii', 'replace')}/{rest.hex()[:24]}"
                self.err(f"SCIM record {what}: {problem}")


# Fixed key widths after the tag, and where the leaf hash sits (None: no leaf reference).
_SCIM_KEYS: dict[bytes, tuple[int | None, int | None]] = {
    b"T": (16, None),
    b"S": (32, None),
    b"D": (20, None),
    b"F": (16, None),
    b"V": (32, None),
    b"E": (32, 0),
    b"L": (48, 16),
    b"A": (16 + 40, 24),
    b"R": (16, None),
    b"H": (16 + 16, None),  # a legal hold (tn, hold id)
    b"Y": (16, None),  # a tenant's retention period
    b"Q": (32, None),  # a direct write's leaf, sequenced again at start (tlog.scim.erasure)
    b"P": (16 + 16 + 16, None),  # a pending erasure request by subject (tn, h, request id)
    b"W": (None, None),  # a marker: what this store has built (W/request-index)
    b"X": (16 + 1 + 16 + 40, 16 + 1 + 16 + 8),
}
_SEALED_MIN = 12 + 16  # AES-GCM iv ‖ tag: K and D values are sealed keys, not records


def _scim_problem(
    tag: bytes, rest: bytes, value: bytes, known: Callable[[bytes], bool]
) -> str | None:
    if tag == b"K":
        if rest not in (b"check", b"tnkey"):
            return "unknown key"
        return None if len(value) >= _SEALED_MIN else "sealed key too short"
    if tag not in _SCIM_KEYS:
        return "unknown record type"
    width, lh_at = _SCIM_KEYS[tag]
    if width is not None and len(rest) != width:
        return f"key is {len(rest)} bytes after the tag, want {width}"
    if lh_at is not None and not known(rest[lh_at : lh_at + 32]):
        return "references a leaf hash that is not in the log"
    if tag == b"Q":  # in the log or not yet: its key must be its hash
        return None if leaf_hash(value) == rest else "leaf does not hash to its key"
    if tag == b"V":
        if not known(leaf_hash(value)):
            return "holds leaf bytes that are not in the log"
        return None
    if tag == b"W":
        return None if rest == b"request-index" else "unknown marker"
    if tag in (b"L", b"A", b"X", b"P"):
        return None if value == b"" else "index record should be empty"
    if tag == b"D":
        return None if len(value) >= _SEALED_MIN else "sealed key too short"
    if tag == b"F":  # a subject's effects state, sealed under its DEK (tlog.scim.effects)
        return None if len(value) >= _SEALED_MIN else "sealed state too short"
    try:
        obj = loads_det(value)
    except EventFormatError as exc:
        return f"does not parse: {exc}"
    if type(obj) is not dict:
        return "is not a map"
    if tag == b"E":
        try:
            store.decode_envelope(value)
        except Exception as exc:  # StorageError from the codec
            return f"envelope does not parse: {exc}"
    return None


def terminal_progress(done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    pct = 100.0 * done / total if total else 100.0
    bar = "#" * int(pct / 4)
    sys.stderr.write(f"\rfsck [{bar:<25}] {done}/{total} entries ({pct:5.1f}%)")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
