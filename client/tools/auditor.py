"""A full audit of a log over its tlog-tiles API, resumable and incremental.

What one run proves, given the log's verifier key (and a witness policy, if any):

1. the latest checkpoint is signed by the log (origin = key name) and meets the quorum;
2. it is consistent with the checkpoint the previous run verified: the log's RFC 9162
   consistency proof checks (from ``/v1/proof/consistency``, or computed from hash tiles if
   the log has no JSON API), **and** the tree recomputed by extending the saved right edge
   with the new entries has the new root;
3. every entry bundle ``tile/entries/N[.p/W]`` up to the checkpoint's size was downloaded
   and hashed, and the recomputed tree has the checkpoint's root;
4. every hash tile the log serves for that size (``tile/L/N[.p/W]``, all levels, partial
   ones included) equals the recomputed hashes, so proofs built from the tiles are sound.

The state between runs is O(log n): the right edge of the tree at tile granularity (a
:class:`TileFrontier`: for each tile level, the at most 255 hashes of the tile being filled),
which also gives the classic compact range (the perfect-subtree roots of ``[0, size)``).
The state file is JSON, written atomically (temp file, fsync, rename, fsync of the
directory):

.. code-block:: text

    {"format": "tlog-audit-state/v1",
     "origin": "<log origin>", "vkey": "<log vkey>", "url": "<log URL, informational>",
     "checkpoint": null | {"size": N, "root": "<b64>", "note": "<signed checkpoint>"},
     "size": N,                         # the tree the two fields below describe
     "compact_range": ["<b64>", ...],   # perfect-subtree roots of [0, N), left to right
     "frontier": [["<b64>", ...], ...], # per tile level L: the hashes of tree level 8L in
                                        # the last, unfilled tile (len = (N >> 8L) % 256)
     "progress": null | {"size": K, "compact_range": [...], "frontier": [...],
                         "pending": ["<signed checkpoint>", ...]}}

``checkpoint`` is the last checkpoint fully verified, and ``frontier`` is the tree at its
size. ``progress`` is an interrupted run: the entries up to ``K`` were downloaded and hashed
but not yet matched with a signed root; ``pending`` are the signed checkpoints (larger than
``K``) that the recomputed tree must still match. It is saved at bundle boundaries every
``save_interval`` seconds and when a run is interrupted, and dropped when the log fails
verification (the downloaded data is then suspect).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.formats.merkle import (
    HASH_SIZE,
    LEAF_PREFIX,
    CompactRange,
    VerificationError,
    root_of_range,
)
from client.formats.note import FormatError
from client.formats.tiles import TILE_HEIGHT, TILE_WIDTH, Tile, decode_entry_bundle
from client.net.logclient import LogClient, VerifiedCheckpoint
from client.runtime.durable import atomic_write

__all__ = ["AuditResult", "AuditState", "Auditor", "StateError", "TileFrontier"]

STATE_FORMAT = "tlog-audit-state/v1"

_sha256 = hashlib.sha256


class StateError(Exception):
    """The state file is unreadable, corrupt, or belongs to another log."""


class TileFrontier:
    """The right edge of a Merkle tree at tile granularity.

    ``levels[L]`` holds the hashes of tree level ``8·L`` that do not yet fill a tile: these
    are exactly the contents of the partial hash tile ``tile/L/<last>.p/<len>``. The hashing
    is :class:`client.formats.merkle.CompactRange`'s; this class collects the nodes of
    levels ``8·L`` that it completes, and hands over every tile they fill. Memory is at most
    255 hashes per tile level, and appending costs one node hash per leaf, amortised.
    """

    def __init__(self, size: int = 0, levels: Sequence[Sequence[bytes]] = ()) -> None:
        self.levels: list[list[bytes]] = [list(x) for x in levels] or [[]]
        if sum(len(x) << (TILE_HEIGHT * k) for k, x in enumerate(self.levels)) != size:
            raise ValueError("frontier does not describe a tree of that size")
        if any(len(x) >= TILE_WIDTH for x in self.levels):
            raise ValueError("frontier holds a full tile")
        if any(len(h) != HASH_SIZE for x in self.levels for h in x):
            raise ValueError("frontier holds a hash that is not 32 bytes")
        # The perfect subtrees of [0, size), largest first: within each level's partial
        # tile, one per set bit of its length (the top tile level holds the largest).
        roots: list[bytes] = []
        for buf in reversed(self.levels):
            pos, m = 0, len(buf)
            for bit in reversed(range(TILE_HEIGHT)):
                if m >> bit & 1:
                    roots.append(root_of_range(buf[pos : pos + (1 << bit)]))
                    pos += 1 << bit
        self._range = CompactRange(size, roots)

    @property
    def size(self) -> int:
        return self._range.size

    def copy(self) -> TileFrontier:
        f = TileFrontier.__new__(TileFrontier)
        f._range = self._range.copy()
        f.levels = [list(x) for x in self.levels]
        return f

    def append(
        self, leaf_hashes: Sequence[bytes], full_tile: Callable[[int, int, list[bytes]], None]
    ) -> None:
        """Add leaves; ``full_tile(level, index, hashes)`` is called for every tile of level
        >= 1 that fills (level-0 tiles are the leaf hashes themselves, which the caller has).
        It is called before the tile's root is hashed, and may raise to stop the append
        (the frontier must then be discarded).
        """
        levels = self.levels

        def collect(level: int, index: int, h: bytes) -> None:
            if level & (TILE_HEIGHT - 1):
                return
            tl = level >> 3
            if tl == len(levels):
                levels.append([])
            buf = levels[tl]
            buf.append(h)
            if len(buf) == TILE_WIDTH:
                full_tile(tl, index >> TILE_HEIGHT, buf)
                levels[tl] = []

        i, n = 0, len(leaf_hashes)
        while i < n:
            take = min(TILE_WIDTH - len(levels[0]), n - i)
            chunk = leaf_hashes[i : i + take]
            levels[0].extend(chunk)
            if len(levels[0]) == TILE_WIDTH:
                levels[0] = []
            self._range.extend(chunk, collect)
            i += take

    def compact_range(self) -> list[bytes]:
        """The roots of the maximal perfect subtrees of ``[0, size)``, left to right."""
        return list(self._range.hashes)

    def root(self) -> bytes:
        """RFC 6962 MTH of the tree (the right-to-left fold of the compact range)."""
        return self._range.root()

    def partial_tiles(self) -> list[tuple[Tile, list[bytes]]]:
        """The partial hash tiles of levels >= 1 at this size, with their expected content."""
        out = []
        for level, buf in enumerate(self.levels):
            if level and buf:
                index = (self.size >> (TILE_HEIGHT * level)) // TILE_WIDTH
                out.append((Tile(level, index, len(buf)), buf))
        return out

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        levels = list(self.levels)
        while len(levels) > 1 and not levels[-1]:
            levels.pop()
        return {
            "size": self.size,
            "compact_range": [_b64(h) for h in self.compact_range()],
            "frontier": [[_b64(h) for h in buf] for buf in levels],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TileFrontier:
        size = doc.get("size")
        levels = doc.get("frontier")
        cr = doc.get("compact_range")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StateError("bad size")
        if not isinstance(levels, list) or not all(isinstance(x, list) for x in levels):
            raise StateError("bad frontier")
        if not isinstance(cr, list):
            raise StateError("bad compact_range")
        try:
            f = cls(size, [[_unb64(h) for h in buf] for buf in levels])
        except ValueError as exc:
            raise StateError(str(exc)) from None
        # The compact range is derived data; a mismatch means the file was damaged.
        if [_unb64(h) for h in cr] != f.compact_range():
            raise StateError("compact_range does not match the frontier")
        return f


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


def _unb64(s: object) -> bytes:
    if not isinstance(s, str):
        raise StateError("hash is not a string")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise StateError("bad base64 hash") from None
    if len(raw) != HASH_SIZE:
        raise StateError("hash is not 32 bytes")
    return raw


@dataclass
class Progress:
    frontier: TileFrontier
    pending: list[str]  # signed checkpoint notes the tree must still match


@dataclass
class AuditState:
    """What the auditor remembers about one log (see the module docstring)."""

    origin: str
    vkey: str
    url: str = ""
    checkpoint: str | None = None  # the last fully verified checkpoint note
    frontier: TileFrontier = field(default_factory=TileFrontier)
    progress: Progress | None = None

    def to_json(self, client: LogClient) -> bytes:
        cp: dict[str, Any] | None = None
        if self.checkpoint is not None:
            vc = client.verify_note(self.checkpoint)
            cp = {"size": vc.size, "root": _b64(vc.root_hash), "note": self.checkpoint}
        doc: dict[str, Any] = {
            "format": STATE_FORMAT,
            "origin": self.origin,
            "vkey": self.vkey,
            "url": self.url,
            "checkpoint": cp,
            **self.frontier.to_json(),
            "progress": None,
        }
        if self.progress is not None:
            doc["progress"] = {**self.progress.frontier.to_json(), "pending": self.progress.pending}
        return (json.dumps(doc, indent=1) + "\n").encode()

    @classmethod
    def load(cls, path: Path, client: LogClient) -> AuditState:
        """Read and check a state file; signatures are verified again with the client's key."""
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read state file {path}: {exc}") from None
        except RecursionError:
            raise StateError(f"cannot read state file {path}: nested too deeply") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StateError(f"{path} is not a {STATE_FORMAT} state file")
        if doc.get("origin") != client.origin or doc.get("vkey") != client.verifier.vkey():
            raise StateError(f"{path} belongs to another log ({doc.get('origin')!r})")
        try:
            frontier = TileFrontier.from_json(doc)
            note = None
            cp = doc.get("checkpoint")
            if cp is not None:
                if not isinstance(cp, dict) or not isinstance(cp.get("note"), str):
                    raise StateError("bad checkpoint")
                note = cp["note"]
                vc = client.verify_note(note)
                if (vc.size, _b64(vc.root_hash)) != (cp.get("size"), cp.get("root")):
                    raise StateError("checkpoint fields do not match its note")
                if vc.size != frontier.size or vc.root_hash != frontier.root():
                    raise StateError("the saved tree does not match the saved checkpoint")
            elif frontier.size != 0:
                raise StateError("a saved tree without a checkpoint")
            progress = None
            p = doc.get("progress")
            if p is not None:
                if not isinstance(p, dict) or not isinstance(p.get("pending"), list):
                    raise StateError("bad progress")
                pf = TileFrontier.from_json(p)
                pending = p["pending"]
                if not all(isinstance(n, str) for n in pending):
                    raise StateError("bad pending checkpoints")
                for n in pending:
                    if client.verify_note(n).size <= pf.size:
                        raise StateError("a pending checkpoint the tree has already passed")
                if pf.size < frontier.size or not pending:
                    raise StateError("progress is behind the verified checkpoint")
                progress = Progress(pf, list(pending))
        except (FormatError, VerificationError) as exc:
            raise StateError(f"{path}: {exc}") from None
        url = doc.get("url")
        return cls(
            client.origin,
            client.verifier.vkey(),
            url if isinstance(url, str) else "",
            note,
            frontier,
            progress,
        )


