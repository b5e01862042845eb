"""A durable local outbox for SCIM audit events: SQLite in WAL mode, ``synchronous=FULL``.

The adapter (:mod:`client.adapters.middleware`) writes every event here *before* it releases the
SCIM response; a relay (:mod:`client.adapters.relay`) delivers queued events to the log and marks
them delivered by ``eid``. The log deduplicates by ``eid``, so delivering an event twice
(crash between the log's answer and :meth:`Outbox.mark_delivered`) creates no second leaf.

Durability contract: the future returned by :meth:`Outbox.add` resolves only after the
SQLite transaction holding the events has committed with ``synchronous=FULL`` (the WAL is
fsynced before the commit returns). Writes go through one writer thread that commits
everything queued at that moment in one transaction (group commit), so concurrent requests
share an fsync. A failed transaction fails every job in it with :class:`OutboxError`; jobs
are then retried one by one so that one bad job cannot fail the others.

Safe for concurrent use from any thread. One outbox file per process is the intended use:
two processes sharing a file stay correct (the log deduplicates) but both relays send.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import logging
import mmap
import os
import queue
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
import uuid as _uuid
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from client.runtime.durable import fsync_dir, fsync_path, gone_read_only

__all__ = [
    "Canonical",
    "IntentJournal",
    "OrphanedIntents",
    "Outbox",
    "OutboxError",
    "OutboxRecord",
    "Pending",
    "Receipt",
]

_log = logging.getLogger("client.adapters.outbox")

PENDING, DELIVERED, REJECTED = 0, 1, 2
_MAX_GROUP = 256  # jobs per group commit
_WATCH_S = 1.0  # an idle writer checks this often that its files are still in place
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    eid        TEXT NOT NULL UNIQUE,
    req        TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    state      INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    done_ms    INTEGER,
    receipt    TEXT,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS events_state ON events (state, seq);
CREATE INDEX IF NOT EXISTS events_req ON events (req);
CREATE TABLE IF NOT EXISTS probe (x BLOB);
"""
# The quota's count, kept in the file itself: the bytes of undelivered bodies (state != 1),
# whoever wrote them (two adapters sharing one outbox count each other's events). Triggers
# keep it in the same statement as the change, so it is exact whichever process commits;
# made (and filled from the rows already there) in one transaction at the first open.
_QUOTA_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS quota (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO quota (id, bytes)
    SELECT 0, COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE state != 1;
CREATE TRIGGER IF NOT EXISTS events_quota_ins AFTER INSERT ON events WHEN NEW.state != 1
BEGIN
    UPDATE quota SET bytes = bytes + LENGTH(NEW.body) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS events_quota_upd AFTER UPDATE OF state, body ON events
BEGIN
    UPDATE quota SET bytes = bytes
        + (CASE WHEN NEW.state != 1 THEN LENGTH(NEW.body) ELSE 0 END)
        - (CASE WHEN OLD.state != 1 THEN LENGTH(OLD.body) ELSE 0 END) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS events_quota_del AFTER DELETE ON events WHEN OLD.state != 1
BEGIN
    UPDATE quota SET bytes = bytes - LENGTH(OLD.body) WHERE id = 0;
END;
COMMIT;
"""


class OutboxError(Exception):
    """The outbox could not durably store (or update) what was asked; nothing was committed."""


class Canonical(NamedTuple):
    """An event's canonical CBOR and its actor as sent, made by the adapter from the JSON
    form it queues (``client.adapters.exchange.validated_event_canonical``): what the relay's
    commitment check would otherwise decode that JSON again for
    (``client.adapters.receipts.check_commitments``)."""

    cbor: bytes
    actor: dict[str, Any]


@dataclass(frozen=True)
class OutboxRecord:
    """One event to queue: its ``eid``, its ``corr.req`` and its JSON form (validated);
    ``canon``, when the builder has it, the event's :class:`Canonical` form (kept in memory
    for the relay, never stored)."""

    eid: str
    req: str
    body: str
    canon: Canonical | None = None


# The canonical forms handed to the relay (Outbox.handed): bounded, oldest dropped first.
# A miss (dropped, or an event queued before a restart) costs the relay one decode of the
# event's JSON, nothing else.
_HANDED_MAX = 4096
_HANDED_BYTES = 16 << 20


@dataclass(frozen=True)
class Pending:
    """A queued, not yet delivered event. ``write`` names the write it records (its
    request id and intent): the events of one write (a request split into linked parts, a
    ``/Bulk``'s operations) share it, and are delivered in one batch (:meth:`Outbox.pending`)."""

    seq: int
    eid: str
    body: str
    attempts: int
    write: str = ""


@dataclass(frozen=True)
class Receipt:
    """What the log answered for one event: where it is and the checkpoint of that batch."""

    eid: str
    index: int
    leaf_hash: str  # standard base64, as the log's JSON carries it
    tree_size: int
    checkpoint: str
    duplicate: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        d = json.loads(text)
        return cls(**d)


_str_json = json.encoder.encode_basestring_ascii


def _receipts_json(receipts: Sequence[Receipt]) -> list[str]:
    """:meth:`Receipt.to_json` of each receipt, the same text: a batch's receipts share
    one checkpoint, whose JSON is written once, and the rest is assembled in key order
    (``tests/adapters/test_outbox_one_insert.py`` holds it equal, hypothesis). Anything
    but the plain field types goes through ``to_json`` itself."""
    cps: dict[str, str] = {}
    out: list[str] = []
    for r in receipts:
        cp_text, eid, lh = r.checkpoint, r.eid, r.leaf_hash
        if not (
            type(r) is Receipt
            and type(r.index) is int
            and type(r.tree_size) is int
            and type(r.duplicate) is bool
            and type(cp_text) is str
            and type(eid) is str
            and type(lh) is str
        ):
            out.append(r.to_json())
            continue
        cp = cps.get(cp_text)
        if cp is None:
            cp = cps[cp_text] = _str_json(cp_text)
        out.append(
            '{"checkpoint":' + cp + ',"duplicate":' + ("true" if r.duplicate else "false")
            + ',"eid":' + _str_json(eid) + ',"index":' + str(r.index)
            + ',"leaf_hash":' + _str_json(lh) + ',"tree_size":' + str(r.tree_size) + "}"
        )  # fmt: skip
    return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_Fn = Callable[[sqlite3.Connection], Any]
_Job = tuple[_Fn, "Future[Any]"]
_Settle = Callable[[Any, "BaseException | None"], None]


def _future_settle(fut: Future[Any]) -> _Settle:
    def settle(result: Any, exc: BaseException | None) -> None:
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)

    return settle


_NOT_COMMITTED = OutboxError("the outbox writer did not commit this add")
_INSERT = "INSERT OR IGNORE INTO events (eid, req, body, created_ms, intent) VALUES (?, ?, ?, ?, ?)"
_MAX_ROWS_PER_INSERT = 200  # 1000 parameters, far below SQLite's limit


@functools.lru_cache(maxsize=_MAX_ROWS_PER_INSERT)
def _insert_sql(rows: int) -> str:
    """One ``INSERT`` of ``rows`` rows: ``_INSERT``'s ``executemany`` as one statement."""
    return _INSERT + ", (?, ?, ?, ?, ?)" * (rows - 1)


class _AddJob:
    """The job of one :meth:`Outbox.add`: its rows, inserted under the quota. Called as a
    job (inside the writer's transaction) or, in a group of adds only, folded into one
    statement by :meth:`Outbox._commit_adds`."""

    __slots__ = ("outbox", "rows", "size")

    def __init__(self, outbox: Outbox, rows: list[tuple[str, str, str, int, str | None]]) -> None:
        self.outbox = outbox
        self.rows = rows
        self.size = sum(len(r[2]) for r in rows)

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.outbox._check_quota(conn, self.size)
        if conn.executemany(_INSERT, self.rows).rowcount != len(self.rows):
            # An event already stored (same eid) is ignored, its bytes not stored: counted
            # anyway, the quota would fill up with nothing queued.
            self.outbox._recount(conn)


class _MarkJob:
    """The job of :meth:`Outbox.mark_delivered`: the receipts stored, the bodies dropped.
    A group made of these jobs alone commits without an ``fsync`` (``synchronous =
    NORMAL``, see :meth:`Outbox._synchronous`): a mark a machine crash loses only sends its
    events again, and the log answers them as duplicates whose receipts the relay verifies."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[tuple[int, str, str]]) -> None:
        self.rows = rows

    def __call__(self, conn: sqlite3.Connection) -> None:
        # (the quota's count follows by trigger; _commit reads it again each group)
        conn.executemany(
            "UPDATE events SET state = 1, done_ms = ?, receipt = ?, error = NULL, body = '' "
            "WHERE eid = ?",
            self.rows,
        )


class _LoopGroup:
    """The adds one asyncio event loop made during one of its iterations
    (:meth:`Outbox.add_async`): committed with whatever else is queued, then settled on
    their loop in one callback."""

    __slots__ = ("fns", "futs", "loop", "outcomes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fns: list[Callable[[sqlite3.Connection], Any]] = []
        self.futs: list[asyncio.Future[None]] = []
        self.outcomes: list[BaseException | None] = []

    def add(self, fn: Callable[[sqlite3.Connection], Any], fut: asyncio.Future[None]) -> None:
        self.fns.append(fn)
        self.futs.append(fut)
        # Until the commit settles it, an add counts as failed (never durable by default).
        self.outcomes.append(_NOT_COMMITTED)

    def entries(self) -> list[tuple[Callable[[sqlite3.Connection], Any], _Settle]]:
        out: list[tuple[Callable[[sqlite3.Connection], Any], _Settle]] = []
        for i, fn in enumerate(self.fns):

            def settle(_: Any, exc: BaseException | None, i: int = i) -> None:
                self.outcomes[i] = exc

            out.append((fn, settle))
        return out

    def fail_all(self, exc: BaseException) -> None:
        self.outcomes = [exc] * len(self.fns)

    def done(self) -> None:
        """From the writer thread, after the commit: settle the futures on their loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self.resolve)

    def resolve(self) -> None:
        for fut, exc in zip(self.futs, self.outcomes, strict=True):
            if fut.done():  # the waiting request was cancelled; the events are stored anyway
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(OutboxError(str(exc)) if exc is _NOT_COMMITTED else exc)


