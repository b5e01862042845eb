"""PostgreSQL storage (``tlog serve --database postgresql://...``): the only module that
imports psycopg.

Schema (created on first open, in the connection's ``search_path``; one log per schema):

================== ======================================== ==================================
table              columns                                  holds
================== ======================================== ==================================
tlog_state         id = 1, tree_size, checkpoint, epoch     the sequencing state: ONE row
tlog_meta          key text, value                          origin, vkey, format
tlog_entries       idx bigint, data                         entry bytes
tlog_dedup         leaf_hash, idx                           full leaf hash -> index
tlog_tiles         level, idx, blob                         16,320-byte stratum blobs
tlog_checkpoints   size, note                               every signed checkpoint
tlog_cosignatures  size, lines                              cosignature lines per checkpoint
tlog_tokens        digest, record                           bearer token records
tlog_aux           key, value                               SCIM records, keys, search index
tlog_aux_writer    id = 1, fence, claims, holder            who may write tlog_aux: ONE row
================== ======================================== ==================================

The write contract of :mod:`tlog.backend`, here:

* a batch commits in ONE transaction that first locks the state row
  (``SELECT ... FOR UPDATE``) and checks the tree size and latest checkpoint it was built on
  (the compare of the compare-and-swap), then inserts entries and dedup keys (COPY; a
  duplicate key aborts the whole transaction), upserts the tiles, inserts the checkpoint
  and moves the state row (``epoch`` + 1). Any number of processes may do this at once: the
  row lock serialises them, and a loser gets :class:`CommitConflict` with nothing written;
* a batch's auxiliary records (``BatchWrite.aux``: the SCIM records of a group of single
  events) are written in that same transaction, right after the state row is locked, and
  only if the compare-and-swap moved it (``aux_in_batch``): the group's records and leaves
  are committed together, behind the same compare-and-swap and replication check, or not
  at all. Records written alone (``put_aux``) get the replication check too;
* the SCIM records are written by one process at a time: a frontend claims the writer
  fence (:meth:`PgStorage.claim_aux_writer`: a fresh random ``fence`` in the
  ``tlog_aux_writer`` row) before it reads what it stages, and every transaction that writes
  records carries that fence: it locks the row (``FOR SHARE``, so a claim waits for it) and
  writes nothing unless the fence is still the one it was staged under (:class:`AuxFenced`).
  Another frontend's claim thus stops every write staged before it, and everything committed
  under earlier claims is in the snapshots read after it: no frontend commits records staged
  on a read that another frontend's commit made stale;
* the frontends stage SCIM records one at a time, holding the *staging turn*
  (:meth:`PgStorage.hold_stage_turn`: a session advisory lock on a connection of its own)
  until their groups in flight are committed, so a claim normally refuses nothing; like the
  write turn, it is liveness only (the fence decides);
* nothing is acknowledged unless COMMIT returned. If the connection is lost while
  committing, the outcome is unknown: :class:`CommitUnknown`, and :class:`tlog.log.Log`
  hands the signature out only if it finds that exact checkpoint after reloading;
* the server must run with ``fsync = on`` (refused otherwise); every session runs with
  ``synchronous_commit = on`` (or the stronger ``remote_apply`` when the server has it).

Reads are REPEATABLE READ, READ ONLY transactions on a small connection pool: one snapshot per
:meth:`PgStorage.read`, as LMDB's read transactions are.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar
from weakref import WeakSet

import psycopg
import psycopg.abc
import psycopg.adapt
import psycopg.conninfo
import psycopg.errors
import psycopg.postgres
import psycopg.pq
import psycopg_pool

from tlog import backend
from tlog.backend import (
    TABLES,
    AuxFenced,
    BatchWrite,
    CommitConflict,
    CommitUnknown,
    DuplicateLeaves,
    NoLogStore,
    StorageCorrupt,
    StorageError,
    StorageFull,
    StoreNotHeld,
    StoreUnreachable,
    TurnTimeout,
    tile_key,
    u64,
)

__all__ = [
    "REPLICATION_MODES",
    "SCHEMA",
    "OperatorHold",
    "PgReadView",
    "PgStorage",
    "check_replication",
    "redact",
]

log = logging.getLogger("tlog.pg")

FORMAT_VERSION = b"1"
POOL_MAX = 8
POOL_TIMEOUT = 10.0  # seconds to wait for a pooled read connection
# libpq connection settings for every connection, unless the URL sets them: TCP keepalive
# probes after 10 s idle, 3 of them 5 s apart. (No tcp_user_timeout: Linux applies it to
# zero-window probes too, and a batch waiting for another frontend's lock may fill the
# server's receive window for longer than any such bound.)
_NET_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
LOCK_REPORT_AFTER = 5.0  # seconds a write may take before the database is asked why
RETRY_TIMEOUT = 1.0  # seconds to wait for a live one when a pooled connection was dead
SETTLE_TIMEOUT = 10.0  # seconds to wait for a synchronous standby to confirm a barrier
TURN_TIMEOUT = 5.0  # seconds to wait for another frontend's write turn (write_turn)
# Seconds to wait for another frontend's SCIM staging turn (hold_stage_turn); then the SCIM
# writer stages without it (the fence decides, as before the turn), well within a request's
# commit bound.
STAGE_TURN_TIMEOUT = 1.0
# The database known down (PgStorage._probe): a connection attempt every PROBE_EVERY seconds,
# each given at most PROBE_CONNECT_TIMEOUT seconds (libpq's smallest connect_timeout).
PROBE_EVERY = 0.5
SUSPECT_AFTER = 0.5  # seconds a read waits for a pooled connection before the probe starts
PROBE_CONNECT_TIMEOUT = 2
# A read waiting for a pooled connection looks this often whether the probe found the
# database down (then it is answered at once: PgStorage._getconn_unless_down).
GETCONN_SLICE = 0.02
ASK_TIMEOUT = 5.0  # seconds the commit watch's own questions may take (PgStorage._ask)
_U64 = struct.Struct(">Q")
_MAX_BIGINT = (1 << 63) - 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS tlog_state (
    id smallint PRIMARY KEY CHECK (id = 1),
    tree_size bigint NOT NULL CHECK (tree_size >= 0),
    checkpoint bytea,
    epoch bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS tlog_meta (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS tlog_entries (idx bigint PRIMARY KEY, data bytea NOT NULL);
CREATE TABLE IF NOT EXISTS tlog_dedup (leaf_hash bytea PRIMARY KEY, idx bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tlog_tiles (
    level smallint NOT NULL, idx bigint NOT NULL, blob bytea NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS tlog_checkpoints (size bigint PRIMARY KEY, note bytea NOT NULL);
CREATE TABLE IF NOT EXISTS tlog_cosignatures (size bigint PRIMARY KEY, lines bytea NOT NULL);
CREATE TABLE IF NOT EXISTS tlog_tokens (digest bytea PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE IF NOT EXISTS tlog_aux (key bytea PRIMARY KEY, value bytea NOT NULL);
INSERT INTO tlog_state (id, tree_size, checkpoint, epoch) VALUES (1, 0, NULL, 0)
    ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS tlog_aux_writer (
    id smallint PRIMARY KEY CHECK (id = 1),
    fence bytea NOT NULL,
    claims bigint NOT NULL,
    holder text NOT NULL
);
INSERT INTO tlog_aux_writer (id, fence, claims, holder) VALUES (1, '\\x', 0, '')
    ON CONFLICT (id) DO NOTHING;
"""
_TABLE_NAMES = (
    "tlog_state",
    "tlog_meta",
    "tlog_entries",
    "tlog_dedup",
    "tlog_tiles",
    "tlog_checkpoints",
    "tlog_cosignatures",
    "tlog_tokens",
    "tlog_aux",
)
_SCHEMA_LOCK = 0x746C6F67  # advisory lock id ("tlog") held while creating the schema


class ByteaArray(list[bytes]):
    """A list of byte strings sent as one binary ``bytea[]`` parameter by
    :class:`_ByteaArrayDumper` (psycopg's generic list dumper walks each element in Python
    with type dispatch: about 5 ms per 1,000 elements, a quarter of a batch commit)."""


_BYTEA_OID = psycopg.postgres.types["bytea"].oid
_ARRAY_HEAD = struct.Struct(">iiIii")  # ndim, has-nulls flag, element oid, length, lbound
_I32 = struct.Struct(">i")


class _ByteaArrayDumper(psycopg.adapt.Dumper):
    """PostgreSQL's binary array format (one dimension, no nulls) for :class:`ByteaArray`."""

    format = psycopg.pq.Format.BINARY
    oid = psycopg.postgres.types["bytea"].array_oid

    def dump(self, obj: Any) -> bytes:
        head = _ARRAY_HEAD.pack(1, 0, _BYTEA_OID, len(obj), 1)
        # (length, bytes) per element, interleaved by C-level iterators.
        lengths = map(_I32.pack, map(len, obj))
        return head + b"".join(itertools.chain.from_iterable(zip(lengths, obj, strict=True)))


psycopg.adapters.register_dumper(ByteaArray, _ByteaArrayDumper)  # only this type: no side effect


def redact(url: str) -> str:
    """The URL's user, host, port and database, never its password (for messages)."""
    try:
        d = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    user = f"{d['user']}@" if d.get("user") else ""
    port = f":{d['port']}" if d.get("port") else ""
    return f"postgresql://{user}{d.get('host') or ''}{port}/{d.get('dbname') or ''}"


def pg_fault(exc: BaseException) -> StorageError | None:
    """The :class:`StorageError` a psycopg exception stands for (registered in tlog.backend)."""
    if isinstance(exc, psycopg.errors.DiskFull):
        return StorageFull(f"the database is out of disk space ({exc}); nothing was written")
    if isinstance(exc, psycopg.errors.DataCorrupted | psycopg.errors.IndexCorrupted):
        return StorageCorrupt(f"the database reports damaged data: {exc}; run tlog fsck")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StorageError(f"no database connection: {exc}")
    if isinstance(exc, psycopg.Error):
        return StorageError(f"database failure: {type(exc).__name__}: {exc}")
    return None


backend.register_fault(pg_fault)


def _u64(b: bytes) -> int | None:
    """A table key's u64, or None when it is not one (or does not fit a bigint)."""
    if len(b) != 8:
        return None
    n = int(_U64.unpack(b)[0])
    return n if n <= _MAX_BIGINT else None


def _prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with ``prefix`` (None: no such key)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


REPLICATION_MODES = ("none", "sync", "managed")
_SYNC_WAIT_CANCELLED = "canceling wait for synchronous replication"
_HA_HINT = (
    "Configure a synchronous standby (synchronous_standby_names on the primary; with "
    "Patroni: synchronous_mode: true), or say what guarantees durability instead: "
    "--replication managed for a managed service that keeps every commit across the loss "
    "of its primary, --replication none for a single database server (no failover)"
)


