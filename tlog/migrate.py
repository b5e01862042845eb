"""``tlog migrate``: copy a log between backends (LMDB <-> PostgreSQL) without changing a byte.

1. The source is checked first (:func:`tlog.fsck.fsck`: every entry, tile, dedup key and
   checkpoint recomputed, every checkpoint's signature verified with the stored key); a
   source that does not verify is not copied.
2. Every table of :mod:`tlog.backend` is copied record for record, from ONE read snapshot
   of the source, into a destination that must hold no log yet.
3. The destination is verified: fsck again (the roots recomputed from the copied entries
   must be the ones the log signed), its latest checkpoint must be the source's signed
   checkpoint byte for byte, and every table is compared with the source snapshot record
   by record.

Only the store moves: the signing key, the SCIM master key and the remembered checkpoint
stay in the data directory (``--data``), which serves the log on either backend.
Servers on the source must be stopped first (an LMDB source's lock is taken here).

An interrupted migration (killed, a full disk, a lost connection) is resumed by running it
again. Before its first record the migration writes a marker into the empty destination
(meta :data:`MARKER`: the source's origin and latest signed checkpoint), and removes it
last, after the copy verified. A re-run that finds its own marker (same origin, same
checkpoint) proves that every table already in the destination is a prefix of the
source's, record for record, byte for byte, and copies only the rest; then verifies the
whole copy as a first run does. Anything else is refused and nothing is written: a
destination without the marker that holds anything (another log, a completed migration,
foreign records), a marker of another source or of this source at another checkpoint (it
changed since), or a table that is not a prefix of the source's (a server was started on
the half copy and wrote to it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tlog.backend import TABLES, Backend, ReadView, StorageError, is_database_url, open_backend
from tlog.fsck import FsckReport, fsck

__all__ = [
    "MARKER",
    "MigrateError",
    "MigrateReport",
    "describe_marker",
    "migrate",
    "open_location",
]


class MigrateError(StorageError):
    """The migration was refused or its copy does not verify."""


@dataclass
class MigrateReport:
    tree_size: int
    checkpoint: bytes
    records: dict[str, int] = field(default_factory=dict)
    source_fsck: FsckReport | None = None
    dest_fsck: FsckReport | None = None


def _lmdb_db_dir(location: str) -> Path:
    """An LMDB location is a data directory (the store is its ``db/``) or a store
    directory holding ``data.mdb`` itself."""
    p = Path(location)
    if (p / "data.mdb").exists():
        return p
    return p / "db"


@contextlib.contextmanager
def open_location(location: str, *, create: bool) -> Iterator[Backend]:
    """The store at ``location`` (a ``postgresql://`` URL or an LMDB directory); an LMDB
    store is locked against a running server (and another migration) while open. A
    PostgreSQL destination (``create``) is locked against another ``tlog migrate`` writing
    into it (:func:`_destination_lock`)."""
    if is_database_url(location):
        # The lock first: a destination is not even opened (its schema created) while
        # another process holds it.
        with _destination_lock(location) if create else contextlib.nullcontext():
            st = open_backend(location, Path("."))
            try:
                yield st
            finally:
                st.close()
        return
    from tlog.integrity import DataDirLock, preflight

    db = _lmdb_db_dir(location)
    if not create and not (db / "data.mdb").exists():
        raise MigrateError(f"no LMDB store at {db}")
    db.mkdir(mode=0o700, parents=True, exist_ok=True)
    with DataDirLock(db, "tlog migrate"):
        preflight(db)
        st = open_backend(None, db.parent) if db.name == "db" else _open_lmdb(db)
        try:
            yield st
        finally:
            st.close()


@contextlib.contextmanager
def _destination_lock(url: str) -> Iterator[None]:
    """Hold the destination's operator lock exclusively (:func:`tlog.pg.hold_store`: a
    session advisory lock on a connection of its own, released by the server when the
    connection ends, however this process ends) for the whole migration, or stop at once
    naming its holder: two ``tlog migrate`` writing into one destination (a ``--restart``
    clearing the copy while another run resumes it) would interleave their records; the
    final comparison would catch a wrong copy, but only after both had written. A
    ``tlog serve`` holds the same lock shared for its whole run and ``tlog recover``
    exclusively, so none of them starts while a migration writes into the schema (from its
    first moment, before its marker is written), nor a migration while they run. The
    connection's ``application_name`` names this process for the other's message. (An
    LMDB destination: the data directory's lock, :class:`tlog.integrity.DataDirLock`, does
    the same.)"""
    from tlog.pg import StoreHeld, hold_store

    try:
        conn = hold_store(url, "tlog migrate", exclusive=True)
    except StoreHeld as held:
        doing = "being written by" if "tlog migrate" in held.holder else "in use by"
        raise MigrateError(
            f"the destination {held.where} is {doing} {held.holder}: one migration at a "
            "time into a store, and none into a store being served or recovered. Wait for "
            "it to end (or stop it; running the same command again then resumes or, with "
            "--restart, restarts the copy); nothing was written"
        ) from None
    try:
        yield
    finally:
        conn.close()  # the session's advisory lock goes with it


def _open_lmdb(db: Path) -> Backend:
    from tlog.storage import Storage

    return Storage(db)


def _latest(rv: ReadView) -> tuple[int, bytes]:
    latest = rv.latest_checkpoint()
    if latest is None:
        raise MigrateError("the source holds no log (no checkpoint)")
    return latest


# The order records are copied in, one transaction per table: the signed checkpoints last.
# A copy that stops half way (killed, a full disk) then holds a tree size and entries but no
# checkpoint, which no server starts on ("store has entries but no checkpoint"), instead of
# a log that verifies but lacks the tokens and SCIM records that were still to come.
COPY_ORDER = (*(t for t in TABLES if t != "checkpts"), "checkpts")


# How to start again from an empty destination, the end of every refusal that asks for one.
_EMPTY_IT = (
    "(LMDB: remove the store directory; PostgreSQL: drop the log's tables or use a new "
    "database) and run again"
)


def _refuse_destination(dest: Backend) -> None:
    with dest.read() as rv:
        origin, latest = rv.meta("origin"), rv.latest_checkpoint()
        # Records but no log (another installation's SCIM records or tokens, a reused
        # directory or database): the copy would land on top of them, checkpoints and all,
        # and only the final comparison would fail, leaving a servable mixed log.
        held = [t for t in TABLES if t != "meta" and next(iter(rv.raw(t)), None) is not None]
    if origin is None and latest is None and not held:
        return
    if origin is None and latest is None:
        raise MigrateError(
            f"the destination {dest.location} holds records ({', '.join(held)}) but no log: "
            f"not this log's; empty it {_EMPTY_IT}"
        )
    if latest is None:
        raise MigrateError(
            f"the destination {dest.location} holds an interrupted copy (records but no "
            "signed checkpoint: a tlog migrate that did not finish): empty it (LMDB: remove "
            "the store directory; PostgreSQL: drop the log's tables or use a new database) "
            "and run again"
        )
    raise MigrateError(f"the destination {dest.location} already holds a log")


# The meta record a migration writes into the destination before anything else and
# removes last (module docstring): while it is there the destination is an unfinished copy.
MARKER = "migrating"
_MARKER_B = MARKER.encode()


def _marker(rv: ReadView) -> bytes:
    """What identifies this migration: the source's origin and latest signed checkpoint."""
    size, note = _latest(rv)
    origin = rv.meta("origin")
    return json.dumps(
        {
            "tlog_migrate": 1,
            "origin": None if origin is None else origin.decode("utf-8", "replace"),
            "tree_size": size,
            "checkpoint_sha256": hashlib.sha256(note).hexdigest(),
        },
        sort_keys=True,
    ).encode()