class _ProbeJob:
    """The job of :meth:`Outbox.probe`: an fsynced write of ``size`` bytes, removed again."""

    __slots__ = ("outbox", "size")

    def __init__(self, outbox: Outbox, size: int) -> None:
        self.outbox = outbox
        self.size = size

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.outbox._check_quota(conn, self.size, count=False)
        conn.execute("INSERT INTO probe (x) VALUES (zeroblob(?))", (self.size,))
        conn.execute("DELETE FROM probe")


# The jobs refused once the outbox file was removed or replaced (Outbox._moved): what would
# acknowledge an event, or say that one could be acknowledged now.
_ADDS = (_AddJob, _ProbeJob)

_Item = _Job | _LoopGroup


def _size(item: _Job | _LoopGroup) -> int:
    return len(item.fns) if isinstance(item, _LoopGroup) else 1


# A row of the copy's events (every column, the intent one included) that the attached
# outbox "there" lacks or has otherwise; an error where "there" is no such outbox.
_MISSING_THERE = """
SELECT 1 FROM main.events m LEFT JOIN there.events t ON t.seq = m.seq
WHERE t.seq IS NULL
   OR (m.eid, m.req, m.body, m.created_ms, m.state, m.attempts, m.done_ms, m.receipt,
       m.error, m.intent)
      IS NOT (t.eid, t.req, t.body, t.created_ms, t.state, t.attempts, t.done_ms, t.receipt,
       t.error, t.intent)
LIMIT 1
"""


def _uri(path: Path, query: str) -> str:
    """SQLite's ``file:`` URI of ``path`` with ``query`` (its open mode)."""
    return "file:" + urllib.parse.quote(str(path.absolute())) + query


