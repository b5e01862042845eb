"""Durable witness state in SQLite: the latest cosigned checkpoint per origin, and evidence.

One file, WAL journal, ``synchronous=FULL``: a call that returns has committed to disk. Each
operation opens its own connection, so the store is safe for concurrent use from many
threads and from several processes on the same file (``tlog-witness check`` next to
``serve``); SQLite's locks do the rest.

The rollback rule lives in :meth:`WitnessStore.compare_and_swap`: it replaces an origin's
checkpoint only if the stored (size, root) is still the one the caller verified against,
inside one ``BEGIN IMMEDIATE`` transaction, and never to a smaller size.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from client.formats.checkpoint import Checkpoint
from client.formats.note import FormatError, parse_note
from client.runtime.durable import gone_read_only

logger = logging.getLogger(__name__)

__all__ = [
    "Evidence",
    "ListedLog",
    "StateDamaged",
    "StateInDoubt",
    "StateUnusable",
    "StoredCheckpoint",
    "Suspicion",
    "WitnessStore",
    "check_row",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    origin     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL CHECK (size >= 0),
    root       BLOB NOT NULL CHECK (length(root) = 32),
    note       TEXT NOT NULL,      -- log signature(s) we verified + our cosignature only
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    origin      TEXT NOT NULL,
    peer        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detected_at INTEGER NOT NULL,
    our_note    TEXT NOT NULL,
    their_note  TEXT NOT NULL,
    detail      TEXT NOT NULL,     -- JSON: sizes, roots, the proof if any
    UNIQUE (origin, peer, our_note, their_note)
);
CREATE TABLE IF NOT EXISTS listed_logs (
    origin   TEXT PRIMARY KEY,     -- logs added from a logs/v0 list; never re-keyed
    vkey     TEXT NOT NULL,
    qpd      INTEGER,
    contact  TEXT,
    source   TEXT NOT NULL,
    added_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS suspicions (
    origin      TEXT NOT NULL,
    peer        TEXT NOT NULL,
    their_size  INTEGER NOT NULL,
    their_root  BLOB NOT NULL,
    rounds      INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    -- Per (origin, peer), not per size: a log that keeps refusing while the other side
    -- keeps growing must still run out of rounds.
    PRIMARY KEY (origin, peer)
);
"""


class StateUnusable(Exception):
    """The state database cannot be opened or is not a SQLite database (``tlog-witness``
    exits 3)."""


class StateDamaged(StateUnusable, sqlite3.DatabaseError):
    """A stored row disagrees with itself (a checkpoint's size or root columns with the
    signed note stored beside them): the state is damaged, which is never evidence against
    the log. A :class:`sqlite3.DatabaseError` too, so the server answers it like SQLite's
    own damage reports (503)."""


class StateInDoubt(sqlite3.OperationalError):
    """The state's file system said it was read-only right after a commit whose fsync
    answered success (:func:`client.runtime.durable.gone_read_only`): that commit may be in
    the page cache only, and what this process reads from the state may not be what the
    disk holds (a cosignature the disk lost, served or built on, then a different root
    cosigned at the same size after the restart: a split view of the witness's own making).
    Raised by that commit and by every later use of the store, read or write, until the
    process restarts (after the file system's repair). A :class:`sqlite3.OperationalError`,
    so every caller answers it as a state that cannot be used now (503)."""


@dataclass(frozen=True)
class StoredCheckpoint:
    origin: str
    size: int
    root_hash: bytes
    note: str
    updated_at: int


@dataclass(frozen=True)
class Evidence:
    """Proof that the log showed two inconsistent views. Both notes carry log signatures."""

    id: int
    origin: str
    peer: str
    reason: str
    detected_at: int
    our_note: str
    their_note: str
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "origin": self.origin,
            "peer": self.peer,
            "reason": self.reason,
            "detected_at": self.detected_at,
            "our_checkpoint": self.our_note,
            "their_checkpoint": self.their_note,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ListedLog:
    """A log provisioned from a ``logs/v0`` list (``tlog-witness pull-logs``)."""

    origin: str
    vkey: str
    qpd: int | None
    contact: str | None
    source: str
    added_at: int