@dataclass(frozen=True)
class AuditResult:
    """What a successful run verified."""

    checkpoint: VerifiedCheckpoint
    previous_size: int | None  # the size verified by the previous run, None on a first run
    resumed_from: int | None  # where an interrupted run's progress picked up, if it did
    entries: int  # entries downloaded and hashed in this run
    bundles: int  # entry bundles fetched
    tiles: int  # hash tiles fetched and compared
    seconds: float


Fetch = Callable[[Tile], bytes]
ProgressFn = Callable[[int, int], None]


class Auditor:
    """Audits the log behind ``client`` (see the module docstring for what is proven).

    ``fetch(tile) -> bytes`` reads raw tiles (default :meth:`LogClient.fetch_tile`); it is
    called from ``workers`` threads to keep requests in flight while hashing. ``progress``,
    if given, is called with (entries done, entries to do) after each bundle.

    :meth:`run` raises :class:`VerificationError` (:class:`client.net.logclient.QuorumNotMet` for
    a missing quorum) or :class:`FormatError` when the log fails the audit,
    :class:`client.net.logclient.LogClientError` when it cannot be reached, :class:`StateError`
    for a bad state file.
    """

    def __init__(
        self,
        client: LogClient,
        *,
        state_path: Path | None = None,
        fetch: Fetch | None = None,
        workers: int = 4,
        save_interval: float = 5.0,
        progress: ProgressFn | None = None,
    ) -> None:
        self.client = client
        self.state_path = state_path
        self.fetch: Fetch = fetch or client.fetch_tile
        self.workers = max(1, workers)
        self.save_interval = save_interval
        self.progress = progress
        self.tiles_checked = 0

    def _load_state(self) -> AuditState:
        if self.state_path is not None and self.state_path.exists():
            return AuditState.load(self.state_path, self.client)
        return AuditState(self.client.origin, self.client.verifier.vkey(), self.client.url)

    def _save(self, state: AuditState) -> None:
        if self.state_path is not None:
            atomic_write(self.state_path, state.to_json(self.client))

    def run(self) -> AuditResult:
        t0 = time.monotonic()
        self.tiles_checked = 0
        state = self._load_state()
        client = self.client
        previous: int | None = None
        if state.checkpoint is not None:
            previous = client.trust(state.checkpoint).size
        pending: list[str] = []
        if state.progress is not None:
            for note in state.progress.pending:
                client.trust(note)  # consistent with the verified checkpoint (log's proof)
            pending = list(state.progress.pending)
        # Signature, origin, quorum, and consistency with everything trusted above.
        latest = client.checkpoint()
        if not pending or client.verify_note(pending[-1]).size < latest.size:
            pending.append(latest.note)
        frontier = (state.progress.frontier if state.progress else state.frontier).copy()
        resumed = frontier.size if state.progress else None
        if frontier.size == latest.size:
            # Nothing new. The size-equal root check happened in client.checkpoint().
            result = AuditResult(latest, previous, resumed, 0, 0, 0, time.monotonic() - t0)
            state.checkpoint, state.frontier, state.progress = latest.note, frontier, None
            self._save(state)
            return result
        try:
            bundles, entries = self._download(state, frontier, pending)
        except (VerificationError, FormatError) as exc:
            # The log served bad data: what this run downloaded proves nothing.
            state.progress = None
            try:
                self._save(state)
            except OSError as save_exc:
                # The log's failure is the news: a full or read-only disk under the state
                # file must not turn it into a disk error (red team 27: exit 1, "No space
                # left on device", instead of 2, "LOG FAILED VERIFICATION").
                exc.add_note(
                    f"the state file could not be updated ({save_exc}): the next run resumes "
                    "from the progress saved before, which must verify again"
                )
            raise
        state.checkpoint, state.frontier, state.progress = latest.note, frontier, None
        self._save(state)
        return AuditResult(
            latest,
            previous,
            resumed,
            entries,
            bundles,
            self.tiles_checked,
            time.monotonic() - t0,
        )

    # -- the download loop ---------------------------------------------------------------

    def _check_tile(self, tile: Tile, hashes: Sequence[bytes]) -> None:
        data = self.fetch(tile)
        self.tiles_checked += 1
        if data != b"".join(hashes):
            raise VerificationError(f"{tile.path()} differs from the hashes of the entries")

    def _download(
        self, state: AuditState, frontier: TileFrontier, pending: list[str]
    ) -> tuple[int, int]:
        """Extend ``frontier`` to the last pending checkpoint, checking everything on the way.

        ``frontier`` and ``pending`` are updated in place. Returns (bundles, entries).
        """
        client = self.client
        targets = [client.verify_note(n) for n in pending]
        end = targets[-1].size
        start = frontier.size
        total = end - start
        first, last = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        # The frontier and the checkpoints still to match, at the last bundle boundary.
        good, good_targets = frontier.copy(), list(targets)
        last_save = time.monotonic()
        bundles = 0

        def save_progress() -> None:
            state.progress = Progress(good, [t.note for t in good_targets])
            self._save(state)

        def full_tile(level: int, index: int, hashes: list[bytes]) -> None:
            self._check_tile(Tile(level, index), hashes)

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="audit-fetch")
        window: deque[tuple[int, int, Future[bytes], Future[bytes]]] = deque()
        next_bundle = first
        try:
            for j in range(first, last + 1):
                while next_bundle <= last and len(window) < 4 * self.workers:
                    w = min(TILE_WIDTH, end - next_bundle * TILE_WIDTH)
                    window.append(
                        (
                            next_bundle,
                            w,
                            pool.submit(self.fetch, Tile(-1, next_bundle, w)),
                            pool.submit(self.fetch, Tile(0, next_bundle, w)),
                        )
                    )
                    next_bundle += 1
                _, width, f_bundle, f_tile = window.popleft()
                entries = decode_entry_bundle(f_bundle.result(), width)
                tile0 = f_tile.result()
                bundles += 1
                self.tiles_checked += 1
                hashes = [_sha256(LEAF_PREFIX + e).digest() for e in entries]
                if tile0 != b"".join(hashes):
                    raise VerificationError(
                        f"{Tile(0, j, width).path()} differs from the leaf hashes of "
                        f"{Tile(-1, j, width).path()}"
                    )
                skip = frontier.size - j * TILE_WIDTH
                if skip and hashes[:skip] != frontier.levels[0]:
                    raise VerificationError(
                        f"entries below {frontier.size} changed since they were audited "
                        f"({Tile(-1, j, width).path()})"
                    )
                new = hashes[skip:]
                pos = 0
                while targets and targets[0].size <= frontier.size + len(new) - pos:
                    cut = targets[0].size - frontier.size + pos
                    frontier.append(new[pos:cut], full_tile)
                    pos = cut
                    if frontier.root() != targets[0].root_hash:
                        raise VerificationError(
                            f"the entries do not hash to the root of the log's checkpoint "
                            f"of size {targets[0].size}"
                        )
                    targets.pop(0)
                frontier.append(new[pos:], full_tile)
                good, good_targets = frontier.copy(), list(targets)
                if good_targets and time.monotonic() - last_save >= self.save_interval:
                    save_progress()
                    last_save = time.monotonic()
                if self.progress is not None:
                    self.progress(frontier.size - start, total)
            for tile, hashes in frontier.partial_tiles():
                self._check_tile(tile, hashes)
        except (VerificationError, FormatError):
            raise
        except BaseException:
            if good_targets:
                save_progress()
            raise
        finally:
            for item in window:
                item[2].cancel()
                item[3].cancel()
            pool.shutdown(wait=True, cancel_futures=True)
        if targets:  # pragma: no cover - the loop reaches the last target by construction
            raise AssertionError("audit ended before the checkpoint's size")
        return bundles, total