def describe_marker(marker: bytes) -> str:
    """What a marker says: the source's origin and tree size when the copy began."""
    try:
        doc = json.loads(marker)
        return f"origin {doc['origin']!r} at tree size {doc['tree_size']}"
    except (ValueError, KeyError, TypeError):
        return "an unreadable marker"


def _without_marker(items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    return ((k, v) for k, v in items if k != _MARKER_B)


def _not_a_prefix(dest: Backend, table: str, why: str) -> MigrateError:
    return MigrateError(
        f"the destination {dest.location} holds an interrupted tlog migrate of this log, but "
        f"its {table} is not a prefix of the source's ({why}): it changed since the "
        f"migration stopped (was a server started on it?); nothing was written. Run again "
        f"with --restart to clear that copy (its marker identifies it) and start over, or "
        f"empty it {_EMPTY_IT}"
    )


def _copy(table: str, rv: ReadView, dest: Backend) -> tuple[int, int]:
    """Copy ``table`` from the source snapshot ``rv`` into ``dest``, after proving that what
    ``dest`` already holds of it is a prefix of the source's (the same records, the same
    bytes, in order): (records that were there, records copied now)."""
    src = rv.raw(table)
    if table == "meta":
        # Keyed settings, written with overwrite: every one already there must be the
        # source's (the store format marker of a new store aside, which the final
        # comparison checks).
        with dest.read() as drv:
            held = list(_without_marker(drv.raw(table)))
        for k, v in held:
            want = rv.raw_get(table, k)
            if want is not None and want != v:
                raise _not_a_prefix(dest, table, f"record {k!r} differs")
        return 0, dest.load_raw(table, src)  # rewritten whole (the same values)
    have = 0
    missing = object()
    with dest.read() as drv:
        for k, v in drv.raw(table):
            got = next(src, missing)
            if got is missing:
                raise _not_a_prefix(dest, table, f"it has more than the source's {have}")
            if got != (k, v):
                raise _not_a_prefix(dest, table, f"record {have} differs")
            have += 1
    return have, dest.load_raw(table, src)


def _origin_of(marker: bytes) -> object:
    try:
        doc = json.loads(marker)
        return doc["origin"] if isinstance(doc, dict) else _UNREADABLE
    except (ValueError, KeyError):
        return _UNREADABLE


_UNREADABLE = object()


def _check_restart(source: Backend, dest: Backend, held_marker: bytes | None) -> bytes:
    """The marker ``--restart`` may clear: an interrupted tlog migrate's (nothing else holds
    one; ``tlog serve`` refuses such a store, so nothing but that migration wrote to it) of
    a log with the source's origin. Anything else is refused before anything is read."""
    if held_marker is None:
        lead = (
            "--restart clears only the destination of an interrupted tlog migrate, which "
            f"holds its marker; {dest.location} holds none"
        )
        try:
            _refuse_destination(dest)
        except MigrateError as exc:
            raise MigrateError(f"{lead}, and is never cleared by tlog migrate: {exc}") from None
        raise MigrateError(f"{lead}: it is empty, run without --restart")
    with source.read() as rv:
        origin = rv.meta("origin")
        latest = rv.latest_checkpoint()
    size = 0 if latest is None else latest[0]
    mine = None if origin is None else origin.decode("utf-8", "replace")
    theirs = _origin_of(held_marker)
    if theirs != mine:
        raise MigrateError(
            f"--restart: the destination {dest.location} holds an interrupted tlog migrate "
            f"of {describe_marker(held_marker)}, another log than the source ({mine!r}): not "
            "cleared. Run that migration again from its own source, or empty the "
            f"destination {_EMPTY_IT}"
        )
    began = _size_of(held_marker)
    if began is None or size < began:
        # A source behind the copy (an older backup, a lagging replica, a store that lost
        # entries) is not "the source changed since": the copy may hold acknowledged
        # entries the source lacks, and copying the shorter log would roll the log back.
        raise MigrateError(
            f"--restart: the destination {dest.location} holds an interrupted tlog migrate "
            f"of {describe_marker(held_marker)}, and the source is behind it (tree size "
            f"{size}): not cleared. A log only grows; run the migration again from the "
            "source it began from (or a copy of it at least that large)"
        )
    return held_marker


def _size_of(marker: bytes) -> int | None:
    try:
        doc = json.loads(marker)
        size = doc["tree_size"] if isinstance(doc, dict) else None
    except (ValueError, KeyError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def migrate(
    source: Backend,
    dest: Backend,
    echo: Callable[[str], None] = print,
    *,
    restart: bool = False,
) -> MigrateReport:
    """Copy the log in ``source`` into the empty ``dest`` (or finish an interrupted copy of
    the same source into it) and verify the copy.

    ``restart``: ``dest`` must hold an interrupted migration's marker of a log with the
    source's origin (the source may have changed since); once the source verifies, that
    copy is cleared (every record, in one transaction that checks the marker again) and the
    migration starts over. A destination without the marker (empty, a completed migration,
    another log, foreign records) is never cleared."""
    with source.read() as rv:
        if rv.meta(MARKER) is not None:
            raise MigrateError(
                f"the source {source.location} is an unfinished tlog migrate copy: run that "
                "migration again from its own source first"
            )
    with dest.read() as drv:
        held_marker = drv.meta(MARKER)
    if restart:
        held_marker = _check_restart(source, dest, held_marker)
    elif held_marker is None:
        _refuse_destination(dest)
    if source.is_empty():
        raise MigrateError(f"the source {source.location} holds no log")
    echo(f"migrate: checking the source {source.location} ({source.kind})")
    src_rep = fsck(source)
    if not src_rep.ok:
        raise MigrateError(
            "the source does not verify, nothing was copied: " + "; ".join(src_rep.errors[:3])
        )
    if restart:
        assert held_marker is not None
        if not dest.clear_if_meta(MARKER, held_marker):
            raise MigrateError(
                f"--restart: the marker in {dest.location} changed while the source was "
                "checked (another tlog migrate?): nothing was cleared"
            )
        echo(
            f"migrate: --restart: cleared the interrupted copy of {describe_marker(held_marker)} "
            f"in {dest.location}; copying again"
        )
        held_marker = None
        _refuse_destination(dest)  # as a new store now
    with source.read() as rv:
        size, note = _latest(rv)
        mine = _marker(rv)
        if held_marker is None:
            dest.set_meta(MARKER, mine)  # first, before any record: this copy is ours
        elif held_marker != mine:
            raise MigrateError(
                f"the destination {dest.location} holds an interrupted tlog migrate of "
                f"{describe_marker(held_marker)}, not of this source as it is now "
                f"({describe_marker(mine)}): another log, or the source changed since; nothing "
                "was written. If the source changed, run again with --restart (it clears "
                "exactly that interrupted copy, identified by its marker, and starts over); "
                "for another log, run that migration again from its own source, or empty "
                f"the destination {_EMPTY_IT}"
            )
        else:
            echo(
                f"migrate: resuming the interrupted copy into {dest.location}: checking that "
                "what it holds is a prefix of the source"
            )
        rep = MigrateReport(size, note, source_fsck=src_rep)
        for table in COPY_ORDER:
            had, n = _copy(table, rv, dest)
            rep.records[table] = had + n
            echo(
                f"migrate: {table}: {n} records"
                + (f" ({had} already there, the same bytes)" if had else "")
            )
    echo(f"migrate: verifying the copy in {dest.location} ({dest.kind})")
    rep.dest_fsck = fsck(dest)
    if not rep.dest_fsck.ok:
        raise MigrateError("the copy does not verify: " + "; ".join(rep.dest_fsck.errors[:3]))
    with source.read() as srv, dest.read() as drv:
        if _latest(drv) != (size, note):
            raise MigrateError("the copy's latest checkpoint is not the source's")
        for table in TABLES:
            held = drv.raw(table)
            _same(table, srv.raw(table), _without_marker(held) if table == "meta" else held)
    dest.delete_meta(MARKER)  # last: the copy is whole and verified
    return rep


def _same(table: str, a: Iterator[tuple[bytes, bytes]], b: Iterator[tuple[bytes, bytes]]) -> None:
    missing = object()
    for n, (x, y) in enumerate(_zip_longest(a, b, missing)):
        if x != y:
            where = "missing" if y is missing else "extra" if x is missing else "different"
            raise MigrateError(f"the copy's {table} differs from the source (record {n}: {where})")


def _zip_longest(
    a: Iterator[tuple[bytes, bytes]], b: Iterator[tuple[bytes, bytes]], fill: object
) -> Iterator[tuple[object, object]]:
    from itertools import zip_longest

    return zip_longest(a, b, fillvalue=fill)