def _holds_every_event(there: Path, copy: Path) -> bool:
    """Whether the outbox file ``there`` has every row of ``copy``'s ``events`` table, each
    as it is in ``copy`` (both opened read-only; anything unreadable or not an outbox: no).
    One pass over the copy's rows, each looked up by its ``seq`` (the rowid): no sort, no
    temporary copy of the event bodies. Only a regular file is opened: a FIFO put there
    would block the open (and the adapter's stop) until someone writes to it."""
    try:
        if not stat.S_ISREG(os.stat(there).st_mode):
            return False
    except OSError:
        return False
    try:
        # immutable: the copy is this process's own file, not yet linked anywhere
        conn = sqlite3.connect(_uri(copy, "?immutable=1"), uri=True, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        conn.execute("ATTACH DATABASE ? AS there", (_uri(there, "?mode=ro"),))
        missing = conn.execute(_MISSING_THERE).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return missing is None


class Outbox:
    """A SQLite-backed queue of audit events (see the module docstring for the contract).

    ``max_bytes`` is a quota on the event bodies not yet delivered (queued or rejected):
    an add that would go beyond it fails with :class:`OutboxError`, exactly as on a full
    disk, which fail-closed adapters turn into 503. Only adds are refused, so the relay can
    always mark events delivered and free space. Delivered rows lose their body at once
    (the log has it; plaintext event data does not linger locally) and keep their receipt
    for ``keep_delivered`` seconds.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int | None = None,
        keep_delivered: float = 86400.0,
    ) -> None:
        self.path = Path(path)
        self.keep_delivered = keep_delivered
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._loop_group: _LoopGroup | None = None  # adds of this event-loop iteration
        # eid -> (the JSON form queued, its Canonical form): see handed()
        self._handed: dict[str, tuple[str, Canonical]] = {}
        self._handed_bytes = 0
        self._handed_lock = threading.Lock()
        self._closed = False
        self.max_bytes = max_bytes
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the opened file
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._wal_ident: tuple[int, int] | None = None  # and of its WAL (open from now on)
        self._gone_said = False
        self._gone_folded = False
        self._rescued = False  # the moved files handled once (_watch): folded, written back
        self._journal: IntentJournal | None = None  # opened by intents()
        # Set when the file system said read-only right after a commit (_in_doubt): adds
        # and probes are refused, and readiness fails, until a restart (the commit, and
        # every one after it, may be dropped by SQLite's recovery at the next start).
        self.in_doubt: str | None = None
        # The queued events are plaintext (personal data): owner-only, like a key file.
        # SQLite gives the -wal and -shm files the database file's permissions.
        existed = os.path.lexists(self.path)
        try:
            self._owner_only()
            conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from None
        except OutboxError:
            if not existed:  # not in WAL mode: leave no empty file of ours behind
                with contextlib.suppress(OSError):
                    self.path.unlink()
            raise
        try:
            conn.executescript(_SCHEMA)
            if (
                conn.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events_quota_del'"
                ).fetchone()[0]
                == 0
            ):
                conn.executescript(_QUOTA_SCHEMA)
            _add_intent_column(conn)
            self._queued: int | None = None  # bytes of undelivered bodies (writer thread)
            with contextlib.suppress(OSError):
                st = os.stat(self._wal)
                self._wal_ident = (st.st_dev, st.st_ino)
        except sqlite3.Error as exc:
            conn.close()
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._writer_conn = conn
        self._lazy = False  # the writer's synchronous is NORMAL (marks only): _synchronous
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    def _owner_only(self) -> None:
        """Create the outbox file owner-only, and make an existing one (and its -wal and -shm
        files) owner-only if it was not: it holds personal data in plaintext."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            st = os.fstat(fd)
            self._ident = (st.st_dev, st.st_ino)
            loose = st.st_mode & 0o077
            if loose:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for side in ("-wal", "-shm"):
            p = self.path.with_name(self.path.name + side)
            if p.exists() and p.stat().st_mode & 0o077:
                p.chmod(0o600)
                loose = loose or 1
        if loose:
            _log.warning("the outbox was readable by group or others: made owner-only (0600)")

    def _connect(self, *, create: bool = True) -> sqlite3.Connection:
        # A reader (create=False) opens the file only if it is there: never a fresh, empty
        # database where the outbox was removed (see _moved).
        target: str | Path = self.path
        if not create:
            target = _uri(self.path, "?mode=rw")
        conn = sqlite3.connect(
            target, isolation_level=None, check_same_thread=False, timeout=30.0, uri=not create
        )
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # SQLite answers the mode it kept when it cannot switch (an in-memory
                # database, e.g. an outbox named ":memory:", answers "memory": every add
                # acknowledged and gone with the process). Every promise here assumes WAL:
                # FULL's fsync of the WAL at each commit, and the marks' NORMAL commits,
                # which in a rollback journal may corrupt the file on power loss.
                raise OutboxError(
                    f"the outbox {self.path} is not in WAL mode (SQLite kept journal_mode "
                    f"{mode!r}): it must be a file on a local file system SQLite can keep a "
                    "write-ahead log beside"
                )
            # FULL: in WAL mode the WAL is fsynced at every commit, so a committed add
            # survives power loss (NORMAL would only survive an application crash).
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise OutboxError("outbox is closed")
            if self._moved():
                raise OutboxError(self._gone())
            try:
                conn = self._connect(create=False)
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the outbox {self.path}: {_safe(exc)}") from None
            if self._moved():  # replaced between the check and the open
                conn.close()
                raise OutboxError(self._gone())
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _moved(self) -> bool:
        """Whether the path no longer names the file this outbox opened, or its ``-wal``
        path the WAL it has open (removed, or replaced by another file). SQLite would go on
        writing into the open, unlinked file, acknowledging adds that no later start finds
        (a removed WAL: that a crash loses): such adds are refused instead."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self._ident:
                return True
            if self._wal_ident is not None:
                st = os.stat(self._wal)
                return (st.st_dev, st.st_ino) != self._wal_ident
        except OSError:
            return True
        return False

    def _fold(self, conn: sqlite3.Connection) -> None:
        """Once the files moved: copy what the open WAL holds into the database file
        (a checkpoint), so that the commits acknowledged before a WAL was removed are in the
        file a restart reads, not only in an unlinked WAL that a crash loses."""
        if self._gone_folded:
            return
        self._gone_folded = True
        try:
            conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        except sqlite3.Error as exc:
            _log.error("outbox checkpoint after its files moved failed: %s", _safe(exc))

    def _watch(self, conn: sqlite3.Connection) -> None:
        """While idle (writer thread): files removed or replaced with no add or mark after
        it (which would notice, :meth:`_commit`), then a crash, lost what the open WAL
        held (and so did a clean stop). Checked every ``_WATCH_S`` and at the stop: the WAL
        is folded into the file, and a database file gone from its path is written back
        (:meth:`_rescue`)."""
        if self._rescued or not self._moved():
            return
        self._rescued = True
        self._fold(conn)
        self._gone()
        self._rescue(conn)

    def _rescue(self, conn: sqlite3.Connection) -> None:
        """The database file itself no longer at its path: a copy of what the open
        connection holds (every queued event) is written back there, so the next start
        finds it; a file another has put at the path is never touched, and the copy goes
        beside it (``<name>.rescued-<unix time>``), unless that file already holds every
        event of the copy: another adapter sharing this outbox wrote the same database back
        first, and one copy is enough (:meth:`_rescue_target`). Only the WAL gone: nothing
        to do (the fold put it in the file)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            return
        else:
            if (st.st_dev, st.st_ino) == self._ident:
                return
        tmp = self.path.with_name(f".{self.path.name}.rescue-{os.getpid()}-{_uuid.uuid4().hex}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.backup(dst)
            finally:
                dst.close()
            fsync_path(tmp)
            while True:
                target, write = self._rescue_target(tmp)
                if not write:
                    break
                try:
                    os.link(tmp, target)  # never over a file that is there by now
                except FileExistsError:
                    continue  # another adapter sharing the outbox, just now: what it wrote?
                fsync_dir(self.path.parent)
                break
        except (OSError, sqlite3.Error) as exc:
            _log.error(
                "the outbox file %s was removed or replaced while in use, and writing back "
                "what it held failed: %s; the events it held are only in this process until "
                "it stops",
                self.path,
                _safe(exc),
            )
            return
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not write:
            _log.error(
                "the outbox file %s was removed or replaced while in use; %s already holds "
                "everything this adapter held (another adapter sharing the outbox wrote it "
                "back): no copy written; restart the adapter%s",
                self.path,
                target,
                "" if target == self.path else f" with that file moved to {self.path}",
            )
            return
        _log.error(
            "the outbox file %s was removed or replaced while in use: what this adapter held "
            "was written to %s; restart the adapter%s",
            self.path,
            target,
            "" if target == self.path else f" with that file moved to {self.path}",
        )

    def _rescue_target(self, copy: Path) -> tuple[Path, bool]:
        """Where ``copy`` (what this process held) goes, and whether it is to be written
        there: the path, if nothing is there; nowhere (the file that holds it, not to be
        written), if the file at the path or a copy beside it (``<name>.rescued-*``) holds
        every event of the copy as the copy has it (two adapters sharing one outbox both
        rescue the same database: the first writes it, the second finds it); else beside
        the path, under a name no file has (``<name>.rescued-<unix time>``, ``-2``, ``-3``
        if two copies are made within a second). Decided on the content, not on who wrote
        a file, so an event only this process holds is never dropped."""
        if not os.path.lexists(self.path):
            return self.path, True
        stem = f"{self.path.name}.rescued-"
        beside = sorted(
            p
            for p in self.path.parent.iterdir()
            if p.name.startswith(stem) and not p.name.endswith(("-wal", "-shm", "-journal"))
        )
        for held in (self.path, *beside):
            if _holds_every_event(held, copy):
                return held, False
        at = f"{stem}{int(time.time())}"
        target, n = self.path.with_name(at), 1
        while os.path.lexists(target):
            n += 1
            target = self.path.with_name(f"{at}-{n}")
        return target, True

    def _gone(self) -> str:
        msg = (
            f"the outbox file {self.path} (or its -wal) was removed or replaced while in use: "
            "adds are refused (they would be lost at the next start); restart the adapter to "
            "open it again (events already queued stay deliverable until then)"
        )
        if not self._gone_said:
            self._gone_said = True
            _log.error("%s", msg)
        return msg

    # --- the writer thread -------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._writer_conn
        while True:
            try:
                first = self._jobs.get(timeout=_WATCH_S)
            except queue.Empty:
                self._watch(conn)
                continue
            if first is None:
                break
            group = [first]
            size = _size(first)
            stop = False
            while size < _MAX_GROUP:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                size += _size(nxt)
            self._commit(conn, group)
            if stop:
                break
        self._watch(conn)  # a clean stop after the file was removed: written back first
        conn.close()
        while True:  # jobs that raced with close()
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _LoopGroup):
                job.fail_all(OutboxError("outbox is closed"))
            elif job is not None and job[1].set_running_or_notify_cancel():
                job[1].set_exception(OutboxError("outbox is closed"))

    def _commit(self, conn: sqlite3.Connection, group: list[_Item]) -> None:
        # The quota counts the file, not this process: read again once a group (another
        # process sharing the outbox may have added or delivered since).
        self._queued = None
        live: list[tuple[_Fn, _Settle]] = []
        loops: list[_LoopGroup] = []
        for item in group:
            if isinstance(item, _LoopGroup):
                loops.append(item)
                live.extend(item.entries())
            elif item[1].set_running_or_notify_cancel():
                live.append((item[0], _future_settle(item[1])))
        try:
            if live and self._moved():
                # folded and written back now, once (the idle check must not take the
                # fold for the rescue: the file's events would be lost at the next stop)
                self._watch(conn)
                gone = OutboxError(self._gone())
                for fn, settle in live:
                    if type(fn) in _ADDS:
                        settle(None, gone)
                live = [(fn, settle) for fn, settle in live if type(fn) not in _ADDS]
            if live and self.in_doubt is not None:
                doubt = OutboxError(self.in_doubt)
                for fn, settle in live:
                    if type(fn) in _ADDS:
                        settle(None, doubt)
                live = [(fn, settle) for fn, settle in live if type(fn) not in _ADDS]
            self._commit_live(conn, live)
        except Exception as exc:  # a bug: fail what is unsettled, keep the writer alive
            _log.exception("outbox writer error")
            self._queued = None
            for item in group:
                if not isinstance(item, _LoopGroup) and not item[1].done():
                    item[1].set_exception(_as_outbox_error(exc))
        finally:
            for g in loops:
                g.done()

    def _commit_live(self, conn: sqlite3.Connection, live: list[tuple[_Fn, _Settle]]) -> None:
        if not live:
            return
        self._synchronous(conn, all(type(fn) is _MarkJob for fn, _ in live))
        if all(type(fn) is _AddJob for fn, _ in live):
            live = self._commit_adds(conn, live)
            if not live:
                return
        try:
            results = self._run(conn, [fn for fn, _ in live])
        except Exception as exc:
            self._queued = None  # the rolled back jobs may have counted bytes: recount
            if len(live) == 1:
                live[0][1](None, _as_outbox_error(exc))
                return
            for fn, settle in live:  # isolate the failing job(s)
                try:
                    res = self._run(conn, [fn])[0]
                except Exception as exc1:
                    self._queued = None
                    settle(None, _as_outbox_error(exc1))
                else:
                    settle(res, None)
            return
        doubt = self._in_doubt()
        for (_, settle), res in zip(live, results, strict=True):
            settle(res, doubt)

    def _in_doubt(self) -> OutboxError | None:
        """After a commit SQLite says is durable: an error if the outbox's file system says
        it is read-only now (:func:`client.runtime.durable.gone_read_only`: a commit that
        needed no new block, a WAL frame over an existing WAL, is answered 0 by the fsync
        of ext4 gone read-only after an error, on older kernels), so nothing of it is
        acknowledged and the caller fails closed as after any failed add. Sticky
        (:attr:`in_doubt`): what this process's connection reads now may not be what the
        disk holds, and SQLite's recovery at the next start may drop this commit and every
        one after it, so no add or probe is taken again until a restart, even once the file
        system takes writes again. A ``statvfs`` that fails itself (an I/O error, the
        directory removed) is as much in doubt."""
        try:
            gone = gone_read_only(self.path)
        except OSError as exc:
            gone = exc
        if gone is None:
            return None
        self._queued = None
        self.in_doubt = (
            f"the outbox's commit may not be on its disk ({gone}): no event is added until "
            "a restart (events already queued stay deliverable until then). Check the file "
            "system (an I/O error?), remount it read-write and restart the adapter"
        )
        _log.error("outbox commit not acknowledged: %s", self.in_doubt)
        return OutboxError(self.in_doubt)

    def _commit_adds(
        self, conn: sqlite3.Connection, live: list[tuple[_Fn, _Settle]]
    ) -> list[tuple[_Fn, _Settle]]:
        """A group of adds only (the common group): each add's quota checked in order,
        then every row in one ``INSERT`` statement, committed on its own (autocommit: one
        durable commit, one release of the GIL instead of three statements' worth).
        Returns what is left to :meth:`_commit_live`'s general path: nothing, or the whole
        group when an add is over the quota (there it fails alone) or the statement failed
        (rolled back; retried there, one by one if need be)."""
        accepted: list[tuple[_Fn, _Settle]] = []
        params: list[Any] = []
        rows = 0
        for fn, settle in live:
            assert type(fn) is _AddJob
            try:
                self._check_quota(conn, fn.size)
            except Exception:  # over the quota, or the count failed: the general path
                self._uncount(accepted)  # decides for the whole group, as before
                return live
            accepted.append((fn, settle))
            rows += len(fn.rows)
            for row in fn.rows:
                params.extend(row)
        if not accepted:
            return []
        if rows == 0 or rows > _MAX_ROWS_PER_INSERT:
            self._uncount(accepted)  # the general path counts them again
            return accepted
        try:
            stored = conn.execute(_insert_sql(rows), params).rowcount
        except Exception:
            self._uncount(accepted)  # counted above, not stored
            if conn.in_transaction:  # pragma: no cover - autocommit rolls itself back
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return accepted
        if stored != rows:
            self._recount(conn)  # events already stored were ignored: see _AddJob
        doubt = self._in_doubt()
        for _, settle in accepted:
            settle(None, doubt)
        return []

    def _synchronous(self, conn: sqlite3.Connection, marks_only: bool) -> None:
        """``synchronous = NORMAL`` for a group of marks alone, ``FULL`` for anything else.

        In WAL mode NORMAL commits without an ``fsync`` of the WAL: the commit is atomic
        and survives the process's crash, and a machine crash may take it back (not the
        file: SQLite syncs the WAL before each checkpoint). The next ``FULL`` commit's
        ``fsync`` (every add's) makes the marks before it durable too. A mark taken back
        leaves its events pending: sent again, answered by the log as duplicates with their
        receipts, verified, marked again. Nothing else goes without its ``fsync``: an add is
        acknowledged only once durable, a probe is an fsynced write by definition, and a
        group where a mark shares the commit with adds is FULL (the mark rides their
        ``fsync``). Switched only when the kind of group changes; a failed switch back to
        FULL fails the group (nothing acknowledged) and is tried again at the next one."""
        if marks_only != self._lazy:
            conn.execute(
                "PRAGMA synchronous = NORMAL" if marks_only else "PRAGMA synchronous = FULL"
            )
            self._lazy = marks_only

    def _uncount(self, adds: list[tuple[_Fn, _Settle]]) -> None:
        """Take back what :meth:`_check_quota` counted for ``adds`` (not stored)."""
        if self.max_bytes is not None and self._queued is not None:
            self._queued -= sum(fn.size for fn, _ in adds if type(fn) is _AddJob)

    @staticmethod
    def _run(
        conn: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> list[Any]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [fn(conn) for fn in fns]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return results

    def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        if self._closed:
            fut.set_exception(OutboxError("outbox is closed"))
            return fut
        self._jobs.put((fn, fut))
        return fut

    # --- writes ------------------------------------------------------------------------------

    def add(self, records: Sequence[OutboxRecord], intent: str | None = None) -> Future[None]:
        """Queue events; the future resolves once they are durable (or fails: OutboxError).
        ``intent`` names the write-ahead intent they answer (``<journal>:<number>``), kept
        with them so that recovery knows it was answered (:meth:`answered`).

        Adding an ``eid`` that is already there is a no-op (the first body stays).
        """
        return self._submit(self._add_job(records, intent))

    def _add_job(self, records: Sequence[OutboxRecord], intent: str | None = None) -> _AddJob:
        now = _now_ms()
        self._hand(records)
        return _AddJob(self, [(r.eid, r.req, r.body, now, intent) for r in records])

    def _hand(self, records: Sequence[OutboxRecord]) -> None:
        """Keep the records' canonical forms for :meth:`handed` (the first for an eid stays,
        as its first body does in the file)."""
        with self._handed_lock:
            kept = self._handed
            for r in records:
                c = r.canon
                if c is None or r.eid in kept:
                    continue
                kept[r.eid] = (r.body, c)
                self._handed_bytes += len(c.cbor)
            while kept and (len(kept) > _HANDED_MAX or self._handed_bytes > _HANDED_BYTES):
                self._handed_bytes -= len(kept.pop(next(iter(kept)))[1].cbor)

    def handed(self, eids: Sequence[str]) -> dict[str, tuple[str, Canonical]]:
        """The canonical forms kept for these events, with the JSON form each was made from
        (the caller uses one only for that same JSON): those not kept are left out."""
        with self._handed_lock:
            kept = self._handed
            return {e: kept[e] for e in eids if e in kept}

    def _unhand(self, eids: Sequence[str]) -> None:
        with self._handed_lock:
            kept = self._handed
            for e in eids:
                got = kept.pop(e, None)
                if got is not None:
                    self._handed_bytes -= len(got[1].cbor)

    async def add_async(self, records: Sequence[OutboxRecord], intent: str | None = None) -> None:
        """:meth:`add` for a caller on an asyncio event loop: returns once the events are
        durable (raises :class:`OutboxError` if they could not be stored).

        The adds made during one iteration of the loop go to the writer thread together, as
        one hand-over (one queue put, at most one wake-up of the writer), and come back
        together: after their group commit one ``call_soon_threadsafe`` settles them all. A
        burst of concurrent requests so costs the loop a list append each, not a
        thread-safe future, a queue put and a cross-thread wake-up each. Each add is still
        its own job in the commit (a refused one, e.g. over the quota, fails alone)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._closed:
            raise OutboxError("outbox is closed")
        group = self._loop_group
        if group is None or group.loop is not loop:
            group = self._loop_group = _LoopGroup(loop)
            loop.call_soon(self._hand_over, group)
        group.add(self._add_job(records, intent), fut)
        await fut

    def _hand_over(self, group: _LoopGroup) -> None:
        if self._loop_group is group:
            self._loop_group = None
        if self._closed:
            group.fail_all(OutboxError("outbox is closed"))
            group.resolve()
            return
        self._jobs.put(group)

    def put(
        self,
        records: Sequence[OutboxRecord],
        timeout: float | None = None,
        intent: str | None = None,
    ) -> None:
        """:meth:`add` and wait: durable when this returns."""
        self.add(records, intent).result(timeout)

    def probe(self, size: int = 8192) -> Future[None]:
        """A committed, fsynced write of ``size`` bytes, then removed: could an event of that
        size be added now?"""

        return self._submit(_ProbeJob(self, size))

    def _recount(self, conn: sqlite3.Connection) -> None:
        """Count the bytes of undelivered bodies again (what ``max_bytes`` bounds)."""
        if self.max_bytes is None:
            return
        # The triggers' count (_QUOTA_SCHEMA): O(1), and it holds the other writers' events.
        row = conn.execute("SELECT bytes FROM quota WHERE id = 0").fetchone()
        self._queued = 0 if row is None else int(row[0])

    def _check_quota(self, conn: sqlite3.Connection, incoming: int, count: bool = True) -> None:
        if self.max_bytes is None:
            return
        if self._queued is None:
            self._recount(conn)
        assert self._queued is not None
        if self._queued + incoming > self.max_bytes:
            raise OutboxError(f"outbox full ({self.max_bytes} bytes of undelivered events)")
        if count:
            self._queued += incoming

    def mark_delivered(self, receipts: Sequence[Receipt]) -> Future[None]:
        """Record the log's receipts; the events are no longer pending."""
        now = _now_ms()
        rows = [
            (now, text, r.eid) for r, text in zip(receipts, _receipts_json(receipts), strict=True)
        ]
        self._unhand([r.eid for r in receipts])
        return self._submit(_MarkJob(rows))

    def note_failure(
        self, eids: Sequence[str], error: str, *, reject: bool = False
    ) -> Future[None]:
        """Count a failed attempt; ``reject`` moves the events out of the queue for good
        (the log refused them as malformed: an operator must look at them)."""
        now = _now_ms()
        state = REJECTED if reject else PENDING
        if reject:
            self._unhand(eids)
        rows = [(state, now if reject else None, error[:2000], eid) for eid in eids]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE events SET attempts = attempts + 1, state = ?, done_ms = ?, error = ? "
                "WHERE eid = ? AND state = 0",
                rows,
            )

        return self._submit(job)

    def prune(self) -> Future[int]:
        """Forget delivered events older than ``keep_delivered`` seconds; returns how many."""
        cutoff = _now_ms() - int(self.keep_delivered * 1000)

        def job(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM events WHERE state = 1 AND done_ms <= ?", (cutoff,))
            return int(cur.rowcount)

        return self._submit(job)

    # --- reads -------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query on this thread's reader; a SQLite error (a damaged file)
        is an :class:`OutboxError` whose text holds none of the file's data."""
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read the outbox {self.path}: {_safe(exc)}") from None

    def pending(self, limit: int = 1000, max_bytes: int | None = None) -> list[Pending]:
        """The oldest queued events, in the order they were added, at most ``limit`` of
        them and ``max_bytes`` of bodies, never cut inside the events of one write (its
        linked parts: :attr:`Pending.write`). The log commits a batch whole, so a request's
        parts reach it together or not at all: a relay killed, or stopped for good, between
        two batches never leaves the log with some of a request's parts, which would read
        as the whole request until the rest came (if ever). A write whose events alone
        exceed the limits is cut, as before."""
        rows = self._read(
            "SELECT seq, eid, body, attempts, req, intent FROM events WHERE state = 0 "
            "ORDER BY seq LIMIT ?",
            (limit + 1,),
        )
        out: list[Pending] = []
        size = 0
        for seq, eid, body, attempts, req, intent in rows:
            size += len(body) + 1
            write = f"{req}\n{intent or ''}"
            if len(out) == limit or (out and max_bytes is not None and size > max_bytes):
                # cut here: inside a write's events, end the batch before that write
                keep = len(out)
                while keep and out[keep - 1].write == write:
                    keep -= 1
                return out[:keep] if keep else out
            out.append(Pending(int(seq), str(eid), str(body), int(attempts), write))
        return out

    def pending_tenants(self) -> dict[str | None, int]:
        """How many queued events each tenant has (None: a body without one): the log takes
        a batch only if all its events are of the token's tenant."""
        rows = self._read(
            "SELECT CASE WHEN json_valid(body) THEN json_extract(body, '$.tenant') END, "
            "COUNT(*) FROM events WHERE state = 0 GROUP BY 1"
        )
        return {None if t is None else str(t): int(n) for t, n in rows}

    def counts(self) -> dict[str, int]:
        """Number of events per state: ``pending``, ``delivered``, ``rejected``."""
        rows = self._read("SELECT state, COUNT(*) FROM events GROUP BY state")
        got = {int(s): int(n) for s, n in rows}
        return {
            "pending": got.get(PENDING, 0),
            "delivered": got.get(DELIVERED, 0),
            "rejected": got.get(REJECTED, 0),
        }

    def backlog(self) -> dict[str, int | None]:
        """What is not yet in the log: ``pending`` events, their ``pending_bytes``, and the
        age of the oldest in ms (``oldest_ms``, None when empty); ``rejected`` events.
        :class:`OutboxError` when the file was removed or replaced, or a commit was found
        in doubt (:attr:`in_doubt`): adds are refused."""
        if self._moved():
            raise OutboxError(self._gone())
        if self.in_doubt is not None:
            raise OutboxError(self.in_doubt)
        (row,) = self._read(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created_ms) FROM events "
            "WHERE state = ?",
            (PENDING,),
        )
        ((rejected,),) = self._read("SELECT COUNT(*) FROM events WHERE state = ?", (REJECTED,))
        oldest = None if row[2] is None else max(0, _now_ms() - int(row[2]))
        return {
            "pending": int(row[0]),
            "pending_bytes": int(row[1]),
            "oldest_ms": oldest,
            "rejected": int(rejected),
        }

    def receipt(self, eid: str) -> Receipt | None:
        """The log's receipt for a delivered event, if it is still kept."""
        rows = self._read("SELECT receipt FROM events WHERE eid = ? AND state = 1", (eid,))
        return Receipt.from_json(rows[0][0]) if rows and rows[0][0] else None

    def events_for_request(self, req: str) -> list[tuple[str, int]]:
        """``(eid, state)`` of the events recorded for one ``corr.req``, oldest first."""
        rows = self._read("SELECT eid, state FROM events WHERE req = ? ORDER BY seq", (req,))
        return [(str(e), int(s)) for e, s in rows]

    # --- write-ahead intents ------------------------------------------------------------------

    @property
    def intents_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".intents")

    @property
    def closed(self) -> bool:
        return self._closed

    def queued(self) -> int:
        """Jobs (adds, probes, marks) queued for the writer thread and not taken yet (the
        one it commits now not counted): what a shutdown on a stalled disk leaves."""
        return self._jobs.qsize()

    def intents(self, *, durable: bool = False, wait: bool = True) -> IntentJournal:
        """This outbox user's intent journal, opened (and locked) at the first call
        (``durable``: see :meth:`IntentJournal.synced`; the first call decides).
        Raises :class:`OutboxError` when it cannot be opened, and with ``wait=False`` (an
        event loop) when another thread is opening it: that thread may be held by a
        stalled disk, and the loop must not wait behind it (review 38)."""
        journal = self._journal
        if journal is None:
            if not self._readers_lock.acquire(blocking=wait):
                raise OutboxError(
                    "cannot open the intent journal: another thread is opening it (its "
                    "disk may not answer)"
                )
            try:
                journal = self._journal
                if journal is None:
                    try:
                        self._intents_dir_ready()
                        journal = self._journal = IntentJournal(self.intents_dir, durable=durable)
                    except OSError as exc:
                        raise OutboxError(f"cannot open the intent journal: {exc}") from None
            finally:
                self._readers_lock.release()
        return journal

    def _intents_dir_ready(self) -> None:
        """The journal directory, made owner-only (0700, also when it was there before);
        a symlink, something else than a directory, or another user's is refused."""
        d = self.intents_dir
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{d} is not a directory of this user (a symlink is refused)")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)

    def orphaned_intents(self) -> list[OrphanedIntents]:
        """The journals of adapter instances that are gone (their lock is free), each with
        the intents they began and did not finish, locked by the caller until it settles or
        releases them. Journals of live instances (this one's too) are left alone.

        Only what an :class:`IntentJournal` makes is read: ``<32 hex>.lock`` and
        ``<32 hex>.{0,1}.jsonl``, regular files owned by this user, opened without
        following a symbolic link, each at most :data:`_JOURNAL_READ_MAX` bytes. Anything
        else in the directory (a foreign name, a symlink, a FIFO, another user's file, a
        huge file) is skipped and logged as an error, never read: a name such as ``*.lock``
        would otherwise have globbed a live adapter's journal, and a symlink or FIFO could
        make start-up read another file or wait for ever."""
        out: list[OrphanedIntents] = []
        try:
            names = sorted(os.listdir(self.intents_dir))
        except OSError:
            return out
        own = self._journal.id if self._journal is not None else None
        for name in names:
            if name.endswith(".lock.new") and _JOURNAL_ID(name.removesuffix(".lock.new")):
                _drop_stale_fresh_lock(self.intents_dir / name)
                continue
            if not name.endswith(".lock"):
                if not _JOURNAL_NAME(name):
                    _log.error("intent journal directory: skipped %r (not a journal file)", name)
                continue
            ident = name.removesuffix(".lock")
            if not _JOURNAL_ID(ident):
                _log.error("intent journal directory: skipped %r (not a journal lock)", name)
                continue
            if ident == own:
                continue
            lock_path = self.intents_dir / name
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                _log.error("intent journal lock %s skipped: %s", name, exc)
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    _log.error(
                        "intent journal lock %s skipped: not a regular file of this user", name
                    )
                    os.close(fd)
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live instance holds it
                os.close(fd)
                continue
            if not lock_path.exists():  # settled by another start-up meanwhile
                os.close(fd)
                continue
            paths = [self.intents_dir / f"{ident}.{k}.jsonl" for k in (0, 1)]
            intents, damaged = _read_journal_checked(paths)
            out.append(OrphanedIntents(ident, paths, intents, lock_path, fd, damaged))
        return out

    def answered(self, req: str, since_ms: int, intent: str | None = None) -> bool:
        """Whether the answer of the write-ahead intent ``intent`` (``<journal>:<number>``)
        of request ``req``, begun at ``since_ms``, was recorded (the kill came between the
        outbox commit and the journal's "done"): an event of that request carries that
        intent. Only an event stored without an intent (by a version before review14, or
        added without one) is matched by request id and time instead (added at or after
        ``since_ms``), which a wall clock stepped back or a request id reused by a client
        can mislead; never an event of another intent."""
        if intent is None:
            rows = self._read(
                "SELECT 1 FROM events WHERE req = ? AND created_ms >= ? LIMIT 1", (req, since_ms)
            )
        else:
            rows = self._read(
                "SELECT 1 FROM events WHERE req = ? AND "
                "(intent = ? OR (intent IS NULL AND created_ms >= ?)) LIMIT 1",
                (req, intent, since_ms),
            )
        return bool(rows)

    def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close(remove=True)
        self._jobs.put(None)
        self._writer.join()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- write-ahead intents ------------------------------------------------------------------------