@dataclass(frozen=True)
class Suspicion:
    """A comparison the log could not settle yet (it did not serve the proof)."""

    origin: str
    peer: str
    their_size: int
    their_root: bytes
    rounds: int
    first_seen: int
    reason: str


def check_row(stored: StoredCheckpoint) -> StoredCheckpoint:
    """The size and root columns, which every decision uses, must be the note's (which
    carries the log's signature and ours over them): SQLite keeps no checksums of rows, and
    a flipped bit in the root would otherwise make the log's next honest push look like a
    split view. (``tlog-witness check`` verifies the signatures too.)"""
    try:
        cp = Checkpoint.parse(parse_note(stored.note).text)
        same = cp.origin == stored.origin and (cp.size, cp.root_hash) == (
            stored.size,
            stored.root_hash,
        )
    except FormatError:
        same = False
    if not same:
        raise StateDamaged(
            f"the state database is damaged: the stored checkpoint of {stored.origin!r} "
            "disagrees with its own signed note (run 'tlog-witness check'; restore the state "
            "from a backup)"
        )
    return stored


def _stored(
    origin: object, size: object, root: object, note: object, at: object
) -> StoredCheckpoint:
    """A checkpoints row, its columns of their types (SQLite is dynamically typed: a
    damaged row can hold text where a number was), else :class:`StateDamaged` (a 503 to
    the push, counted in /metrics, reported by ``tlog-witness check``), not a crash."""
    if (
        type(origin) is not str
        or type(size) is not int
        or type(root) is not bytes
        or type(note) is not str
        or type(at) is not int
    ):
        raise StateDamaged(
            "the state database is damaged: a stored checkpoint row has a column of the "
            "wrong type (run 'tlog-witness check'; restore the state from a backup)"
        )
    return StoredCheckpoint(origin, size, root, note, at)