def check_replication(conn: psycopg.Connection[Any], mode: str, where: str) -> None:
    """Refuse a database that does not keep every commit across the loss of its primary
    when ``mode`` is ``sync`` (high availability): the server must be a primary, name
    synchronous standbys, and have one streaming as synchronous now. ``managed`` trusts
    the database service (logged, not checked); ``none`` is a single server."""
    if mode == "managed":
        log.warning(
            "--replication managed: trusting the database service %s to keep every commit "
            "across the loss of its primary (not checked here)",
            where,
        )
        return
    if mode != "sync":
        return
    row = conn.execute(
        "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')"
    ).fetchone()
    assert row is not None
    if row[0]:
        raise StorageError(f"the database {where} is a standby (read-only), not the primary")
    if not str(row[1]).strip():
        raise StorageError(
            f"--replication sync: the database {where} does not replicate synchronously "
            "(synchronous_standby_names is empty), so a commit would be acknowledged before "
            "any standby has it, and a failover could lose acknowledged entries. " + _HA_HINT
        )
    standbys = conn.execute(
        "SELECT application_name, sync_state FROM pg_stat_replication"
    ).fetchall()
    if not any(state in ("sync", "quorum") for _, state in standbys):
        if standbys and all(state is None for _, state in standbys):
            raise StorageError(
                f"--replication sync: cannot see the replication state of {where} "
                "(pg_stat_replication): grant the pg_monitor role to this database user"
            )
        raise StorageError(
            f"--replication sync: no synchronous standby is streaming from {where} now "
            f"(pg_stat_replication: {[(n, s) for n, s in standbys] or 'no standby'}); "
            "commits would wait until one connects. " + _HA_HINT
        )


# Session settings an operator may give tlog's role or database (ALTER ROLE ... SET) that
# cut its commits or sessions short, and what each does to tlog (warn_timeouts).
_TIMEOUT_EFFECTS = {
    "statement_timeout": "a commit (or a tlog recover or migrate write) that runs longer, "
    "waiting for a slow disk, a synchronous standby or another frontend's commit, is "
    "cancelled and its submitters get 503 (nothing of it is written)",
    "transaction_timeout": "a commit that runs longer is cancelled and its submitters get 503 "
    "(nothing of it is written)",
    "lock_timeout": "a commit that waits longer for another frontend's commit is cancelled and "
    "answered 503 at once, instead of waiting up to --storage-timeout",
    "idle_in_transaction_session_timeout": "a session whose transaction stays idle longer "
    "(a frontend paused in the middle of a commit, a long read) is ended: its request gets "
    "503",
    "idle_session_timeout": "tlog's idle sessions (the writer's, the write and staging turns', "
    "the pooled readers') are ended; each is replaced when next used, and a frontend holding "
    "a turn loses it",
}
_TIMEOUTS = (
    "SELECT name, setting, coalesce(unit, '') FROM pg_settings "
    "WHERE name = ANY(%s) AND setting <> '0' ORDER BY name"
)


def warn_timeouts(conn: psycopg.Connection[Any], where: str) -> list[str]:
    """Log a WARNING for each timeout set for tlog's sessions on ``where`` (the role's, the
    database's or the server's: what a new session gets) that can cut a commit or a
    session short (:data:`_TIMEOUT_EFFECTS`); returns the settings found. Every such cut is
    a clear 503 with nothing written, never a loss, but the operator should know why."""
    rows = conn.execute(_TIMEOUTS, (list(_TIMEOUT_EFFECTS),)).fetchall()
    found = []
    for name, setting, unit in rows:
        value = f"{setting}{unit}"
        found.append(f"{name} = {value}")
        log.warning(
            "the database %s sets %s = %s for tlog's sessions: %s. Unless that is wanted, "
            "ALTER ROLE <tlog's role> SET %s = 0",
            where,
            name,
            value,
            _TIMEOUT_EFFECTS[name],
            name,
        )
    return found


def _no_idle_end(conn: psycopg.Connection[Any]) -> None:
    """Opt this session out of an ``idle_session_timeout`` the role or database sets: the
    writer's connection and the turns' lock sessions live as long as the frontend, idle
    between writes by design. Ended while idle, the writer's would fail a write that raced
    the end (its first statement sent just as the server closed it), and a turn's session
    would drop its advisory lock unseen. (PostgreSQL 14+; older servers have no such
    setting. The start-up warning still names it: the pooled readers keep it and replace a
    connection found dead.)"""
    row = conn.execute("SELECT current_setting('idle_session_timeout', true)").fetchone()
    if row is not None and row[0] not in (None, "0"):
        conn.execute("SET idle_session_timeout = 0")


def _unread(conn: psycopg.Connection[Any]) -> bool | None:
    """Whether the server sent something ``conn`` has not read (one poll of its socket, no
    round trip); None when the connection is closed or broken."""
    if conn.closed or conn.broken:
        return None
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return None
    return bool(readable)


def _dead_while_idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection (no statement in flight) was ended by the server since
    its last use (``idle_session_timeout``, ``pg_terminate_backend``, a restart): its
    final error and the end of the stream wait in the socket. One poll, no round trip; a
    connection with nothing to read is taken as alive (its first statement says if not)."""
    # libpq takes an error that arrives while idle for a notice, and sees the end of the
    # stream only on its next read: read while there is something to read (a few times).
    for _ in range(4):
        readable = _unread(conn)
        if readable is None:
            return True
        if not readable:
            return False
        try:
            conn.pgconn.consume_input()
        except psycopg.Error:
            return True  # the end of the stream: the server closed the session
        if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
            return True
    return False


_RV = TypeVar("_RV")


class _Watched(psycopg.Connection[Any]):
    """A connection that shows whether, and since when, this process waits on it for the
    server: every network wait of psycopg goes through :meth:`wait`. The commit watch
    (:meth:`PgStorage._end_dark`) finds with it a wait on a path gone dark, which neither
    the TCP keepalives nor ``tcp_user_timeout`` can see when a TCP proxy (a load balancer)
    stands before PostgreSQL: the proxy's own kernel acknowledges every byte and probe."""

    waiting_since: float | None = None
    role = "connection"  # what this process uses it for, named in the log
    ended_dark = False  # ended by the commit watch: its path went dark

    def wait(
        self, gen: psycopg.abc.PQGen[_RV], interval: float = 0.1, timeout: float | None = None
    ) -> _RV:
        self.waiting_since = time.monotonic()
        try:
            return super().wait(gen, interval, timeout)
        finally:
            self.waiting_since = None