_INTENTS_SIZE = 1 << 18  # bytes of each of a journal's two files (more if what is in flight needs)
_JSON_LINE = msgspec.json.Encoder().encode
# A journal file read at recovery is at most this large (a journal grows past 256 KiB only as
# far as twice what is in flight needs; a larger file is not read, and is logged).
_JOURNAL_READ_MAX = 1 << 28
_JOURNAL_ID = re.compile(r"[0-9a-f]{32}").fullmatch
_JOURNAL_NAME = re.compile(r"[0-9a-f]{32}\.[01]\.jsonl").fullmatch
# Journal format 2 (redteam9): each file starts with this line, and each line ends with its
# check, ``,"c":"<crc32 of the line without it, hex>"}`` (the CRC of the JSON object the
# line was before the check was put in: ``{...}``). A file without the header and without a
# checked line is format 1 (a version before), read as before, unchecked.
_HEADER = b'{"v":2}\n'
_CHECKED = re.compile(rb'(.*),"c":"([0-9a-f]{8})"\}').fullmatch


def _checked(doc_json: bytes) -> bytes:
    """A journal line (format 2): the JSON object ``doc_json`` with its check put in."""
    return doc_json[:-1] + b',"c":"%08x"}\n' % zlib.crc32(doc_json)


def _done_line(iid: int) -> bytes:
    return _checked(b'{"d":%d}' % iid)