class WitnessStore:
    """SQLite-backed state. Every mutating method is durable when it returns."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self._timeout = timeout
        # One connection per thread, kept open: opening SQLite and setting its pragmas cost
        # more than the compare-and-swap itself.
        self._local = threading.local()
        # Every thread's connection, so close() can close them all (not left to the GC).
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        # Set when the file system said read-only right after a commit (StateInDoubt): every
        # use of the store is refused until a restart, as tlog serve's Storage.in_doubt.
        self.in_doubt: str | None = None
        try:
            if Path(self.path).stat().st_size == 0:
                # SQLite opens a zero-byte file as a new, empty database: the witness would
                # forget every checkpoint it cosigned and cosign another root at a size it
                # cosigned before. A new witness's state file does not exist yet.
                raise StateUnusable(
                    f"cannot use the state database {self.path}: it is empty (zero bytes: "
                    "a failed copy or restore?), and a witness that forgot what it cosigned "
                    "must not cosign. Restore it from a backup, or, for a new witness, "
                    "delete the file"
                )
        except FileNotFoundError:
            pass
        try:
            with self._connect() as conn:
                # WAL is a property of the file: set once, kept across opens.
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise RuntimeError(f"could not enable WAL on {self.path} (got {mode})")
                conn.executescript(_SCHEMA)
        except (sqlite3.Error, RuntimeError) as exc:
            self.close()
            raise StateUnusable(f"cannot use the state database {self.path}: {exc}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise RuntimeError(f"witness store {self.path} is closed")
        if self.in_doubt is not None:  # until a restart: the disk may differ from memory
            raise StateInDoubt(self.in_doubt)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the transaction
            # boundaries are exactly the ones written below. check_same_thread=False only so
            # that close() may close it from another thread; it is used by its own thread.
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=FULL")
            with self._conns_lock:
                if self._closed:
                    conn.close()
                    raise RuntimeError(f"witness store {self.path} is closed")
                self._conns.append(conn)
            self._local.conn = conn
        if conn.in_transaction:  # a failed call left one open: never carry it over
            conn.execute("ROLLBACK")
        changes = conn.total_changes
        yield conn
        if conn.total_changes != changes:
            # Something was committed and SQLite's fsync answered 0; on a file system gone
            # read-only after an error (older kernels) that says nothing: a WAL frame over
            # an existing WAL stays in the page cache. Not durable, so not returned; and
            # this connection (and every other of this process) now sees a row the disk
            # may not hold, which SQLite's recovery may drop at the next start with every
            # frame after it: nothing is read or written here again until a restart.
            try:
                gone = gone_read_only(self.path)
            except OSError as exc:  # statvfs itself failed (EIO, the directory removed)
                gone = exc
            if gone is not None:
                self.in_doubt = (
                    f"the state's file system went read-only under a commit ({gone}); what "
                    "this process holds may not be on the disk, so nothing is read, "
                    "cosigned or served until a restart. Check the file system (an I/O "
                    "error?), remount it read-write and restart the witness"
                )
                logger.critical("READ-ONLY FILE SYSTEM: %s (state %s)", self.in_doubt, self.path)
                raise StateInDoubt(self.in_doubt)

    def close(self) -> None:
        """Close every thread's connection. Idempotent; the store is unusable afterwards.

        Call it once the threads that used the store have stopped (a thread still inside a
        call would see its connection closed under it).
        """
        with self._conns_lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> WitnessStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pragma(self, name: str) -> object:
        """Read a PRAGMA on a fresh connection (for tests and ``check``)."""
        if not name.isidentifier():
            raise ValueError("bad pragma name")
        with self._connect() as conn:
            return conn.execute(f"PRAGMA {name}").fetchone()[0]

    # --- checkpoints --------------------------------------------------------------------

    def latest(self, origin: str) -> StoredCheckpoint | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT size, root, note, updated_at FROM checkpoints WHERE origin = ?",
                (origin,),
            ).fetchone()
        if row is None:
            return None
        return _stored(origin, *row)

    def all_latest(self) -> list[StoredCheckpoint]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT origin, size, root, note, updated_at FROM checkpoints ORDER BY origin"
            ).fetchall()
        return [_stored(*r) for r in rows]

    def compare_and_swap(
        self,
        origin: str,
        expected: tuple[int, bytes] | None,
        size: int,
        root_hash: bytes,
        note: str,
    ) -> bool:
        """Store (size, root, note) iff the current state is still ``expected``.

        ``expected`` is the (size, root) the caller verified against, or ``None`` for "no
        checkpoint stored yet". Returns False (and changes nothing) if another writer got
        there first, or if split-view evidence for ``origin`` was recorded meanwhile (in the
        same transaction: a frozen origin is never advanced). Raises ValueError on an
        attempt to shrink the tree, which the caller's checks must already have excluded.
        Durable when it returns True.
        """
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading
            try:
                row = conn.execute(
                    "SELECT size, root FROM checkpoints WHERE origin = ?", (origin,)
                ).fetchone()
                current = None if row is None else (int(row[0]), bytes(row[1]))
                frozen = conn.execute(
                    "SELECT 1 FROM evidence WHERE origin = ? LIMIT 1", (origin,)
                ).fetchone()
                if current != expected or frozen is not None:
                    conn.execute("ROLLBACK")
                    return False
                if current is not None and size < current[0]:
                    raise ValueError("refusing to roll back the stored tree size")
                conn.execute(
                    "INSERT INTO checkpoints (origin, size, root, note, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (origin) DO UPDATE SET size = excluded.size,"
                    " root = excluded.root, note = excluded.note,"
                    " updated_at = excluded.updated_at",
                    (origin, size, root_hash, note, int(time.time())),
                )
                conn.execute("COMMIT")
                return True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def replace_note(self, origin: str, size: int, root_hash: bytes, note: str) -> bool:
        """Replace the stored note of ``origin`` iff it still holds (size, root): the same
        checkpoint with more verified cosignature lines. Size, root and time stay. Durable
        when it returns True."""
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE checkpoints SET note = ? WHERE origin = ? AND size = ? AND root = ?",
                (note, origin, size, root_hash),
            )
            return cur.rowcount == 1

    # --- evidence -----------------------------------------------------------------------

    def record_evidence(
        self,
        origin: str,
        peer: str,
        reason: str,
        our_note: str,
        their_note: str,
        detail: str,
        detected_at: int,
    ) -> bool:
        """Store evidence durably; False if this exact pair was already recorded."""
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO evidence"
                " (origin, peer, reason, detected_at, our_note, their_note, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (origin, peer, reason, detected_at, our_note, their_note, detail),
            )
            return cur.rowcount == 1

    def evidence(self, origin: str | None = None) -> list[Evidence]:
        query = (
            "SELECT id, origin, peer, reason, detected_at, our_note, their_note, detail"
            " FROM evidence"
        )
        args: tuple[str, ...] = ()
        if origin is not None:
            query += " WHERE origin = ?"
            args = (origin,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [Evidence(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6], r[7]) for r in rows]

    def has_evidence(self, origin: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM evidence WHERE origin = ? LIMIT 1", (origin,))
            return row.fetchone() is not None

    # --- logs from log lists ---------------------------------------------------------------

    def add_listed_log(
        self,
        origin: str,
        vkey: str,
        qpd: int | None,
        contact: str | None,
        source: str,
        now: int,
    ) -> bool:
        """Add a listed log; False (and nothing changes) if the origin is already listed."""
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO listed_logs (origin, vkey, qpd, contact, source, added_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (origin, vkey, qpd, contact, source, now),
            )
            return cur.rowcount == 1

    def listed_log(self, origin: str) -> ListedLog | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT origin, vkey, qpd, contact, source, added_at FROM listed_logs"
                " WHERE origin = ?",
                (origin,),
            ).fetchone()
        return None if row is None else ListedLog(*row)

    def listed_logs(self) -> list[ListedLog]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT origin, vkey, qpd, contact, source, added_at FROM listed_logs"
                " ORDER BY origin"
            ).fetchall()
        return [ListedLog(*r) for r in rows]

    # --- suspicions (missing proofs, counted across rounds and restarts) -----------------

    def bump_suspicion(
        self, origin: str, peer: str, their_size: int, their_root: bytes, reason: str, now: int
    ) -> int:
        """Count one more round in which the log did not settle a comparison with ``peer``.

        Consecutive rounds add up (across restarts) until :meth:`clear_suspicions`, whatever
        size the peer shows in each round.
        """
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO suspicions"
                " (origin, peer, their_size, their_root, rounds, first_seen, reason)"
                " VALUES (?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (origin, peer) DO UPDATE SET rounds = rounds + 1,"
                " their_size = excluded.their_size, their_root = excluded.their_root,"
                " reason = excluded.reason",
                (origin, peer, their_size, their_root, now, reason),
            )
            row = conn.execute(
                "SELECT rounds FROM suspicions WHERE origin = ? AND peer = ?", (origin, peer)
            ).fetchone()
            conn.execute("COMMIT")
        return int(row[0])

    def clear_suspicions(self, origin: str, peer: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM suspicions WHERE origin = ? AND peer = ?", (origin, peer))

    def suspicions(self) -> list[Suspicion]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT origin, peer, their_size, their_root, rounds, first_seen, reason"
                " FROM suspicions ORDER BY origin, peer"
            ).fetchall()
        return [
            Suspicion(r[0], r[1], int(r[2]), bytes(r[3]), int(r[4]), int(r[5]), r[6]) for r in rows
        ]