class PgReadView:
    """One REPEATABLE READ, READ ONLY transaction on a pooled connection.

    A pooled connection may have died while idle (the server restarted, the backend was
    terminated): when the view's first statement finds it so, nothing of the snapshot has
    been read, so the view checks the pool (every dead idle connection is replaced, not
    handed to the next reads one failure at a time) and runs the statement again on a live
    connection, once."""

    __slots__ = ("_conn", "_fresh", "_s")

    _names = itertools.count()

    def __init__(self, storage: PgStorage, conn: _Watched) -> None:
        self._s = storage
        self._conn = conn
        self._fresh = True  # no statement has run in this view yet

    def _retry_on_new_connection(self, exc: psycopg.Error) -> bool:
        """After the view's first statement failed with ``exc``: True once it has a live
        connection to run it again on (its old one died before the snapshot began)."""
        conn = self._conn
        if not self._fresh or not (conn.closed or conn.broken):
            return False
        self._fresh = False
        s = self._s
        pool = s._pool
        log.warning("a pooled database connection was lost (%s); checking the pool", exc)
        # The probe tries the database at once, beside the pool: a database that is gone
        # (its connection refused) is known down within that attempt, and this read is
        # answered then (StoreUnreachable), not after RETRY_TIMEOUT (ops30: the first reads
        # after PostgreSQL stopped each waited the whole second for a pool that could not
        # connect).
        s._suspect()
        try:
            pool.check()
            new = s._getconn_unless_down(RETRY_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            return False  # the view keeps the dead one: __exit__ hands it back
        pool.putconn(conn)  # the pool discards a closed connection
        self._conn = new
        return True

    def _run(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        try:
            return fn(self._conn)
        except psycopg.Error as exc:
            if not self._retry_on_new_connection(exc):
                raise self._s._failed(exc, self._conn) from exc
        finally:
            self._fresh = False
        try:
            return fn(self._conn)
        except psycopg.Error as exc:
            raise self._s._failed(exc, self._conn) from exc

    def __enter__(self) -> PgReadView:
        return self

    def __exit__(self, *exc: object) -> None:
        conn = self._conn
        try:
            if not conn.closed:
                conn.rollback()
        except psycopg.Error:
            pass
        finally:
            self._s._pool.putconn(conn)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._run(lambda c: c.execute(sql, params).fetchone())
        return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(lambda c: c.execute(sql, params).fetchall())
        return rows

    def _iter(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows streamed through a server-side cursor (bounded memory). Declaring it is the
        statement :meth:`_run` runs (again on a live connection if the view's first one
        found its connection dead); the rows are read from it afterwards."""

        def declare(conn: psycopg.Connection[Any]) -> psycopg.ServerCursor[Any]:
            cur = conn.cursor(name=f"tlog_c{next(self._names)}")
            cur.itersize = 2000
            try:
                cur.execute(sql, params)
            except BaseException:
                cur.close()
                raise
            return cur

        cur: psycopg.ServerCursor[Any] = self._run(declare)
        try:
            with cur:
                yield from cur
        except psycopg.Error as exc:
            raise pg_fault(exc) or StorageError(str(exc)) from exc

    def _val(self, sql: str, params: Sequence[Any] = ()) -> bytes | None:
        row = self._one(sql, params)
        return None if row is None else bytes(row[0])

    def meta(self, key: str) -> bytes | None:
        if key == "tree_size":
            return u64(self.tree_size())
        return self._val("SELECT value FROM tlog_meta WHERE key = %s", (key,))

    def tree_size(self) -> int:
        row = self._one("SELECT tree_size FROM tlog_state WHERE id = 1")
        return 0 if row is None else int(row[0])

    def blob(self, level: int, index: int) -> bytes | None:
        return self._val(
            "SELECT blob FROM tlog_tiles WHERE level = %s AND idx = %s", (level, index)
        )

    def entry(self, index: int) -> bytes | None:
        return self._val("SELECT data FROM tlog_entries WHERE idx = %s", (index,))

    def entries(self, start: int, end: int) -> list[bytes]:
        if start >= end:
            return []
        rows = self._all(
            "SELECT idx, data FROM tlog_entries WHERE idx >= %s AND idx < %s ORDER BY idx",
            (start, end),
        )
        out: list[bytes] = []
        for i, (idx, data) in enumerate(rows):  # dense from start, as a cursor walk is
            if idx != start + i:
                break
            out.append(bytes(data))
        return out

    def index_of(self, leaf_hash: bytes) -> int | None:
        row = self._one("SELECT idx FROM tlog_dedup WHERE leaf_hash = %s", (leaf_hash,))
        return None if row is None else int(row[0])

    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        if not leaf_hashes:
            return {}
        rows = self._all(
            "SELECT leaf_hash, idx FROM tlog_dedup WHERE leaf_hash = ANY(%b)",
            (ByteaArray(leaf_hashes),),
        )
        return {bytes(k): int(v) for k, v in rows}

    def checkpoint(self, size: int) -> bytes | None:
        return self._val("SELECT note FROM tlog_checkpoints WHERE size = %s", (size,))

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        row = self._one("SELECT size, note FROM tlog_checkpoints ORDER BY size DESC LIMIT 1")
        return None if row is None else (int(row[0]), bytes(row[1]))

    def checkpoints(self) -> Iterator[tuple[int, bytes]]:
        for size, note in self._iter("SELECT size, note FROM tlog_checkpoints ORDER BY size"):
            yield int(size), bytes(note)

    def checkpoint_at_or_after(self, size: int) -> tuple[int, bytes] | None:
        row = self._one(
            "SELECT size, note FROM tlog_checkpoints WHERE size >= %s ORDER BY size LIMIT 1",
            (size,),
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def cosignatures(self, size: int) -> bytes | None:
        return self._val("SELECT lines FROM tlog_cosignatures WHERE size = %s", (size,))

    def latest_cosigned(self) -> tuple[int, bytes] | None:
        row = self._one("SELECT size, lines FROM tlog_cosignatures ORDER BY size DESC LIMIT 1")
        return None if row is None else (int(row[0]), bytes(row[1]))

    def token(self, digest: bytes) -> bytes | None:
        return self._val("SELECT record FROM tlog_tokens WHERE digest = %s", (digest,))

    def tokens(self) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._iter("SELECT digest, record FROM tlog_tokens ORDER BY digest"):
            yield bytes(k), bytes(v)

    def aux(self, key: bytes) -> bytes | None:
        return self._val("SELECT value FROM tlog_aux WHERE key = %s", (key,))

    def aux_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """:meth:`aux` of each of ``keys`` in one round trip, in this read's snapshot: the
        value of each key present (a key absent from the answer is absent from the store)."""
        if not keys:
            return {}
        rows = self._all(_SELECT_AUX_MANY, (list(keys),))
        return {bytes(k): bytes(v) for k, v in rows}

    def aux_range(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        lo = start if start is not None and start > prefix else prefix
        hi = _prefix_end(prefix)
        if hi is None:
            rows = self._iter("SELECT key, value FROM tlog_aux WHERE key >= %s ORDER BY key", (lo,))
        else:
            rows = self._iter(
                "SELECT key, value FROM tlog_aux WHERE key >= %s AND key < %s ORDER BY key",
                (lo, hi),
            )
        for k, v in rows:
            yield bytes(k), bytes(v)

    # -- the backend-neutral tables (fsck, migrate) ---------------------------------------

    def raw(self, table: str) -> Iterator[tuple[bytes, bytes]]:
        if table == "meta":
            meta = self._all("SELECT key, value FROM tlog_meta")
            rows = [(k.encode(), bytes(v)) for k, v in meta]
            state = self._one("SELECT tree_size, checkpoint FROM tlog_state WHERE id = 1")
            if state is not None and state[0]:
                rows.append((b"tree_size", u64(int(state[0]))))
            yield from sorted(rows)
        elif table == "entries":
            for i, v in self._iter("SELECT idx, data FROM tlog_entries ORDER BY idx"):
                yield u64(i), bytes(v)
        elif table == "dedup":
            for k, i in self._iter("SELECT leaf_hash, idx FROM tlog_dedup ORDER BY leaf_hash"):
                yield bytes(k), u64(i)
        elif table == "tiles":
            for lv, i, b in self._iter(
                "SELECT level, idx, blob FROM tlog_tiles ORDER BY level, idx"
            ):
                yield tile_key(lv, i), bytes(b)
        elif table == "checkpts":
            for n, v in self.checkpoints():
                yield u64(n), v
        elif table == "cosigs":
            for n, v in self._iter("SELECT size, lines FROM tlog_cosignatures ORDER BY size"):
                yield u64(n), bytes(v)
        elif table == "tokens":
            yield from self.tokens()
        elif table == "aux":
            yield from self.aux_range(b"")
        else:
            raise ValueError(f"no table {table!r}")

    def raw_get(self, table: str, key: bytes) -> bytes | None:
        if table == "meta":
            try:
                return self.meta(key.decode("ascii"))
            except UnicodeDecodeError:
                return None
        if table in ("entries", "checkpts", "cosigs"):
            n = _u64(key)
            if n is None:
                return None
            if table == "entries":
                return self.entry(n)
            return self.checkpoint(n) if table == "checkpts" else self.cosignatures(n)
        if table == "dedup":
            i = self.index_of(key)
            return None if i is None else u64(i)
        if table == "tiles":
            if len(key) != 9 or (n := _u64(key[1:])) is None:
                return None
            return self.blob(key[0], n)
        if table == "tokens":
            return self.token(key)
        if table == "aux":
            return self.aux(key)
        raise ValueError(f"no table {table!r}")


def _configure_reader(conn: psycopg.Connection[Any]) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True


def _instance_of(conn: psycopg.Connection[Any]) -> str:
    """The store's :attr:`~tlog.backend.Backend.instance`: ``postgresql:<system
    identifier>/<database oid>/<database>/<schema>`` (``?`` for a system identifier the
    role may not read: then two clusters' databases of one name and oid look alike)."""
    try:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        sysid = "?" if row is None else str(row[0])
    except psycopg.Error:
        sysid = "?"
    row = conn.execute(
        "SELECT d.oid, d.datname, current_schema() FROM pg_database d "
        "WHERE d.datname = current_database()"
    ).fetchone()
    oid, name, schema = row if row is not None else ("?", "?", "?")
    return f"postgresql:{sysid}/{oid}/{name}/{schema}"


class PgStorage:
    """A log stored in PostgreSQL. Thread-safe: one writer connection (its writes are
    serialised by a lock here, and across processes by the state row), pooled readers."""

    kind = "postgresql"
    shared = True
    dedup_on_commit = True  # the batch's INSERT into tlog_dedup is the lookup
    aux_in_batch = True  # commit_batch writes the batch's SCIM records in its transaction

    def __init__(
        self,
        url: str,
        *,
        readonly: bool = False,
        pool_max: int = POOL_MAX,
        replication: str = "none",
    ) -> None:
        if replication not in REPLICATION_MODES:
            raise StorageError(
                f"unknown --replication {replication!r}: one of {', '.join(REPLICATION_MODES)}"
            )
        self._url = url
        self._readonly = readonly
        self.replication = replication
        # Set by the writer connection's notice handler when the server says it cancelled
        # a commit's wait for the synchronous standby (see _on_notice).
        self._sync_wait_cancelled = False
        self.settle_timeout = SETTLE_TIMEOUT
        self.on_close: list[Callable[[], object]] = []
        # Tests only: called on the writer thread, inside a batch's transaction, once the
        # state row is locked and the batch's SCIM records are written, before its leaves
        # (then the statements before it take a round trip of their own). A hook that
        # raises or breaks the connection aborts the whole transaction.
        self.before_leaves: Callable[[psycopg.Connection[Any]], None] | None = None
        self._wlock = threading.Lock()
        self._writer: psycopg.Connection[Any] | None = None
        # The write turn (write_turn): its own connection, holding a session advisory lock.
        self._tlock = threading.Lock()
        self._turner: psycopg.Connection[Any] | None = None
        self._turns = 0  # holds of the turn in this process (hold_turn), under _tlock
        self.turn_timeout = TURN_TIMEOUT
        # The SCIM staging turn (hold_stage_turn): its own connection, holding another
        # session advisory lock; only the SCIM writer (under its writer lock) uses it.
        self._slock = threading.Lock()
        self._stager: psycopg.Connection[Any] | None = None
        self.stage_timeout = STAGE_TURN_TIMEOUT
        self._closed = False
        # tlog serve's hold of the store's operator lock (OperatorHold), set by build_app:
        # while it does not hold the lock, every write is refused (StoreNotHeld).
        self.operator_hold: OperatorHold | None = None
        # The database known down: why (the last connection attempt's failure), or None.
        # Set and cleared by the probe thread (_probe), started when a connection broke or
        # none came (_suspect); while set, reads and writes are refused at once.
        self._outage: str | None = None
        self.outages = 0  # times the database became known down (GET /metrics)
        self._probe_lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self.probe_every = PROBE_EVERY
        # The write in progress (since, writer backend pid, what) and the thread that
        # reports one that does not return (_watch).
        self.lock_report_after = LOCK_REPORT_AFTER
        self._waiting: tuple[float, int, str] | None = None
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()
        # Every connection this process opens to the store (the writer's, the turns', the
        # pooled readers'), for the commit watch to find one waiting on a dark path.
        self._conns: WeakSet[_Watched] = WeakSet()
        self._conns_lock = threading.Lock()
        kwargs = _connect_kwargs(url, "tlog")
        self._kwargs = kwargs
        try:
            with psycopg.connect(url, autocommit=True, **kwargs) as conn:
                self._check_server(conn)
                self._instance = _instance_of(conn)
                if not readonly:
                    check_replication(conn, replication, self.location)
                    warn_timeouts(conn, self.location)
                if readonly:
                    self._check_schema(conn)
                else:
                    self._create_schema(conn)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open the database {self.location}: {exc}") from None
        self._pool: psycopg_pool.ConnectionPool[_Watched] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            kwargs=kwargs,
            connection_class=_Watched,
            configure=self._configure_reader,
            timeout=POOL_TIMEOUT,
            name="tlog-readers",
            open=True,
        )
        self._watcher = threading.Thread(target=self._watch, name="tlog-pg-watch", daemon=True)
        self._watcher.start()

    def _configure_reader(self, conn: _Watched) -> None:
        _configure_reader(conn)
        self._track(conn, "pooled reader")

    def _track(self, conn: _Watched, role: str) -> None:
        conn.role = role
        with self._conns_lock:
            self._conns.add(conn)

    @property
    def location(self) -> str:
        return redact(self._url)

    @property
    def instance(self) -> str:
        return self._instance

    # -- set-up ---------------------------------------------------------------------------

    def _check_server(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SHOW fsync").fetchone()
        if row is None or row[0] != "on":
            raise StorageError(
                f"the database {self.location} runs with fsync = off: an acknowledged entry "
                "could be lost in a crash; refusing to use it"
            )

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
            (list(_TABLE_NAMES),),
        ).fetchall()
        missing = set(_TABLE_NAMES) - {r[0] for r in rows}
        if missing:
            raise NoLogStore(
                f"no log store in the database {self.location} (tables missing: "
                f"{', '.join(sorted(missing))})"
            )
        self._check_format(conn)

    def _check_format(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT value FROM tlog_meta WHERE key = 'format'").fetchone()
        if row is not None and bytes(row[0]) != FORMAT_VERSION:
            raise StorageError(f"store format {bytes(row[0])!r} is not supported")

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO tlog_meta (key, value) VALUES ('format', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (FORMAT_VERSION,),
            )
        self._check_format(conn)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch_stop.set()
        with self._wlock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        with self._tlock:
            self._drop_turn()
        with self._slock:
            self._drop_stager()
        self._pool.close()
        for f in self.on_close:
            f()
        self.on_close.clear()

    # -- reads ----------------------------------------------------------------------------

    def read(self) -> PgReadView:
        self._check_reachable()
        try:
            try:
                conn = self._pool.getconn(timeout=SUSPECT_AFTER)
            except psycopg_pool.PoolTimeout:
                # None within a moment: every connection busy, or the database gone and
                # the pool unable to connect. The probe tells: this read waits on only
                # until it does (answered at once, StoreUnreachable, once the database is
                # known down; before ops30 it waited the rest of POOL_TIMEOUT regardless).
                self._suspect()
                conn = self._getconn_unless_down(POOL_TIMEOUT - SUSPECT_AFTER)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._suspect()
            raise pg_fault(exc) or StorageError(str(exc)) from exc
        return PgReadView(self, conn)

    # -- the database known down: answered at once, probed in the background ---------------

    @property
    def outage(self) -> str | None:
        """Why the database is known down (its last connection attempt's failure), or
        None while it is not known down."""
        return self._outage

    def _check_reachable(self) -> None:
        """Refuse at once (:class:`StoreUnreachable`) while the database is known down,
        instead of waiting for a pooled connection or a connect that cannot come."""
        why = self._outage
        if why is not None:
            raise StoreUnreachable(
                f"the database {self.location} does not answer ({why}); answering 503 at once "
                "until it does (it is tried again every "
                f"{self.probe_every:g} s); nothing was written"
            )

    def _getconn_unless_down(self, timeout: float) -> _Watched:
        """A pooled connection within ``timeout`` seconds, waited for in slices of
        ``GETCONN_SLICE`` so that the database becoming known down meanwhile (the probe,
        :meth:`_suspect`) ends the wait at once (:class:`StoreUnreachable`);
        :class:`psycopg_pool.PoolTimeout` at the end of the time. Sliced only while the
        probe runs: each slice queues the waiter again at the pool's end (its waiters are
        served first come, first served), so on a saturated pool of a database that is up a
        sliced wait would be overtaken by newer ones until it timed out (review 39)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_reachable()
            left = deadline - time.monotonic()
            prober = self._prober
            if prober is None or not prober.is_alive():  # the outage is decided: one wait
                return self._pool.getconn(timeout=max(left, 0.001))
            try:
                return self._pool.getconn(timeout=max(min(GETCONN_SLICE, left), 0.001))
            except psycopg_pool.PoolTimeout:
                if left <= GETCONN_SLICE:
                    self._check_reachable()
                    raise

    def _suspect(self) -> None:
        """A connection broke, or none came: have the probe thread try the database (one
        thread at a time; a failed attempt makes it known down, :meth:`_probe`)."""
        with self._probe_lock:
            if self._closed or (self._prober is not None and self._prober.is_alive()):
                return
            self._prober = threading.Thread(target=self._probe, name="tlog-pg-probe", daemon=True)
            self._prober.start()

    def _failed(self, exc: psycopg.Error, conn: psycopg.Connection[Any]) -> StorageError:
        """What a statement that failed with ``exc`` on ``conn`` is answered with; when it
        left the connection broken, the probe tries the database (:meth:`_suspect`)."""
        if isinstance(conn, _Watched) and conn.ended_dark:
            return StoreUnreachable(
                f"the database connection this used went dark (its answer never came) and "
                f"was ended; nothing was written; new connections take over ({exc})"
            )
        if conn.closed or conn.broken:
            self._suspect()
        return pg_fault(exc) or StorageError(str(exc))

    def _probe(self) -> None:
        """Connect (at most ``PROBE_CONNECT_TIMEOUT`` s) and run one statement, every
        ``probe_every`` seconds until it works. A failure marks the database known down
        (logged once); the first success clears it (logged), replaces the pool's dead idle
        connections and ends the thread."""
        kwargs = {**self._kwargs, "connect_timeout": PROBE_CONNECT_TIMEOUT}
        while not self._watch_stop.is_set():
            try:
                # Watched too: a path that goes dark between its connect and its answer
                # would otherwise hold the probe, and the outage it set, forever.
                with _Watched.connect(self._url, autocommit=True, **kwargs) as conn:
                    self._track(conn, "probe")
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if self._outage is None:
                    self.outages += 1
                    log.error(
                        "DATABASE UNREACHABLE %s: %s; reads and writes answer 503 at once "
                        "until it answers again",
                        self.location,
                        why,
                    )
                self._outage = why
                self._watch_stop.wait(self.probe_every)
                continue
            if self._outage is not None:
                self._outage = None
                log.warning("the database %s answers again: reads and writes resume", self.location)
                with contextlib.suppress(psycopg.Error):
                    self._pool.check()  # its dead idle connections replaced now
            return

    def is_empty(self) -> bool:
        with self.read() as rv:
            return rv.meta("origin") is None and rv.latest_checkpoint() is None

    def check_structure(self) -> list[str]:
        """The state row against the tables it summarises (PostgreSQL checks its own pages:
        data checksums, ``pg_amcheck``)."""
        out: list[str] = []
        with self.read() as rv:
            state = rv._one("SELECT tree_size, checkpoint FROM tlog_state WHERE id = 1")
            if state is None:
                return ["tlog_state has no state row"]
            latest = rv.latest_checkpoint()
            if latest is not None and (state[1] is None or bytes(state[1]) != latest[1]):
                out.append("tlog_state's checkpoint is not the latest stored checkpoint")
            if latest is not None and latest[0] != int(state[0]):
                out.append(
                    f"tlog_state's tree size {state[0]} is not the latest checkpoint's "
                    f"size {latest[0]}"
                )
        return out

    # -- writes ---------------------------------------------------------------------------

    def _write(self, fn: Callable[[psycopg.Connection[Any]], Any], what: str) -> Any:
        """Run ``fn`` in one transaction on the writer connection and commit it.

        A failure before COMMIT rolls back (nothing written); a lost connection during
        COMMIT is :class:`CommitUnknown`.
        """
        if self._readonly:
            raise StorageError("the store was opened read-only")
        self._check_reachable()
        with self._wlock:
            conn = self._writer_conn()
            self._watch_commit(conn, what)
            try:
                return self._write_on(conn, fn, what)
            finally:
                self._waiting = None

    def _write_on(
        self, conn: psycopg.Connection[Any], fn: Callable[[psycopg.Connection[Any]], Any], what: str
    ) -> Any:
        """:meth:`_write`'s transaction on the writer connection ``conn``."""
        try:
            self._hold_for_write(conn)
            result = fn(conn)
        except BaseException as exc:
            self._abort(conn)
            if isinstance(exc, psycopg.Error):
                raise self._failed(exc, conn) from exc
            raise
        self._sync_wait_cancelled = False
        try:
            conn.commit()
            if self._sync_wait_cancelled:
                # COMMIT returned, but only because the server stopped waiting for the
                # synchronous standby (a cancel request, e.g. pg_cancel_backend): the
                # transaction is committed on the primary and visible there, yet maybe
                # on no standby. A failover could lose it: never acknowledge it.
                self._drop_writer()
                log.error("the commit of %s was not confirmed by a synchronous standby", what)
                raise CommitUnknown(
                    f"the commit of {what} returned without the synchronous standby's "
                    "confirmation (its wait was cancelled): its durability is unknown"
                )
        except psycopg.Error as exc:
            broken = conn.closed or conn.broken
            self._drop_writer()
            if broken:
                self._suspect()
            if exc.sqlstate is not None and not broken:
                # The server answered: it refused the commit (nothing was written).
                raise pg_fault(exc) or StorageError(str(exc)) from exc
            log.error("connection lost while committing %s: outcome unknown", what)
            raise CommitUnknown(
                f"the database connection was lost while committing {what}: its outcome is unknown"
            ) from exc
        return result

    def _hold_for_write(self, conn: psycopg.Connection[Any]) -> None:
        """With an :attr:`operator_hold` (``tlog serve``): refuse the write
        (:class:`StoreNotHeld`) unless the hold has the store's operator lock, and take that
        lock shared for the transaction (refused when an exclusive holder has it)."""
        hold = self.operator_hold
        if hold is None:
            return
        hold.check()
        row = conn.execute(_HOLD_XACT).fetchone()
        if row is None or not row[0]:
            hold.suspect()  # our session's lock must be gone: the hold looks now
            raise StoreNotHeld(
                f"the store {self.location} is held exclusively by another process (a tlog "
                "recover or tlog migrate): this tlog serve writes nothing until it ends"
            )

    # -- a commit that does not return: say who holds it up -------------------------------

    def _watch_commit(self, conn: psycopg.Connection[Any], what: str) -> None:
        """Note the write starting on ``conn`` for :meth:`_watch`."""
        self._waiting = (time.monotonic(), conn.info.backend_pid, what)

    def _watch(self) -> None:
        """Once per write that has not returned after ``lock_report_after`` seconds, log
        what the database says it waits for (ERROR when it is another session's lock,
        WARNING otherwise): a frontend frozen in the middle of a commit
        holds the state row (and the fence row) until the database ends its session, and
        every other frontend's commits wait for it (docs/operations.md); the 503s they
        answer meanwhile cannot name it, this line does. And every second, whatever waits:
        :meth:`_end_dark`."""
        reported: tuple[float, int, str] | None = None
        suspects: set[int] = set()
        unasked = False  # the last question failed (said once until one works again)
        while not self._watch_stop.wait(min(1.0, self.lock_report_after / 2)):
            w = self._waiting
            if w is not None and w is not reported:
                if time.monotonic() - w[0] >= self.lock_report_after:
                    reported = w
                    try:
                        self._report_wait(*w)
                    except Exception as exc:  # a diagnosis only: it never fails the write
                        log.warning("could not ask the database why a commit waits: %s", exc)
            try:
                suspects = self._end_dark(suspects)
                unasked = False
            except Exception as exc:
                suspects = set()
                if not unasked:
                    log.warning("could not ask the database whether a connection is dark: %s", exc)
                unasked = True

    @contextlib.contextmanager
    def _ask(self) -> Iterator[psycopg.Connection[Any]]:
        """A new connection for the watch's own questions, bounded on this side's clock
        (its path may go dark too): connected within ``PROBE_CONNECT_TIMEOUT`` seconds, its
        socket shut ``ASK_TIMEOUT`` seconds later if it is still open."""
        kwargs = {**self._kwargs, "connect_timeout": PROBE_CONNECT_TIMEOUT}
        with psycopg.connect(self._url, autocommit=True, **kwargs) as conn:
            timer = threading.Timer(ASK_TIMEOUT, _shut_socket, (conn,))
            timer.daemon = True
            timer.start()
            try:
                yield conn
            finally:
                timer.cancel()

    def _end_dark(self, suspects: set[int]) -> set[int]:
        """Find the connections this process waits on for ``lock_report_after`` seconds or
        more while the database shows their sessions idle for as long, or gone: their
        answers are lost on a path that went dark and stays dark (a proxy keeping the old
        connections open while new ones work: neither TCP keepalives nor
        ``tcp_user_timeout`` see it, the proxy's kernel acknowledges everything). Seen so
        twice in a row (``suspects``: the backend pids seen so last time; returns this
        time's), end them, and with them every session of this process opened before that
        path last carried anything (it carried those too: the turns' advisory locks, idle
        pooled readers, the operator lock's session) or already gone: each is terminated
        on the database and its socket shut here, so whatever waits on it fails now (a
        commit as :class:`CommitUnknown`, resolved from the store; a statement before
        COMMIT as :class:`StoreUnreachable`, nothing written) and new connections take
        over. No wait on a dark path lasts much over ``2 * lock_report_after`` seconds."""
        now = time.monotonic()
        with self._conns_lock:
            conns = [c for c in self._conns if not c.closed]
        hold = self.operator_hold
        held = hold.connection if hold is not None else None
        if isinstance(held, _Watched) and not held.closed:
            conns.append(held)
        by_pid = {pid: c for c in conns if (pid := _backend_pid(c))}
        waiting = {
            pid: now - since
            for pid, c in by_pid.items()
            if (since := c.waiting_since) is not None and now - since >= self.lock_report_after
        }
        if not waiting:
            return set()
        with self._ask() as ask:
            rows = ask.execute(_SESSIONS, (list(by_pid),)).fetchall()
            seen = {int(r[0]): (str(r[1]), float(r[2] or 0), float(r[3] or 0)) for r in rows}
            dark = {
                pid
                for pid in waiting
                if pid not in seen
                or (seen[pid][0].startswith("idle") and seen[pid][1] >= self.lock_report_after)
            }
            confirmed = dark & suspects
            if not confirmed:
                return dark
            # Seconds since the dark path last carried anything (the latest of its sessions).
            quiet = min(seen[p][1] if p in seen else waiting[p] for p in confirmed)
            ended = {
                pid for pid in by_pid if pid in confirmed or pid not in seen or seen[pid][2] > quiet
            }
            w = self._waiting
            first = w[1] if w is not None and w[1] in confirmed else min(confirmed)
            others = sorted({by_pid[p].role for p in confirmed if p != first})
            log.error(
                "the database connection of the %s%s is dark: the database %s; its answer "
                "never came in %.0f s%s. Ending it and every session of this process opened "
                "before that path went quiet (%d in all): what waits on them fails now (a "
                "commit's outcome is read from the store), new connections take over",
                by_pid[first].role,
                f" of {w[2]}" if w is not None and w[1] == first else "",
                "ended the session"
                if first not in seen
                else f"has been {seen[first][0]} for {seen[first][1]:.0f} s",
                waiting[first],
                f" (dark too: {', '.join(others)})" if others else "",
                len(ended),
            )
            alive = sorted(p for p in ended if p in seen)
            ask.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (alive,))
        for pid in ended:
            c = by_pid[pid]
            c.ended_dark = True
            _shut_socket(c)
        if hold is not None and held is not None and _backend_pid(held) in ended:
            hold.suspect()  # it sees its lock gone now and takes it again
        return set()

    def _report_wait(self, since: float, pid: int, what: str) -> None:
        with self._ask() as conn:
            rows = conn.execute(_WAITS, (pid, pid)).fetchall()
        waited = time.monotonic() - since
        own = next((r for r in rows if r[0] == pid), None)
        blockers = [r for r in rows if r[0] != pid]
        if blockers:
            held = "; ".join(
                f"PostgreSQL session pid {b[0]} (application {b[1]!r}, {b[2]}, in a "
                f"transaction for {b[3]} s)"
                for b in blockers
            )
            log.error(
                "the write of %s has waited %.0f s for a lock held by %s: another frontend "
                "frozen or cut off in the middle of a commit? Every frontend's commits wait "
                "for it; if that session is stuck, end it: SELECT pg_terminate_backend(<pid>)",
                what,
                waited,
                held,
            )
        else:
            # A large write (tlog recover, migrate) may simply take long: a warning.
            event = f"{own[4]}/{own[5]}" if own is not None and own[4] else "none (running)"
            log.warning(
                "the write of %s has not returned after %.0f s; it waits for no lock "
                "(database wait event: %s; IPC/SyncRep: a synchronous standby not "
                "confirming; IO: a slow disk)",
                what,
                waited,
                event,
            )

    def _writer_conn(self) -> psycopg.Connection[Any]:
        conn = self._writer
        if conn is not None and not _dead_while_idle(conn):
            return conn
        if conn is not None:
            # Ended while idle: nothing of the write to come was sent, so a new connection
            # takes it, instead of a 503 after every idle period (red team 8).
            log.info("the writer's database connection was ended while idle; reconnecting")
        self._drop_writer()
        try:
            conn = _Watched.connect(self._url, autocommit=False, **self._kwargs)
        except psycopg.Error as exc:
            self._suspect()
            raise pg_fault(exc) or StorageError(str(exc)) from exc
        self._track(conn, "writer")
        try:
            conn.add_notice_handler(self._on_notice)
            self._check_server(conn)
            _no_idle_end(conn)
            if self.replication == "sync":
                # On every new connection: after a failover libpq may have found another
                # primary (a multi-host URL), which must replicate synchronously too.
                check_replication(conn, self.replication, self.location)
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is None or row[0] != "remote_apply":
                conn.execute("SET synchronous_commit = on")
            conn.commit()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise pg_fault(exc) or StorageError(str(exc)) from exc
            raise
        self._writer = conn
        return conn

    def _abort(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            self._drop_writer()

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        _close_quietly(conn)

    def _on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        if (diag.message_primary or "").startswith(_SYNC_WAIT_CANCELLED):
            self._sync_wait_cancelled = True

    def settle(self) -> None:
        """Return once everything this process has read from the database so far survives
        the loss of the primary (``--replication sync``; otherwise nothing to do).

        PostgreSQL makes a commit visible on the primary *before* the synchronous standby
        confirms it. A frontend that adopts another frontend's checkpoint (a reload), or
        finds its own commit of unknown outcome there, must not hand it out before it is on
        the standby: this commits a no-op write and waits for the standby to confirm it;
        WAL is replicated in order, so everything committed before it is confirmed too.
        Raises :class:`StorageError` when that cannot be confirmed within
        ``settle_timeout`` seconds.
        """
        if self.replication != "sync":
            return
        timer: threading.Timer | None = None

        def run(conn: psycopg.Connection[Any]) -> None:
            nonlocal timer
            # A write (WAL) is needed: a transaction that wrote no WAL commits without
            # waiting for the standby. Unchanged values; the row lock orders the barrier
            # after any batch commit in progress.
            conn.execute("UPDATE tlog_state SET epoch = epoch WHERE id = 1")
            # Bounded: with no standby the wait would never end; a cancel ends it with the
            # warning _write turns into CommitUnknown (not confirmed).
            timer = threading.Timer(self.settle_timeout, conn.cancel_safe)
            timer.daemon = True
            timer.start()

        try:
            self._write(run, "a replication barrier")
        except CommitUnknown as exc:
            raise StorageError(
                f"cannot confirm that a synchronous standby of {self.location} has what "
                f"was read (no confirmation within {self.settle_timeout:g} s): {exc}"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()

    def set_meta(self, key: str, value: bytes) -> None:
        """Record ``key`` (the log's identity: origin, verifier key), once. Frontends
        starting together on an empty database each find no identity and write their own:
        the first one written stays, and a frontend whose value differs is refused here,
        never overwriting the key the log's checkpoints are signed with."""

        def run(conn: psycopg.Connection[Any]) -> None:
            # Waits for a concurrent insert of the key, then finds its committed value.
            conn.execute(
                "INSERT INTO tlog_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            row = conn.execute("SELECT value FROM tlog_meta WHERE key = %s", (key,)).fetchone()
            if row is None or bytes(row[0]) != value:
                raise StorageError(
                    f"the store's {key} was just recorded with another value (another "
                    f"frontend with another {key} created this log at the same time); "
                    "refusing to continue"
                )

        self._write(run, f"meta {key}")

    def delete_meta(self, key: str) -> None:
        """Remove the meta record ``key`` if present (``tlog migrate``'s marker)."""
        self._write(
            lambda conn: conn.execute("DELETE FROM tlog_meta WHERE key = %s", (key,)),
            f"meta {key}",
        )

    def commit_batch(self, batch: BatchWrite) -> None:
        first, n = batch.first_index, len(batch.entries)
        entries, hashes = ByteaArray(batch.entries), ByteaArray(batch.leaf_hashes)
        levels = [lv for lv, _, _ in batch.blobs]
        tiles = [ti for _, ti, _ in batch.blobs]
        blobs = ByteaArray(b for _, _, b in batch.blobs)
        deletes, upserts, values = _aux_arrays(batch.aux)
        fence = batch.aux_fence if batch.aux else None
        hook = self.before_leaves

        def run(conn: psycopg.Connection[Any]) -> None:
            # One round trip for the whole transaction (pipeline mode), then COMMIT.
            # The compare-and-swap is the UPDATE's WHERE: it takes the state row's lock
            # first (a concurrent batch waits for it, then finds the row moved), and
            # matches no row unless the store is still what the batch was built on. The
            # batch's SCIM records (a group of single events) come right after it, in the
            # same transaction: records and leaves are committed together or not at all,
            # behind the same compare-and-swap and replication check.
            try:
                with conn.pipeline() as pipe:
                    state = conn.execute(
                        _CAS,
                        (batch.tree_size, batch.checkpoint, first, batch.base_checkpoint),
                        prepare=True,
                    )
                    mine = (batch.tree_size, batch.checkpoint)  # the state row, if we moved it
                    fenced = None
                    if fence is not None:
                        fenced = conn.execute(_FENCE_IF, (fence, *mine), prepare=True)
                    if deletes:
                        conn.execute(_DELETE_AUX_IF, (deletes, *mine, fence), prepare=True)
                    if upserts:
                        conn.execute(_UPSERT_AUX_IF, (upserts, values, *mine, fence), prepare=True)
                    if hook is not None:
                        pipe.sync()
                        hook(conn)
                    conn.execute(_INSERT_ENTRIES, (first, entries), prepare=True)
                    conn.execute(_INSERT_DEDUP, (first, hashes), prepare=True)
                    if blobs:
                        conn.execute(_UPSERT_TILES, (levels, tiles, blobs), prepare=True)
                    conn.execute(
                        _INSERT_CHECKPOINT, (batch.tree_size, batch.checkpoint), prepare=True
                    )
                row = state.fetchone()
            except psycopg.errors.UniqueViolation as exc:
                conn.rollback()
                self._refused(conn, batch, exc.diag.table_name)
            if row is None:
                conn.rollback()
                self._refused(conn, batch, None)
            if fenced is not None and fenced.fetchone() is None:
                conn.rollback()
                raise _fenced_out()
            self._still_synchronous(str(row[0]))

        self._write(run, f"the batch {first}..{first + n - 1}")

    def _still_synchronous(self, standby_names: str) -> None:
        """``--replication sync``: refuse (before COMMIT: the transaction is rolled back)
        when the server stopped replicating synchronously while running (e.g. Patroni
        without synchronous_mode_strict after losing the standby): this commit would not
        wait for a standby."""
        if self.replication == "sync" and not standby_names.strip():
            raise StorageError(
                f"--replication sync: the database {self.location} stopped replicating "
                "synchronously (synchronous_standby_names is empty): nothing is committed "
                "until it does again. " + _HA_HINT
            )

    def _refused(
        self, conn: psycopg.Connection[Any], batch: BatchWrite, table: str | None
    ) -> NoReturn:
        """Why a batch's transaction (rolled back) wrote nothing: the store moved
        (:class:`CommitConflict`), or leaf hashes of it are stored already
        (:class:`DuplicateLeaves`, with their indices; read after the rollback: dedup
        records are never changed once committed)."""
        first, n = batch.first_index, len(batch.entries)
        row = conn.execute("SELECT tree_size, checkpoint FROM tlog_state WHERE id = 1").fetchone()
        conn.rollback()
        if row is None:
            raise CommitConflict("the store has no state row")
        if int(row[0]) != first:
            raise CommitConflict(f"the store's tree size is {row[0]}, this writer built on {first}")
        if row[1] is None or bytes(row[1]) != batch.base_checkpoint:
            raise CommitConflict(
                "the store's latest checkpoint is not the one this writer built on"
            )
        if table == "tlog_dedup":
            known = {
                bytes(h): int(i)
                for h, i in conn.execute(
                    "SELECT leaf_hash, idx FROM tlog_dedup WHERE leaf_hash = ANY(%b)",
                    (ByteaArray(batch.leaf_hashes),),
                ).fetchall()
            }
            conn.rollback()
            if known:
                raise DuplicateLeaves(known)
            raise CommitConflict("a leaf hash of the batch is already in the dedup index")
        if table == "tlog_entries":
            raise CommitConflict(f"entries {first}..{first + n - 1} could not all be added")
        if table == "tlog_checkpoints":
            raise CommitConflict(f"a checkpoint for size {batch.tree_size} already exists")
        raise CommitConflict(f"the commit was refused ({table or 'no state row matched'})")

    def put_checkpoint(self, size: int, checkpoint: bytes) -> None:
        def run(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(
                "SELECT tree_size, checkpoint FROM tlog_state WHERE id = 1 FOR UPDATE"
            ).fetchone()
            has = conn.execute("SELECT 1 FROM tlog_checkpoints LIMIT 1").fetchone()
            if row is None or int(row[0]) != size or row[1] is not None or has is not None:
                raise CommitConflict("the store already has a checkpoint")
            conn.execute(
                "INSERT INTO tlog_checkpoints (size, note) VALUES (%s, %s)", (size, checkpoint)
            )
            conn.execute(
                "UPDATE tlog_state SET checkpoint = %s, epoch = epoch + 1 WHERE id = 1",
                (checkpoint,),
            )

        self._write(run, "the first checkpoint")

    def put_cosignatures(self, size: int, lines: bytes) -> None:
        """Add ``lines`` to the cosignature lines stored for ``size`` (a line stored already
        is kept once). Merged here, under the row's lock, not replaced: two frontends
        record cosignatures of the same checkpoint, each writing what it read plus its own,
        and a replacing write would drop the lines the other committed in between."""

        def run(conn: psycopg.Connection[Any]) -> None:
            # The INSERT creates the row or waits for (then leaves) the one another
            # transaction is creating; FOR UPDATE then holds it until COMMIT.
            conn.execute(
                "INSERT INTO tlog_cosignatures (size, lines) VALUES (%s, '') "
                "ON CONFLICT (size) DO NOTHING",
                (size,),
            )
            row = conn.execute(
                "SELECT lines FROM tlog_cosignatures WHERE size = %s FOR UPDATE", (size,)
            ).fetchone()
            merged = _merge_lines(b"" if row is None else bytes(row[0]), lines)
            conn.execute("UPDATE tlog_cosignatures SET lines = %s WHERE size = %s", (merged, size))

        self._write(run, f"cosignatures for {size}")

    def put_token(self, digest: bytes, record: bytes) -> None:
        def run(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO tlog_tokens (digest, record) VALUES (%s, %s) "
                "ON CONFLICT (digest) DO UPDATE SET record = EXCLUDED.record",
                (digest, record),
            )

        self._write(run, "a token")

    def put_aux(
        self, items: Sequence[tuple[bytes, bytes | None]], *, fence: bytes | None = None
    ) -> None:
        deletes, upserts, values = _aux_arrays(items)

        def run(conn: psycopg.Connection[Any]) -> None:
            # Records written alone (erasure, expiry, keys, a group whose leaves are all
            # in the log already) get the batch's replication check and fence too.
            with conn.pipeline():
                names = fenced = None
                if self.replication == "sync":
                    names = conn.execute(_STANDBY_NAMES, prepare=True)
                if fence is not None:
                    fenced = conn.execute(_FENCE, (fence,), prepare=True)
                if deletes:
                    conn.execute(_DELETE_AUX, (deletes, fence), prepare=True)
                if upserts:
                    conn.execute(_UPSERT_AUX, (upserts, values, fence), prepare=True)
            if fenced is not None and fenced.fetchone() is None:
                conn.rollback()
                raise _fenced_out()
            if names is not None:
                row = names.fetchone()
                self._still_synchronous("" if row is None else str(row[0]))

        if items:
            self._write(run, "SCIM records")

    @contextlib.contextmanager
    def write_turn(self) -> Iterator[None]:
        """This frontend's turn to build and commit a batch (module docstring): a session
        advisory lock on a connection of its own, waited for at most ``turn_timeout``
        seconds (:class:`TurnTimeout`). A lost connection loses the lock with it (the
        server releases a session's locks when it ends), never a commit: the compare-and-
        swap still decides. The turn is the process's: while :meth:`hold_turn` holds it,
        this enters at once."""
        release = self.hold_turn()
        try:
            yield
        finally:
            release()

    def hold_turn(self) -> Callable[[], None]:
        """Take this frontend's write turn (:meth:`write_turn`) until the returned function
        is called (once; later calls do nothing). Holds count: the advisory lock is taken
        by the first and given back by the last."""
        if self._readonly:
            raise StorageError("the store was opened read-only")
        with self._tlock:
            if self._turns == 0:
                self._lock_turn()
            self._turns += 1
        given_back = False

        def release() -> None:
            nonlocal given_back
            with self._tlock:
                if given_back:
                    return
                given_back = True
                self._turns -= 1
                if self._turns == 0:
                    conn = self._turner
                    try:
                        if conn is not None:
                            conn.execute(_TURN_UNLOCK, prepare=True)
                    except psycopg.Error:
                        self._drop_turn()  # the server releases the lock with the session

        return release

    def _lock_turn(self) -> None:
        """Under ``_tlock``: take the advisory lock (:meth:`write_turn`)."""
        self._take_lock(
            self._turn_conn, self._drop_turn, _TURN_LOCK, "write turn", self.turn_timeout
        )

    def _take_lock(
        self,
        conn_of: Callable[[], psycopg.Connection[Any]],
        drop: Callable[[], None],
        lock: str,
        what: str,
        timeout: float,
    ) -> psycopg.Connection[Any]:
        """Take the session advisory lock ``lock`` (the write turn, the staging turn) on the
        connection ``conn_of`` gives; returns that connection. :class:`TurnTimeout` when
        another frontend held it for ``timeout`` seconds."""
        for fresh in (False, True):
            conn = conn_of()
            try:
                conn.execute(lock, prepare=True)
                return conn
            except psycopg.errors.LockNotAvailable:
                raise TurnTimeout(
                    f"another frontend held this log's {what} for over {timeout:g} s"
                ) from None
            except psycopg.Error as exc:
                dead = conn.closed or conn.broken
                drop()
                if dead and not fresh:
                    # Killed while idle (a database restart, pg_terminate_backend):
                    # nothing was locked or written, so one new connection may try.
                    continue
                raise pg_fault(exc) or StorageError(str(exc)) from exc
        raise AssertionError("unreachable: the second try returns or raises")

    def _lock_session(self, timeout: float, role: str) -> psycopg.Connection[Any]:
        """A new connection of its own for a session advisory lock (the write turn, the
        staging turn), waiting at most ``timeout`` seconds for a lock. While the database
        is known down, :class:`StoreUnreachable` at once, as a write is refused (ops30: a
        write reaching its turn during an outage, before the operator lock's loss was seen,
        tried to connect and failed as an unexpected error, a traceback in the log)."""
        self._check_reachable()
        try:
            conn = _Watched.connect(self._url, autocommit=True, **self._kwargs)
            self._track(conn, role)
            # The wait is bounded by lock_timeout alone: a statement_timeout the role or
            # database sets (shorter) would end it as a failed statement, not as the turn's
            # timeout (TurnTimeout: the SCIM writer then stages without the staging turn).
            conn.execute(
                f"SET lock_timeout = {max(1, int(timeout * 1000))}; SET statement_timeout = 0"
            )
            _no_idle_end(conn)
        except psycopg.Error as exc:
            raise pg_fault(exc) or StorageError(str(exc)) from exc
        return conn

    def _turn_conn(self) -> psycopg.Connection[Any]:
        conn = self._turner
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop_turn()
        self._turner = conn = self._lock_session(self.turn_timeout, "write turn")
        return conn

    def _drop_turn(self) -> None:
        conn, self._turner = self._turner, None
        _close_quietly(conn)

    def hold_stage_turn(self) -> tuple[Callable[[], None], bytes | None]:
        """Take this frontend's SCIM staging turn (module docstring): a session advisory
        lock on a connection of its own, waited for at most ``stage_timeout`` seconds
        (:class:`TurnTimeout`), until the returned function is called (once; later calls
        do nothing). Also returns the SCIM writer fence the store holds now (None before
        the first claim): the turn's last holder committed everything it staged before it
        gave the turn back, so a frontend whose own fence this still is need not claim
        again. Like the write turn, only liveness: the fence still decides every write."""
        if self._readonly:
            raise StorageError("the store was opened read-only")
        with self._slock:
            conn = self._take_lock(
                self._stage_conn,
                self._drop_stager,
                _STAGE_LOCK,
                "SCIM staging turn",
                self.stage_timeout,
            )
            try:
                row = conn.execute(_CURRENT_FENCE, prepare=True).fetchone()
            except psycopg.Error as exc:
                self._drop_stager()  # the server gives the lock back with the session
                raise pg_fault(exc) or StorageError(str(exc)) from exc
        fence = None if row is None or row[0] is None else bytes(row[0])
        given_back = False

        def release() -> None:
            nonlocal given_back
            with self._slock:
                if given_back:
                    return
                given_back = True
                conn = self._stager
                try:
                    if conn is not None:
                        conn.execute(_STAGE_UNLOCK, prepare=True)
                except psycopg.Error:
                    self._drop_stager()  # the server releases the lock with the session

        return release, fence

    def stage_turn_wanted(self) -> bool:
        """Whether another session waits for the SCIM staging turn (:meth:`hold_stage_turn`)
        now: one look at ``pg_locks`` on the turn's connection. False when it is unreadable
        (the holder then keeps the turn until it is idle)."""
        with self._slock:
            conn = self._stager
            if conn is None or conn.closed or conn.broken:
                return False
            try:
                row = conn.execute(_STAGE_WANTED, prepare=True).fetchone()
            except psycopg.Error:
                self._drop_stager()
                return False
        return bool(row and row[0])

    def _stage_conn(self) -> psycopg.Connection[Any]:
        conn = self._stager
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop_stager()
        self._stager = conn = self._lock_session(self.stage_timeout, "SCIM staging turn")
        return conn

    def _drop_stager(self) -> None:
        conn, self._stager = self._stager, None
        _close_quietly(conn)

    def claim_aux_writer(self) -> bytes | None:
        """Take the SCIM writer fence (module docstring): a fresh random value in the
        ``tlog_aux_writer`` row, committed before this returns. The UPDATE waits for every
        transaction that holds the row (a record write under the previous fence) and then
        stops all later ones; reads opened after this see what they committed."""
        fence = secrets.token_bytes(16)
        holder = f"{socket.gethostname()[:64]} pid {os.getpid()}"

        def run(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(_CLAIM, (fence, holder)).fetchone()
            if row is None:
                raise StorageError("the store has no SCIM writer row (tlog_aux_writer)")
            return int(row[0])

        claims = self._write(run, "the SCIM writer fence")
        log.debug("claimed the SCIM writer fence (claim %d)", claims)
        return fence

    def clear_if_meta(self, key: str, value: bytes) -> bool:
        """Empty every table if meta ``key`` holds ``value`` (``tlog migrate --restart``);
        the format record and the state row as a new store has them."""

        def run(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(
                "SELECT value FROM tlog_meta WHERE key = %s FOR UPDATE", (key,)
            ).fetchone()
            if row is None or bytes(row[0]) != value:
                return False
            fmt = conn.execute("SELECT value FROM tlog_meta WHERE key = 'format'").fetchone()
            conn.execute(
                "TRUNCATE tlog_meta, tlog_entries, tlog_dedup, tlog_tiles, tlog_checkpoints, "
                "tlog_cosignatures, tlog_tokens, tlog_aux"
            )
            if fmt is not None:
                conn.execute("INSERT INTO tlog_meta (key, value) VALUES ('format', %s)", (fmt[0],))
            conn.execute(
                "UPDATE tlog_state SET tree_size = 0, checkpoint = NULL, epoch = epoch + 1 "
                "WHERE id = 1"
            )
            return True

        return bool(self._write(run, "clearing an interrupted tlog migrate"))

    def load_raw(self, table: str, items: Iterator[tuple[bytes, bytes]]) -> int:
        if table not in TABLES:
            raise ValueError(f"no table {table!r}")

        def run(conn: psycopg.Connection[Any]) -> int:
            cur = conn.cursor()
            count = 0
            if table == "meta":
                for k, v in items:
                    if k == b"tree_size":
                        cur.execute(
                            "UPDATE tlog_state SET tree_size = %s WHERE id = 1",
                            (_u64(v),),
                        )
                    else:
                        cur.execute(
                            "INSERT INTO tlog_meta (key, value) VALUES (%s, %s) "
                            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                            (k.decode("ascii"), v),
                        )
                    count += 1
                return count
            sql, types, row = _LOADERS[table]
            with cur.copy(sql) as cp:
                cp.set_types(types)
                for k, v in items:
                    cp.write_row(row(k, v))
                    count += 1
            if table == "checkpts":
                cur.execute(
                    "UPDATE tlog_state SET checkpoint = (SELECT note FROM tlog_checkpoints "
                    "ORDER BY size DESC LIMIT 1), epoch = epoch + 1 WHERE id = 1"
                )
            return count

        try:
            return int(self._write(run, f"the {table} records"))
        except StorageError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise CommitConflict(f"{table}: a record already exists") from None
            raise


# The statements of a batch commit (prepared on the writer connection). Arrays go in binary
# (%b): unnest turns them into rows server side, so each table is one statement however
# large the batch, and the statements can be pipelined (COPY cannot).
_CAS = (
    "UPDATE tlog_state SET tree_size = %b, checkpoint = %b, epoch = epoch + 1 "
    "WHERE id = 1 AND tree_size = %b AND checkpoint = %b "
    "RETURNING current_setting('synchronous_standby_names')"
)
_INSERT_ENTRIES = (
    "INSERT INTO tlog_entries (idx, data) "
    "SELECT %b::int8 + n - 1, e FROM unnest(%b::bytea[]) WITH ORDINALITY AS t(e, n)"
)
_INSERT_DEDUP = (
    "INSERT INTO tlog_dedup (leaf_hash, idx) "
    "SELECT h, %b::int8 + n - 1 FROM unnest(%b::bytea[]) WITH ORDINALITY AS t(h, n)"
)
_UPSERT_TILES = (
    "INSERT INTO tlog_tiles (level, idx, blob) "
    "SELECT * FROM unnest(%b::int2[], %b::int8[], %b::bytea[]) "
    "ON CONFLICT (level, idx) DO UPDATE SET blob = EXCLUDED.blob"
)
_INSERT_CHECKPOINT = "INSERT INTO tlog_checkpoints (size, note) VALUES (%b, %b)"
# The write turn (PgStorage.write_turn): a session advisory lock, one per schema (each log
# has its own; two logs whose names hash alike would only take turns needlessly).
_TURN_KEY = "hashtextextended(current_schema() || '/tlog write turn', 0)"
_TURN_LOCK = f"SELECT pg_advisory_lock({_TURN_KEY})"
_TURN_UNLOCK = f"SELECT pg_advisory_unlock({_TURN_KEY})"
# The SCIM staging turn (PgStorage.hold_stage_turn): another session advisory lock per
# schema, and whether another session waits for it (an advisory lock on a bigint key is
# listed in pg_locks with its high 32 bits as classid, its low ones as objid, objsubid 1).
_STAGE_KEY = "hashtextextended(current_schema() || '/tlog scim staging turn', 0)"
_STAGE_LOCK = f"SELECT pg_advisory_lock({_STAGE_KEY})"
_STAGE_UNLOCK = f"SELECT pg_advisory_unlock({_STAGE_KEY})"
_STAGE_WANTED = (
    "WITH k AS (SELECT hashtextextended(current_schema() || '/tlog scim staging turn', 0) "
    "AS key) SELECT EXISTS (SELECT 1 FROM pg_locks, k "
    "WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = ((key >> 32) & 4294967295)::oid AND objid = (key & 4294967295)::oid)"
)
_CURRENT_FENCE = "SELECT fence FROM tlog_aux_writer WHERE id = 1"
_STANDBY_NAMES = "SELECT current_setting('synchronous_standby_names')"
# The sessions of this process's connections (_end_dark): pid, state, seconds in it,
# seconds since the session began.
_SESSIONS = (
    "SELECT pid, coalesce(state, '?'), extract(epoch FROM now() - state_change)::float8, "
    "extract(epoch FROM now() - backend_start)::float8 "
    "FROM pg_stat_activity WHERE pid = ANY(%s)"
)
# The writer session and the sessions holding a lock it waits for (_report_wait).
_WAITS = (
    "SELECT pid, application_name, coalesce(state, '?'), "
    "coalesce(extract(epoch FROM now() - xact_start)::int, 0), wait_event_type, wait_event "
    "FROM pg_stat_activity WHERE pid = %s OR pid = ANY(pg_blocking_pids(%s))"
)
# The SCIM writer fence (module docstring). A claim replaces the fence; a transaction that
# writes records first locks the row FOR SHARE (a claim waits for it to end) and finds it
# only if the fence is still the one its records were staged under; the record statements
# below (their "fence = coalesce(...)") match nothing otherwise. A NULL fence (a caller that
# claims none: a test, a one-writer tool) is not checked.
_CLAIM = (
    "UPDATE tlog_aux_writer SET fence = %b, claims = claims + 1, holder = %s "
    "WHERE id = 1 RETURNING claims"
)
_FENCE = "SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = %b FOR SHARE"
_FENCE_IF = (
    "SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = %b AND EXISTS "
    "(SELECT 1 FROM tlog_state WHERE id = 1 AND tree_size = %b AND checkpoint = %b) FOR SHARE"
)
# Auxiliary records (SCIM): the deleted keys, then the written (key, value) pairs; the keys
# of one statement are distinct (_aux_arrays), as ON CONFLICT DO UPDATE requires.
_DELETE_AUX = (
    "DELETE FROM tlog_aux WHERE key = ANY(%b::bytea[]) AND EXISTS "
    "(SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = coalesce(%b::bytea, fence))"
)
_SELECT_AUX_MANY = "SELECT key, value FROM tlog_aux WHERE key = ANY(%b::bytea[])"
_UPSERT_AUX = (
    "INSERT INTO tlog_aux (key, value) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
    "WHERE EXISTS "
    "(SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = coalesce(%b::bytea, fence)) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)
# In a batch: only if its compare-and-swap moved the state row (the new tree size and
# checkpoint, seen by this transaction alone until COMMIT). A batch that lost the
# compare-and-swap holds no lock on the state row; it then touches no record either, so it
# never waits for (or deadlocks with) the winner's records, and writes nothing at all.
_DELETE_AUX_IF = (
    "DELETE FROM tlog_aux WHERE key = ANY(%b::bytea[]) AND EXISTS "
    "(SELECT 1 FROM tlog_state WHERE id = 1 AND tree_size = %b AND checkpoint = %b) AND EXISTS "
    "(SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = coalesce(%b::bytea, fence))"
)
_UPSERT_AUX_IF = (
    "INSERT INTO tlog_aux (key, value) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
    "WHERE EXISTS (SELECT 1 FROM tlog_state WHERE id = 1 AND tree_size = %b AND checkpoint = %b) "
    "AND EXISTS "
    "(SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = coalesce(%b::bytea, fence)) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)


# The store's operator lock: a session advisory lock per schema (the key is tlog migrate's
# destination lock of earlier versions, so an older tlog migrate is seen too), held on a
# connection of its own for a whole run: exclusively by ``tlog migrate`` writing into the
# schema and by ``tlog recover``, shared by every ``tlog serve`` of the schema. So none of
# them starts while another holds it, and the refusal names the holder (its connection's
# application_name). An advisory lock on a bigint key is listed in pg_locks with its high
# 32 bits as classid, its low ones as objid, objsubid 1.
_HOLD_KEY = "hashtextextended(current_schema() || '/tlog migrate destination', 0)"
_HOLD_EXCLUSIVE = f"SELECT pg_try_advisory_lock({_HOLD_KEY})"
_HOLD_SHARED = f"SELECT pg_try_advisory_lock_shared({_HOLD_KEY})"
# Taken by every write transaction of a tlog serve (PgStorage.operator_hold): the same lock,
# shared, for the transaction only. An exclusive holder (recover, migrate) refuses it, and
# none can take the lock while a write of a serve is in flight: the session lock of
# OperatorHold may be lost unseen for a moment, this one cannot.
_HOLD_XACT = f"SELECT pg_try_advisory_xact_lock_shared({_HOLD_KEY})"
_HOLDERS = (
    "WITH k AS (SELECT hashtextextended(current_schema() || '/tlog migrate destination', 0) "
    "AS key) SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.pid <> pg_backend_pid() "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = ((key >> 32) & 4294967295)::oid AND l.objid = (key & 4294967295)::oid "
    "ORDER BY a.backend_start"
)


class StoreHeld(StorageError):
    """:func:`hold_store` found the store's operator lock held by another process:
    ``holder`` names it (its application_name, backend, address and connection time)."""

    def __init__(self, where: str, holder: str) -> None:
        super().__init__(f"the store {where} is in use by {holder}")
        self.where = where
        self.holder = holder


def _connect_kwargs(url: str, application_name: str) -> dict[str, Any]:
    """The keyword arguments of every connection tlog opens: its ``application_name`` (at
    most 63 bytes, PostgreSQL's limit), a 10 s connect timeout and the keepalives of
    ``_NET_DEFAULTS``, each unless the URL sets its own. A server that vanishes without
    closing its connections (power loss, partition) is found in seconds, not after the
    system's 2 h keepalive time: a writer waiting for its COMMIT's answer holds the writer
    lock meanwhile, and a lost operator lock is seen."""
    kwargs: dict[str, Any] = {"application_name": application_name[:63]}
    if "connect_timeout" not in url:
        kwargs["connect_timeout"] = 10
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        given = {}  # connect() says what is wrong with it
    for k, v in _NET_DEFAULTS.items():
        if k not in given:
            kwargs[k] = v
    return kwargs


def hold_store(url: str, who: str, *, exclusive: bool) -> psycopg.Connection[Any]:
    """Take the store's operator lock (``_HOLD_KEY`` above) on a new connection whose
    ``application_name`` is ``who`` with this process's PID and host (it names this
    process in another's refusal), without
    waiting; returns the connection, whose end (however this process ends: the server ends
    the session) gives the lock back. :class:`StoreHeld` naming the holder when another
    process holds it in a mode that excludes this one; :class:`StorageError` when the
    database cannot be reached."""
    where = redact(url)
    kwargs = _connect_kwargs(url, f"{who} PID {os.getpid()} on host {socket.gethostname()}")
    try:
        conn = _Watched.connect(url, autocommit=True, **kwargs)
    except psycopg.Error as exc:
        raise StorageError(f"cannot open the database {where}: {exc}") from None
    conn.role = "operator lock"
    try:
        _no_idle_end(conn)
        row = conn.execute(_HOLD_EXCLUSIVE if exclusive else _HOLD_SHARED).fetchone()
        if row and row[0]:
            return conn
        others = conn.execute(_HOLDERS).fetchall()
    except psycopg.Error as exc:
        conn.close()
        raise StorageError(f"cannot lock the store {where}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    conn.close()
    if not others:
        holder = "another tlog process (it has just ended: run this one again)"
    else:
        pid, app, addr, since = others[0]
        holder = (
            f"{app or 'another session'} (PostgreSQL backend {pid}, from "
            f"{addr or 'a local socket'}, connected since {since:%Y-%m-%dT%H:%M:%SZ})"
        )
        if len(others) > 1:
            holder += f" and {len(others) - 1} other session(s)"
    raise StoreHeld(where, holder)


HOLD_CHECK_EVERY = 1.0  # seconds between two looks at OperatorHold's lock connection
HOLD_MAX_BACKOFF = 8.0  # at most this many seconds between two attempts to take it again
# Seconds between two round trips on the lock connection, and how long one may take (on
# this side's clock): a path that went dark without closing anything (a TCP proxy or load
# balancer before PostgreSQL, whose own kernel answers the keepalive probes) is seen within
# about HOLD_PROBE_EVERY + HOLD_PROBE_TIMEOUT + HOLD_CHECK_EVERY seconds.
HOLD_PROBE_EVERY = 5.0
HOLD_PROBE_TIMEOUT = 5.0


def _lock_alive(conn: psycopg.Connection[Any], *, probe: bool) -> bool:
    """Whether the idle lock connection ``conn`` still has its session: a poll of its
    socket, and a round trip (:func:`_answers`) when the server sent something unasked (a
    terminated session's error arrives a moment before the end of the stream, so the poll
    alone may read the one without the other, :func:`_dead_while_idle`) or ``probe``."""
    readable = _unread(conn)
    if readable is None:
        return False
    if not readable and not probe:
        return True
    return _answers(conn, HOLD_PROBE_TIMEOUT)


def _answers(conn: psycopg.Connection[Any], timeout: float) -> bool:
    """Whether the idle connection ``conn`` answers ``SELECT 1`` within ``timeout`` seconds
    of this side's clock. A statement timeout cannot bound it (the server may be the one
    out of reach), nor the TCP keepalives (a proxy's kernel answers them): libpq's
    asynchronous calls, each wait a ``select`` on its socket. False leaves the connection
    with a statement in flight: it is to be closed."""
    pg = conn.pgconn
    deadline = time.monotonic() + timeout
    try:
        pg.send_query(b"SELECT 1")
        ok = True
        while True:
            while pg.is_busy():
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pg.socket], [], [], left)[0]:
                    return False
                pg.consume_input()
            res = pg.get_result()
            if res is None:
                return ok
            ok = ok and res.status == psycopg.pq.ExecStatus.TUPLES_OK
    except (psycopg.Error, OSError, ValueError):
        return False


class OperatorHold:
    """``tlog serve``'s shared hold of the store's operator lock (:func:`hold_store`),
    kept for its whole run: a thread looks at the lock's connection every
    ``HOLD_CHECK_EVERY`` seconds (:func:`_lock_alive`: a poll of its socket; a restart, a
    ``pg_terminate_backend`` or, through the keepalives, a network cut ends it) and makes
    a round trip on it every ``HOLD_PROBE_EVERY`` seconds, bounded by
    ``HOLD_PROBE_TIMEOUT`` (a path gone dark behind a TCP proxy, which answers the
    keepalives itself, shows only so: red team 11), logs the
    loss (CRITICAL, the store named as :func:`redact` does) and takes the lock again, with
    a backoff doubling up to ``HOLD_MAX_BACKOFF`` seconds.

    While it does not hold the lock, :meth:`check` raises :class:`StoreNotHeld` with the
    reason (naming an exclusive holder, as :class:`StoreHeld` does): the store refuses
    every write (:attr:`PgStorage.operator_hold`), reads go on. Every write transaction
    also takes the lock shared for itself (``_HOLD_XACT``), so nothing is written while an
    exclusive holder runs, even in the moment before the loss is seen; a write in flight
    when the lock is lost ends as it would have (its transaction keeps the exclusive tools
    out until it ends), and what it acknowledged is committed."""

    def __init__(
        self,
        url: str,
        who: str,
        *,
        check_every: float = HOLD_CHECK_EVERY,
        max_backoff: float = HOLD_MAX_BACKOFF,
        probe_every: float = HOLD_PROBE_EVERY,
    ) -> None:
        self._url = url
        self.probe_every = probe_every
        self._who = who
        self.where = redact(url)
        self._conn: psycopg.Connection[Any] | None = hold_store(url, who, exclusive=False)
        self.lost: str | None = None  # why writes are refused; None while the lock is held
        self.losses = 0  # times the lock was lost since start
        self.check_every = check_every
        self.max_backoff = max_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlog-operator-hold", daemon=True)
        self._thread.start()

    @property
    def connection(self) -> psycopg.Connection[Any] | None:
        """The lock's connection while it is held."""
        return self._conn

    def check(self) -> None:
        """Raise :class:`StoreNotHeld` unless the lock is held."""
        lost = self.lost
        if lost is not None:
            raise StoreNotHeld(lost)

    def suspect(self) -> None:
        """A write found the lock held exclusively although this hold thought it held it:
        look at the connection now."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        conn, self._conn = self._conn, None
        _close_quietly(conn)

    def _run(self) -> None:
        probed = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.check_every)
            self._wake.clear()
            if self._stop.is_set():
                return
            conn = self._conn
            probe = time.monotonic() - probed >= self.probe_every
            if probe:
                probed = time.monotonic()
            if conn is not None and _lock_alive(conn, probe=probe):
                continue
            self._lose()
            self._take_again()
            probed = time.monotonic()

    def _lose(self) -> None:
        conn, self._conn = self._conn, None
        _close_quietly(conn)
        self.losses += 1
        self.lost = (
            f"this tlog serve lost the store's operator lock on {self.where} (its connection "
            "ended) and writes nothing until it has taken it again; reads go on"
        )
        log.critical(
            "STORE OPERATOR LOCK LOST on %s: its connection ended (a database restart, a "
            "terminated session, a network cut); writes are refused until it is taken "
            "again, reads go on",
            self.where,
        )

    def _take_again(self) -> None:
        delay = 0.25
        said = ""
        while not self._stop.is_set():
            try:
                conn = hold_store(self._url, self._who, exclusive=False)
            except StoreHeld as held:
                why = (
                    f"the store {self.where} is held by {held.holder}; this tlog serve "
                    "writes nothing until that process ends and it has taken the store's "
                    "operator lock again; reads go on"
                )
            except StorageError as exc:
                why = (
                    f"this tlog serve lost the store's operator lock on {self.where} and "
                    f"cannot take it again ({exc}); it writes nothing meanwhile; reads go on"
                )
            else:
                if self._stop.is_set():
                    _close_quietly(conn)
                    return
                self._conn = conn
                self.lost = None
                log.warning(
                    "the store's operator lock on %s is held again: writes resume", self.where
                )
                return
            self.lost = why
            if why != said:  # once per change (a new holder, the database back)
                log.error("%s", why)
                said = why
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_backoff)


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    """``conn``'s backend pid, 0 when it is closed (it may be, from another thread)."""
    try:
        return int(conn.pgconn.backend_pid)
    except (psycopg.Error, OSError):
        return 0


def _shut_socket(conn: psycopg.Connection[Any]) -> None:
    """Shut ``conn``'s socket down from any thread: a call blocked on it fails at once (a
    broken connection), whatever the path behind it does."""
    with contextlib.suppress(OSError, psycopg.Error):
        dup = socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def _close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection this process gives up (the writer's, the write turn's)."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - closing a dead connection
            pass


def _merge_lines(old: bytes, new: bytes) -> bytes:
    """``old`` followed by each line of ``new`` that ``old`` does not hold (each line
    ending in a newline, as stored)."""
    have = set(old.split(b"\n"))
    out = old if not old or old.endswith(b"\n") else old + b"\n"
    for line in new.split(b"\n"):
        if line and line not in have:
            have.add(line)
            out += line + b"\n"
    return out


def _fenced_out() -> AuxFenced:
    return AuxFenced(
        "another frontend took the SCIM writer fence since these SCIM records were staged: "
        "nothing of them was written"
    )


def _aux_arrays(
    items: Sequence[tuple[bytes, bytes | None]],
) -> tuple[ByteaArray, ByteaArray, ByteaArray]:
    """``put_aux``'s items as (deleted keys, written keys, their values): a later write of
    the same key wins, as in one LMDB transaction, so every key appears once."""
    last = dict(items)
    deletes = ByteaArray(k for k, v in last.items() if v is None)
    upserts = ByteaArray(k for k, v in last.items() if v is not None)
    values = ByteaArray(v for v in last.values() if v is not None)
    return deletes, upserts, values


def _key_u64(k: bytes) -> int:
    n = _u64(k)
    if n is None:
        raise StorageError(f"key {k.hex()[:24]} is not a u64 that fits the database")
    return n


_LOADERS: dict[str, tuple[str, list[str], Callable[[bytes, bytes], tuple[Any, ...]]]] = {
    "entries": (
        "COPY tlog_entries (idx, data) FROM STDIN (FORMAT BINARY)",
        ["int8", "bytea"],
        lambda k, v: (_key_u64(k), v),
    ),
    "dedup": (
        "COPY tlog_dedup (leaf_hash, idx) FROM STDIN (FORMAT BINARY)",
        ["bytea", "int8"],
        lambda k, v: (k, _key_u64(v)),
    ),
    "tiles": (
        "COPY tlog_tiles (level, idx, blob) FROM STDIN (FORMAT BINARY)",
        ["int2", "int8", "bytea"],
        lambda k, v: (k[0], _key_u64(k[1:]), v),
    ),
    "checkpts": (
        "COPY tlog_checkpoints (size, note) FROM STDIN (FORMAT BINARY)",
        ["int8", "bytea"],
        lambda k, v: (_key_u64(k), v),
    ),
    "cosigs": (
        "COPY tlog_cosignatures (size, lines) FROM STDIN (FORMAT BINARY)",
        ["int8", "bytea"],
        lambda k, v: (_key_u64(k), v),
    ),
    "tokens": (
        "COPY tlog_tokens (digest, record) FROM STDIN (FORMAT BINARY)",
        ["bytea", "bytea"],
        lambda k, v: (k, v),
    ),
    "aux": (
        "COPY tlog_aux (key, value) FROM STDIN (FORMAT BINARY)",
        ["bytea", "bytea"],
        lambda k, v: (k, v),
    ),
}