class IntentJournal:
    """This adapter instance's write-ahead intents: before a write goes to the SP the adapter
    appends one line (:meth:`begin`), and once the write's events are in the outbox (or
    there are none) another (:meth:`done`). What a kill leaves begun and not done, the next
    start-up (or a live adapter sharing the outbox, :meth:`Outbox.orphaned_intents`, run
    periodically) turns into events whose outcome says the SP's answer is not known.

    One journal per running instance, ``<outbox>.intents/<id>.{0,1}.jsonl``, held under an
    exclusive ``flock`` on ``<id>.lock`` for the instance's lifetime: recovery takes only
    journals whose lock it can take (their writer is gone), never the intents another live
    process sharing the outbox has in flight.

    The lines go into a shared memory map of a preallocated file: a copy into the page
    cache, no system call, so it survives a kill of the process as soon as it is made (not a
    machine crash: nothing is fsynced, see docs/scim-adapter.md), and the event loop never
    waits on the file system's journal, as an appending ``write(2)`` can while the outbox's
    fsync runs. When a file is full the journal switches to the other one and first copies
    into it the intents still in flight. The other file is emptied and its blocks allocated
    ahead, by a thread (``_prepare``) started as soon as the journal left it (everything
    still needed is then in the file being written): the switch itself is a copy into a
    map, no file system call on the event loop, unless the preparation failed or has not
    finished yet (then it is done, or waited for, there). A file is emptied only once the
    other holds everything still needed.

    Each line carries a CRC-32 (format 2, ``_HEADER``): a line damaged into another valid
    intent is found and skipped, loudly (:func:`_read_journal_checked`). A line cut short
    by a kill is not complete and is skipped: it was a begin not yet acknowledged (nothing
    forwarded) or a done (the outbox then says whether the answer was recorded). Called
    from the adapter's event loop; a lock makes it safe from other threads."""

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        self.id = _uuid.uuid4().hex
        # Durable mode (:meth:`synced`): an intent is on disk before its write is forwarded.
        self.durable = durable
        self.paths = (directory / f"{self.id}.0.jsonl", directory / f"{self.id}.1.jsonl")
        self._lock_path = directory / f"{self.id}.lock"
        # Locked under another name, then renamed: a start-up that lists the directory
        # never sees this lock free (it would take it as a dead instance's, and settle,
        # i.e. remove, it: this journal would then have no lock file and its intents
        # would never be recovered after a kill).
        fresh = directory / f"{self.id}.lock.new"
        self._lock_fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        # Set when the file system said read-only right after a flush (durable mode): the
        # lines flushed may be in the page cache only, so no intent is begun (nor a line
        # written) until a restart, even once the file system takes writes again.
        self.in_doubt: str | None = None
        self._fds: list[int | None] = [None, None]
        self._maps: list[mmap.mmap | None] = [None, None]
        # The other file's preparation (_prepare): its thread, and what it raised.
        self._spare: threading.Thread | None = None
        self._spare_error: BaseException | None = None
        self._cur = 0
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, self._lock_path)
            self._map_empty(0, _INTENTS_SIZE)
            # both files there from the start (the second is prepared by a thread)
            self._fds[1] = os.open(self.paths[1], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            if durable:  # the files and the lock's name on disk before any intent is
                fd0 = self._fds[0]
                assert fd0 is not None
                os.fdatasync(fd0)
                fsync_dir(directory)
                fsync_dir(directory.parent)  # the journal directory's own name
        except BaseException:
            self._close_files()
            os.close(self._lock_fd)
            for p in (*self.paths, self._lock_path, fresh):  # nothing of a journal that never was
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise
        self._off = len(_HEADER)
        self._open: dict[int, bytes] = {}  # intent number -> its line, while in flight
        # The writer's own (_write_loop): the begun lines written and whose done is not, the
        # ones a switch of file copies.
        self._kept: dict[int, bytes] = {}
        self._n = 0  # the last line queued (a begun intent's number is its line's)
        self._mutex = threading.Lock()
        self._closed = False
        # The lines queued for the writer: (number, intent, line, begun).
        self._queue: list[tuple[int, int, bytes, bool]] = []
        # A line queued that the writer must write at once (every line but a recorded done).
        self._prompt = False
        # The event loop whose iteration ends with a wake-up of the writer (:meth:`_signal`).
        self._kick_loop: asyncio.AbstractEventLoop | None = None
        # Lines up to ``_written`` are in the file (page cache), up to ``_synced`` on disk
        # (durable mode; ``_written`` otherwise); what waits for them (:meth:`synced`,
        # :meth:`begin`), each with whether it waits for the flush.
        self._written = 0
        self._synced = 0
        self._gen = 0
        self._waiters: list[tuple[int, _Waiter, bool]] = []
        self._wake = threading.Condition(self._mutex)
        self._busy_since: float | None = None  # monotonic start of the writer's current I/O
        # The _busy_since of the I/O during which a wait of synced failed (:meth:`stalled`).
        self._stall_seen: float | None = None
        self.flushes = 0  # flushes made (durable mode): fewer than the intents when shared
        # The bounds of the waits of :meth:`synced` (one timer, not one a write), on the
        # event loop that waits last.
        self._watchdog: _Watchdog | None = None
        self._writer = threading.Thread(
            target=self._write_loop, name="intent-journal-writer", daemon=True
        )
        self._writer.start()
        self._prepare(1, _INTENTS_SIZE)

    @property
    def path(self) -> Path:
        """The file being written now."""
        return self.paths[self._cur]

    def begin(self, doc: dict[str, Any], *, wait: bool = True) -> int:
        """Append an intent (``doc``, JSON-able; its number ``"i"`` is set here, unique in
        this journal) and return its number. The line is queued for the journal's writer
        thread (:meth:`_write_loop`); ``wait``: this returns once it is written, and raises
        OSError when it could not be. Without ``wait`` (the event loop, which must never
        wait on the file system: red team 27, a stalled disk froze the whole proxy), await
        :meth:`synced` before forwarding the write."""
        with self._mutex:
            if self._closed:
                raise OSError("the intent journal is closed")
            if self.in_doubt is not None:
                raise OSError(errno.EROFS, self.in_doubt)
            self._n += 1
            iid = self._n
            doc["i"] = iid
            line = _checked(_JSON_LINE(doc))
            self._queue.append((iid, iid, line, True))
            self._open[iid] = line
            self._prompt = True
            self._signal(wait)
        if wait:
            self._wait_written(iid)
        return iid

    def done(self, iid: int, *, wait: bool = True, recorded: bool = False) -> None:
        """The intent's events are recorded (or there are none): it yields nothing later.
        Its line is queued for the writer; ``wait``: this returns once it was written (or
        failed: logged, the intent stays, a restart says "unknown" for it).

        ``recorded`` (without ``wait``): the intent's events are in the outbox under its key
        (:meth:`Outbox.add_async`), so a kill before this line is written leaves nothing to
        recover (recovery finds the key, :meth:`Outbox.answered`): the line does not wake
        the writer on its own but goes with the next round, the next intent's (under load,
        one round a write rather than two), or at most ``_LAZY_WAIT`` seconds later."""
        with self._mutex:
            if self._closed or self._open.pop(iid, None) is None:
                return
            self._n += 1
            n = self._n
            self._queue.append((n, iid, _done_line(iid), False))
            if recorded and not wait:
                return
            self._prompt = True
            self._signal(wait)
        if wait:
            with contextlib.suppress(OSError):
                self._wait_written(n)

    def _signal(self, wait: bool) -> None:
        """Under the mutex, a line queued: wake the writer. From an event loop (``wait``
        false), once at the end of the loop's iteration for every line queued in it (one
        wake-up and one round of the writer for the writes of an iteration, not one each);
        otherwise at once. A wake-up lost with its loop (closed first) costs at most
        ``_LAZY_WAIT`` when the writer is in a timed wait (it is while intents are kept);
        one that found the writer idle (nothing kept, nothing queued before) waits for the
        next notify or the close: only the closed loop's own request, which is gone, waited
        for it (review 38)."""
        if not wait:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                if self._kick_loop is not loop:
                    self._kick_loop = loop
                    loop.call_soon(self._kick)
                return
        self._wake.notify()

    def _kick(self) -> None:
        with self._mutex:
            self._kick_loop = None
            self._wake.notify()

    def _wait_written(self, n: int) -> None:
        """Block until line ``n`` is written (OSError: it could not be)."""
        fut: Future[None] = Future()
        with self._mutex:
            if n <= self._written:
                return
            self._waiters.append((n, fut, False))
        fut.result()

    def written(self, iid: int) -> bool:
        """Whether intent ``iid``'s line is in the file (the page cache) already."""
        return iid <= self._written

    def stalled(self, bound: float) -> bool:
        """Whether the writer's current write or flush is held (a stalled file system):
        for more than ``bound`` seconds, or long enough that a wait of :meth:`synced` for it
        failed (:class:`IntentStalled`: a write was refused for it, and a health check made
        after that answer says so, whichever began first, the write's wait or the I/O)."""
        since = self._busy_since
        if since is None:
            return False
        return since == self._stall_seen or time.monotonic() - since > bound

    def held_for(self) -> float:
        """Seconds the writer's current write or flush has been held (0.0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def in_flight(self) -> int:
        return len(self._open)

    def intent(self, iid: int) -> dict[str, Any] | None:
        """Intent ``iid`` as begun, while it is in flight (None once done)."""
        with self._mutex:
            line = self._open.get(iid)
        m = None if line is None else _CHECKED(line.rstrip(b"\n"))
        if m is None:
            return None
        doc: dict[str, Any] = json.loads(m[1] + b"}")
        return doc

    async def synced(self, iid: int, timeout: float | None = None) -> None:
        """Return once intent ``iid`` (begun) is in the journal: written into the file (the
        page cache: it survives a kill of the process), and in durable mode on disk (it
        survives a machine crash too). Awaited on the event loop, which it never blocks:
        the writer thread (:meth:`_write_loop`) writes every line queued, in one go, and
        flushes (``fdatasync``) for every forward waiting then (group commit). Raises
        OSError when the write or flush failed (the intent may not be there: nothing must
        be forwarded), the journal is closed, or ``timeout`` seconds passed first
        (:class:`IntentStalled`: a stalled file system holds the writer)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._mutex:
            if self._closed:
                raise OSError("the intent journal is closed")
            if iid <= self._synced:
                return
            if len(self._waiters) > 1024:  # those a stall timed out: nothing settles them
                self._waiters = [w for w in self._waiters if not w[1].done()]
            self._waiters.append((iid, fut, self.durable))
            # A line still queued is the writer's already (woken for it; the round that
            # writes it flushes for the waiters then). Only one written and not flushed
            # needs the writer woken again, for its flush.
            if self.durable and iid <= self._written:
                self._wake.notify()
        if timeout is not None:
            watch = self._watchdog
            if watch is None or watch.loop is not loop:
                watch = self._watchdog = _Watchdog(loop, self._stalled_wait)
            watch.add(fut, timeout)
        await fut

    def _stalled_wait(self) -> None:
        """A wait of :meth:`synced` failed at its bound (on the loop): the writer's I/O now
        is a stalled one (:meth:`stalled`)."""
        self._stall_seen = self._busy_since

    def _write_loop(self) -> None:
        """The journal's writer thread: it writes every line queued since its last round
        into the file, in one copy into the memory map (``ctypes.memmove``: the GIL is
        released, so a page fault that waits for a stalled file system stops this thread
        only, never the event loop nor the process's other threads), then, in durable mode
        while forwards wait (:meth:`synced`), flushes the file being written (``fdatasync``:
        the pages dirtied since the last flush, in one call however many intents), and
        settles every waiter whose line is written (flushed), in one callback per event
        loop. At close, what is queued is written first."""
        while True:
            with self._mutex:
                while not self._closed and not self._prompt and not self._to_flush():
                    # An intent written and not done may be done without a notify (a
                    # recorded done): then wait only a while, and write what came.
                    lazy = self._kept or self._queue
                    if not self._wake.wait(_LAZY_WAIT if lazy else None) and self._queue:
                        break
                if self._closed and not self._queue:
                    _settle_waiters(self._waiters, OSError("the intent journal is closed"))
                    self._waiters = []
                    return
                batch, self._queue = self._queue, []
                self._prompt = False
                self._busy_since = time.monotonic()
            failed: BaseException | None = None
            top = batch[-1][0] if batch else self._written
            flush = False
            try:
                if batch and self.in_doubt is not None:
                    raise OSError(errno.EROFS, self.in_doubt)
                if batch:
                    self._append(b"".join(b[2] for b in batch))
                    for _, iid, line, begun in batch:
                        if begun:
                            self._kept[iid] = line
                        else:
                            self._kept.pop(iid, None)
                    with self._mutex:
                        self._written = top
                if self.durable:
                    with self._mutex:
                        flush = any(w[2] and w[0] <= top for w in self._waiters)
                if flush:
                    fd = self._fds[self._cur]
                    if fd is None:
                        raise OSError("the intent journal file is not open")
                    os.fdatasync(fd)
                    # A flush into a file of fixed size writes over blocks it has: a file
                    # system gone read-only after an error (older kernels) answers it 0.
                    try:
                        gone = gone_read_only(fd)
                    except OSError as exc:  # statvfs itself failed: as much in doubt
                        gone = exc
                    if gone is not None:
                        self.in_doubt = (
                            f"the intent journal's flush may not be on its disk ({gone}): no "
                            "write is taken until a restart. Check the file system (an I/O "
                            "error?), remount it read-write and restart the adapter"
                        )
                        raise OSError(errno.EROFS, self.in_doubt)
            except BaseException as exc:  # given to the waiters (a blocking begin raises it)
                failed = exc
                _log.error("intent journal write failed: %r", exc)
            with self._mutex:
                self._busy_since = None
                if flush:
                    self.flushes += 1
                if failed is None and (flush or not self.durable):
                    self._synced = top
                ready: list[tuple[int, _Waiter, bool]] = []
                left: list[tuple[int, _Waiter, bool]] = []
                for w in self._waiters:
                    # failed: the lines of this batch (and the flush) may not be there
                    at = top if failed is not None or not w[2] else self._synced
                    (ready if w[0] <= at else left).append(w)
                self._waiters = left
            _settle_waiters(ready, failed)

    def _to_flush(self) -> bool:
        """Durable mode: a forward waits for a line written and not flushed yet."""
        return self.durable and any(w[2] and w[0] > self._synced for w in self._waiters)

    def _append(self, line: bytes) -> None:
        m = self._maps[self._cur]
        end = self._off + len(line)
        if m is None or end > len(m):
            self._switch(line)
            return
        _copy_into(m, self._off, line)
        self._off = end

    def _switch(self, line: bytes) -> None:
        """Copy the intents in flight into the other file (emptied ahead by ``_prepare``),
        append ``line``, write there from now on, and have the file just left prepared."""
        k = 1 - self._cur
        kept = b"".join(self._kept.values())
        at = len(_HEADER)
        need = at + len(kept) + len(line)
        size = _INTENTS_SIZE
        while size < 2 * need:
            size *= 2
        m = self._spare_map(k, size)
        self._hand_over(m, kept, line)
        self._cur, self._off = k, need
        self._gen += 1
        self._prepare(1 - k, size, after=k)

    def _spare_map(self, k: int, size: int) -> mmap.mmap:
        """File ``k``'s map, empty and at least ``size`` bytes: the one ``_prepare`` made
        (waited for if it runs still), or made here when it failed or is too small (an
        OSError then, e.g. a full disk, fails the append)."""
        t, self._spare = self._spare, None
        if t is not None:
            t.join()
        failed, self._spare_error = self._spare_error, None
        m = self._maps[k]
        if failed is not None or m is None or len(m) < size:
            if failed is not None and not isinstance(failed, OSError):
                _log.error("intent journal: preparing the next file failed: %r", failed)
            self._map_empty(k, size)
            m = self._maps[k]
            assert m is not None
        return m

    def _hand_over(self, m: mmap.mmap, kept: bytes, line: bytes) -> None:
        """Into the emptied map ``m`` (its header there): the intents in flight, then
        ``line``."""
        _copy_into(m, len(_HEADER), kept + line)

    def _prepare(self, k: int, size: int, *, after: int | None = None) -> None:
        """Empty and allocate file ``k`` (:meth:`_map_empty`) in a thread of its own: the
        journal no longer writes there, and the other file holds everything in flight.
        Durable mode, after a switch (``after``: the file switched to): that file is
        flushed first. Before red team 20 the file left was emptied (truncated, zeroed,
        flushed) beside the flusher's flush of the one switched to, in either order: a
        machine crash between them lost the intents in flight, whose writes the SP may
        have applied, from both files (strace showed the truncation first)."""
        fd = None if after is None or not self.durable else self._fds[after]

        def run() -> None:
            try:
                if fd is not None:
                    os.fdatasync(fd)
                self._map_empty(k, size)
            except BaseException as exc:  # the switch does it again, on its own thread
                self._spare_error = exc

        t = threading.Thread(target=run, name="intent-journal-prepare", daemon=True)
        self._spare = t
        t.start()

    def _map_empty(self, k: int, size: int) -> None:
        """File ``k`` emptied (zeros: the kernel drops its pages), ``size`` bytes, its blocks
        allocated (a first write to a page then allocates nothing), mapped, and its header
        written."""
        old = self._maps[k]
        if old is not None:
            old.close()
            self._maps[k] = None
        fd = self._fds[k]
        if fd is None:
            fd = os.open(self.paths[k], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            self._fds[k] = fd
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        # Allocated now, or a write into the map on a full disk would be a SIGBUS, not an
        # error: a full disk is an OSError here (begin fails: fail-closed answers 503).
        # Durable: the zeros written and flushed here (off the loop), so that a flush of an
        # intent writes data pages only; fallocate's blocks are "unwritten" until written,
        # and a flush there commits the file system's journal too (with the outbox's).
        if self.durable:
            _write_zeros(fd, size)
            os.fdatasync(fd)
        else:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                _write_zeros(fd, size)  # no fallocate here
        m = mmap.mmap(fd, size)
        _copy_into(m, 0, _HEADER)
        self._maps[k] = m

    def _close_files(self) -> None:
        t, self._spare = self._spare, None
        if t is not None:
            t.join()
        for k in (0, 1):
            m, fd = self._maps[k], self._fds[k]
            if m is not None:
                with contextlib.suppress(BufferError, ValueError):
                    m.close()
            if fd is not None:
                os.close(fd)
            self._maps[k] = None
            self._fds[k] = None

    def close(self, *, remove: bool) -> None:
        """Close the journal; ``remove`` (nothing in flight at a clean shutdown) deletes it."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._writer.join()  # it writes what is queued, fails the forwards still waiting
        with self._mutex:
            self._close_files()
            if remove and not self._open:
                for p in (*self.paths, self._lock_path):
                    with contextlib.suppress(OSError):
                        os.unlink(p)
            os.close(self._lock_fd)


class IntentStalled(OSError):
    """An intent was not written (flushed) within the bound: the journal's file system
    stalls (a frozen or hung disk)."""


def _expire(fut: asyncio.Future[None], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(
            IntentStalled(f"not written within {timeout:g} s (the journal's disk stalls)")
        )


# Seconds at most a recorded intent's done line waits for a round of the journal's writer
# (:meth:`IntentJournal.done`) when no other line wakes it.
_LAZY_WAIT = 0.05
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution  # the loops' clock


class _Watchdog:
    """The time bounds of :meth:`IntentJournal.synced`'s waits on one event loop, with one
    timer for them all rather than one a write (``call_later`` and its cancel, per write,
    were a measurable part of the journal's cost: proxy29). The waits are kept in the order
    they began; the timer is armed for the earliest deadline among them and, when it fires,
    fails every wait past its deadline (:class:`IntentStalled`), forgets the ones settled
    (or cancelled) meanwhile and is armed again for the earliest left, if any. A wait thus
    fails at its deadline as a timer of its own would fail it (the loop's clock, the same
    ``call_at``); only the bookkeeping is shared."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self.loop = loop
        self._on_expiry = on_expiry  # called before the waits past their bound fail
        self._waits: collections.deque[tuple[float, asyncio.Future[None], float]] = (
            collections.deque()
        )
        self._timer: asyncio.TimerHandle | None = None

    def add(self, fut: asyncio.Future[None], timeout: float) -> None:
        waits = self._waits
        while waits and waits[0][1].done():  # settled in the order begun, mostly
            waits.popleft()
        deadline = self.loop.time() + timeout
        waits.append((deadline, fut, timeout))
        timer = self._timer
        if timer is None or deadline < timer.when():  # (a shorter bound than those before)
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # (the loop runs a timer up to its clock's resolution early: a wait due within it
        # fails now rather than arming the timer again for it)
        now = self.loop.time() + _CLOCK_RESOLUTION
        left: collections.deque[tuple[float, asyncio.Future[None], float]] = collections.deque()
        if any(not f.done() and d <= now for d, f, _ in self._waits):
            self._on_expiry()
        for w in self._waits:
            deadline, fut, timeout = w
            if fut.done():
                continue
            if deadline <= now:
                _expire(fut, timeout)
            else:
                left.append(w)
        self._waits = left
        if left:
            self._timer = self.loop.call_at(min(w[0] for w in left), self._fire)


def _copy_into(m: mmap.mmap, at: int, data: bytes) -> None:
    """``data`` into map ``m`` at ``at`` with ``ctypes.memmove``, which releases the GIL:
    a page fault waiting for a frozen file system (``page_mkwrite``) then holds this thread
    only (mmap's slice assignment copies holding it: every thread stopped, red team 27)."""
    if at < 0 or at + len(data) > len(m):
        raise ValueError("out of the journal file's map")
    buf = (ctypes.c_char * len(m)).from_buffer(m)
    try:
        ctypes.memmove(ctypes.addressof(buf) + at, data, len(data))
    finally:
        del buf


def _write_zeros(fd: int, size: int) -> None:
    zeros = bytes(1 << 16)
    for at in range(0, size, len(zeros)):
        os.pwrite(fd, zeros[: min(len(zeros), size - at)], at)


_Waiter = asyncio.Future[None] | Future[None]


def _settle_waiters(
    waiters: Sequence[tuple[int, _Waiter, bool]], failed: BaseException | None
) -> None:
    """From the journal's writer thread: settle these waits, a forward's on its event
    loop, one callback per loop; a blocking :meth:`IntentJournal.begin`'s at once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, fut, _ in waiters:
        if isinstance(fut, Future):
            if failed is None:
                fut.set_result(None)
            else:
                fut.set_exception(failed)
            continue
        by_loop.setdefault(fut.get_loop(), []).append(fut)
    for loop, futs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_futures, futs, failed)


def _settle_futures(futs: list[asyncio.Future[None]], failed: BaseException | None) -> None:
    for fut in futs:
        if fut.done():  # the waiting request was cancelled
            continue
        if failed is None:
            fut.set_result(None)
        else:
            fut.set_exception(OSError(f"the intent could not be written: {failed}"))


@dataclass
class OrphanedIntents:
    """The intents a dead instance left begun and not done (:meth:`Outbox.orphaned_intents`),
    held under that instance's lock until :meth:`settle` (their events are committed) or
    :meth:`release`."""

    ident: str
    paths: list[Path]
    intents: list[dict[str, Any]]
    lock_path: Path
    lock_fd: int
    damaged: int = 0  # complete lines of the journal that failed their check (skipped)

    def settle(self) -> None:
        """Their events are in the outbox: remove the journal, then its lock."""
        for p in (*self.paths, self.lock_path):
            with contextlib.suppress(OSError):
                os.unlink(p)
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _read_journal(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The intents of a journal (its files) begun and not done, in the order begun
    (:func:`_read_journal_checked`, without the count of damaged lines)."""
    return _read_journal_checked(paths)[0]


def _read_journal_checked(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], int]:
    """The intents of a journal (its files) begun and not done, in the order begun, and
    how many complete lines were damaged (each skipped and logged as an error).

    A line is complete when its newline is there: what follows the last one is the zeros
    of the preallocated file, or a line a kill cut short (skipped quietly: a begin not yet
    acknowledged, or a done). A file of format 2 (``_HEADER`` first, or any checked line
    in it) must carry a valid check on every complete line: a bit flipped anywhere in a
    line (its number, request id, time, path, digest, or the check) is found, where the
    line alone may still be a valid intent. A file of format 1 (a version before: no
    header, no checked line) is read unchecked, as that version did; a complete line
    there that is not a JSON object is damaged too."""
    begun: dict[int, dict[str, Any]] = {}
    finished: set[int] = set()
    damaged = 0
    for path in paths:
        data = _read_journal_file(path)
        if data is None:
            continue
        complete = data.split(b"\n")[:-1]
        v2 = data.startswith(_HEADER) or any(_CHECKED(x) is not None for x in complete)
        for n, line in enumerate(complete, 1):
            if line == _HEADER[:-1]:
                continue
            doc: Any = None
            if v2:
                m = _CHECKED(line)
                if m is not None and zlib.crc32(m[1] + b"}") == int(m[2], 16):
                    with contextlib.suppress(ValueError):
                        doc = json.loads(m[1] + b"}")
            elif line[:1] == b"{":
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
            if not isinstance(doc, dict):
                damaged += 1
                _log.error(
                    "intent journal file %s: line %d is damaged (%s) and was skipped",
                    path.name,
                    n,
                    "its check does not match" if v2 else "not a JSON object",
                )
                continue
            if type(doc.get("d")) is int:
                finished.add(doc["d"])
            elif type(doc.get("i")) is int:
                begun.setdefault(doc["i"], doc)
    return [doc for i, doc in sorted(begun.items()) if i not in finished], damaged


def _add_intent_column(conn: sqlite3.Connection) -> None:
    """An outbox made before review14 gets the ``intent`` column (NULL in its rows; a
    version before it writes rows without one, which stay readable)."""
    cols = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if "intent" in cols:
        return
    try:
        conn.execute("ALTER TABLE events ADD COLUMN intent TEXT")
    except sqlite3.OperationalError as exc:  # another process added it meanwhile
        if "duplicate column" not in str(exc):
            raise


def _drop_stale_fresh_lock(path: Path) -> None:
    """A lock an instance was killed holding before it renamed it into place (no journal
    file of it can exist): removed once free."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        # Only an old one: a young one is an instance between its open and its flock.
        if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > 600:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
    except OSError:
        pass  # being set up by a live instance
    finally:
        os.close(fd)


def _read_journal_file(path: Path) -> bytes | None:
    """A journal file's bytes, or None (logged unless it does not exist) when it is not a
    regular file of this user (a symlink is not followed), or larger than
    :data:`_JOURNAL_READ_MAX`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _log.error("intent journal file %s skipped: %s", path.name, exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            _log.error("intent journal file %s skipped: not a regular file of this user", path.name)
            return None
        if st.st_size > _JOURNAL_READ_MAX:
            _log.error(
                "intent journal file %s skipped: %d bytes, more than a journal holds (%d)",
                path.name,
                st.st_size,
                _JOURNAL_READ_MAX,
            )
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(_JOURNAL_READ_MAX + 1)[:_JOURNAL_READ_MAX]
    except OSError as exc:
        _log.error("intent journal file %s skipped: %s", path.name, exc)
        return None
    finally:
        os.close(fd)


def _safe(exc: BaseException) -> str:
    """An SQLite error's text without the data some of them quote (sqlite3's "Could not
    decode to UTF-8 column 'body' with text '...'" holds a damaged row: an event's
    plaintext)."""
    text = str(exc)
    cut = text.find(" with text ")
    return (text if cut < 0 else text[:cut])[:200]


def _as_outbox_error(exc: Exception) -> OutboxError:
    if isinstance(exc, OutboxError):
        return exc
    _log.error("outbox write failed: %s", _safe(exc))
    err = OutboxError(f"outbox write failed: {_safe(exc)}")
    err.__cause__ = exc
    return err
