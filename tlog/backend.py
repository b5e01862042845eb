"""The storage seam: what the log, the SCIM service, the tokens and the tools need of a store.

Two backends implement it:

* :class:`tlog.storage.Storage`: embedded LMDB in ``<data>/db`` (the default; one writer
  process, enforced by the data directory's lock);
* :class:`tlog.pg.PgStorage`: PostgreSQL (``--database postgresql://...``), which any
  number of ``tlog serve`` processes may share: the database serialises their batches.

No module outside the two backends imports ``lmdb`` or ``psycopg``: they use :class:`Backend`
and :class:`ReadView` from here, and :func:`open_backend` to get one.

The records, whatever the backend keeps them in, are the same eight *tables* of byte keys
and byte values (the key encoding is LMDB's, big-endian so byte order is numeric order):

========== ========================= =============================================
table      key                       value
========== ========================= =============================================
meta       ascii name                origin, vkey, format, tree size (u64)
entries    u64 index                 entry bytes
dedup      32-byte leaf hash         u64 index
tiles      u8 tile level, u64 index  16,320-byte stratum blob (see tlog.tree)
checkpts   u64 tree size             signed checkpoint note (log signature only)
cosigs     u64 tree size             cosignature lines gathered for that checkpoint
tokens     32-byte SHA-256(token)    JSON token record
aux        bytes                     SCIM records, keys, search index
========== ========================= =============================================

:meth:`ReadView.raw` walks one table in that form, so ``tlog fsck`` checks any backend with
the same code, and ``tlog migrate`` copies a log between backends byte for byte.

The write contract: :meth:`Backend.commit_batch` is a compare-and-swap on (tree size, latest
checkpoint). It writes the batch's entries, dedup keys, tiles, the new tree size and the
checkpoint covering them atomically and durably, or nothing (:class:`CommitConflict` when the
store is not what the batch was built on). It returns only once the commit is durable; if
the backend cannot know whether it committed (the connection died during COMMIT) it raises
:class:`CommitUnknown`, and the caller must reload before it signs anything again.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_VERIFY_LIMIT",
    "TABLES",
    "AuxFenced",
    "Backend",
    "BatchWrite",
    "CommitConflict",
    "CommitUnknown",
    "DuplicateLeaves",
    "ReadView",
    "StorageCorrupt",
    "StorageError",
    "StorageFull",
    "StorageReadOnly",
    "StorageReadOnlyInDoubt",
    "StoreNotHeld",
    "StoreUnreachable",
    "TurnTimeout",
    "is_database_url",
    "open_backend",
    "read_only_fault",
    "register_fault",
    "storage_fault",
    "tile_key",
    "u64",
]

DEFAULT_MAP_SIZE = 1 << 40  # LMDB: address space only; the file grows as needed
DEFAULT_VERIFY_LIMIT = 64 << 20  # LMDB: walk files up to this size with lmdb.verify at open

TABLES = ("meta", "entries", "dedup", "tiles", "checkpts", "cosigs", "tokens", "aux")

_U64 = struct.Struct(">Q")
_TILE_KEY = struct.Struct(">BQ")


def u64(n: int) -> bytes:
    return _U64.pack(n)


def tile_key(level: int, index: int) -> bytes:
    return _TILE_KEY.pack(level, index)


class StorageError(Exception):
    """The store is missing, corrupt, unreachable, or of an incompatible version."""


class NoLogStore(StorageError):
    """The database holds no tlog store at all (its tables are missing): nothing to open."""


class CommitConflict(StorageError):
    """The store is not what the writer built its batch on (another writer, or a put failed).

    Nothing of the batch was written; the writer must reload its state from the store.
    """


class TurnTimeout(CommitConflict):
    """Another process held the store's write turn (:meth:`Backend.write_turn`) longer than
    the wait allows: nothing of the batch was written, and waiting again would not help."""


class AuxFenced(CommitConflict):
    """Auxiliary records (SCIM) staged under a writer fence that another process has taken
    since (:meth:`Backend.claim_aux_writer`): what they were staged on may have changed, so
    nothing of the transaction was written. Retrying the same records cannot succeed: the
    writer claims the fence again and stages them again from a fresh read."""


class DuplicateLeaves(CommitConflict):
    """A backend that checks the dedup index in the commit (``dedup_on_commit``) found leaf
    hashes of the batch already stored: nothing was written, and the store is still what the
    batch was built on. ``known`` maps each of them to its stored index, so the writer can
    rebuild the batch without them (no reload needed)."""

    def __init__(self, known: dict[bytes, int]) -> None:
        super().__init__(f"{len(known)} leaf hash(es) of the batch are already in the log")
        self.known = known


class CommitUnknown(StorageError):
    """The commit's outcome is unknown (the connection was lost while committing).

    The batch may or may not be durable: its signature must not be handed out before the
    writer has reloaded the store and found that exact checkpoint in it.
    """


class StorageCorrupt(StorageError):
    """Stored data is damaged: it does not match the tree it belongs to, or the engine found
    a broken page. Served as 503 with a JSON reason and logged CRITICAL; run ``tlog fsck``."""


class StoreNotHeld(StorageError):
    """A ``tlog serve`` of a shared store does not hold the store's operator lock (its
    lock's connection ended: a database restart, a terminated session, a network cut; or
    ``tlog recover``/``tlog migrate`` holds it now): it writes nothing until it has taken
    it again (503 with the reason, which names an exclusive holder). Nothing of the write
    was stored."""


class StoreUnreachable(StorageError):
    """The store's database is known not to answer (the last connection attempt failed):
    reads and writes are answered 503 at once, nothing written, while a background probe
    tries it again (:class:`tlog.pg.PgStorage`)."""


class StorageFull(StorageError):
    """The disk (or the file size limit) is full: nothing of the write was stored (503)."""


class StorageReadOnly(StorageError):
    """The file system under the store went read-only (ext4's ``errors=remount-ro`` after
    an I/O error, or an operator's remount): nothing of the write was stored (503), and
    ``/readyz`` fails until a write succeeds again. Not "disk full": freeing space would
    not help; the file system must be checked and remounted read-write, and the server
    restarted."""


class StorageReadOnlyInDoubt(StorageReadOnly):
    """The file system under the store said it was read-only right after a commit whose
    fsync answered success (:func:`client.runtime.durable.gone_read_only`): the commit may
    be in the page cache only, so nothing of it is acknowledged (503), and what this
    process reads from the store may not be what the disk holds. Every later write is
    refused and the log stops signing until a restart (after the file system's repair)."""


def read_only_fault(exc: BaseException) -> StorageReadOnly:
    return StorageReadOnly(
        f"the file system under the store is read-only ({exc}); nothing was written. "
        "Check the file system (an I/O error?), remount it read-write and restart tlog serve"
    )


_FAULTS: list[Callable[[BaseException], StorageError | None]] = []


def register_fault(mapper: Callable[[BaseException], StorageError | None]) -> None:
    """A backend registers how its engine's exceptions map to :class:`StorageError`."""
    if mapper not in _FAULTS:
        _FAULTS.append(mapper)


def storage_fault(exc: BaseException) -> StorageError | None:
    """The :class:`StorageError` an exception from a backend (or the OS under it) stands
    for, or None when it is not a storage failure."""
    if isinstance(exc, StorageError):
        return exc
    for mapper in _FAULTS:
        fault = mapper(exc)
        if fault is not None:
            return fault
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return StorageFull(f"disk full: the store cannot grow ({exc}); nothing was written")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return read_only_fault(exc)
    return None


@dataclass
class BatchWrite:
    """Everything one sequencing batch commits, atomically."""

    first_index: int
    entries: Sequence[bytes]
    leaf_hashes: Sequence[bytes]
    blobs: Sequence[tuple[int, int, bytes]]
    tree_size: int
    checkpoint: bytes
    base_checkpoint: bytes  # the latest stored checkpoint the batch was built on (its size
    # is ``first_index``): the compare half of the commit's compare-and-swap
    # Auxiliary records (as :meth:`Backend.put_aux` takes them) committed in the same
    # transaction: a backend with ``aux_in_batch`` only (the SCIM records of the batch's
    # events, so that they and their leaves cost one durable write, not two).
    aux: Sequence[tuple[bytes, bytes | None]] = ()
    # The writer fence ``aux`` was staged under (:meth:`Backend.claim_aux_writer`), or None
    # (no fence: a store with one writer process).
    aux_fence: bytes | None = None


class ReadView(Protocol):
    """A consistent read-only snapshot; ``with backend.read() as rv:`` ends it."""

    def __enter__(self) -> ReadView: ...

    def __exit__(self, *exc: object) -> None: ...

    def meta(self, key: str) -> bytes | None: ...

    def tree_size(self) -> int: ...

    def blob(self, level: int, index: int) -> bytes | memoryview | None: ...

    def entry(self, index: int) -> bytes | None: ...

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries start .. end-1 (fewer if the log is shorter)."""
        ...

    def index_of(self, leaf_hash: bytes) -> int | None: ...

    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """The stored index of each of ``leaf_hashes`` that is in the log."""
        ...

    def checkpoint(self, size: int) -> bytes | None: ...

    def latest_checkpoint(self) -> tuple[int, bytes] | None: ...

    def checkpoints(self) -> Iterator[tuple[int, bytes]]: ...

    def checkpoint_at_or_after(self, size: int) -> tuple[int, bytes] | None: ...

    def cosignatures(self, size: int) -> bytes | None: ...

    def latest_cosigned(self) -> tuple[int, bytes] | None: ...

    def token(self, digest: bytes) -> bytes | None: ...

    def tokens(self) -> Iterator[tuple[bytes, bytes]]: ...

    def aux(self, key: bytes) -> bytes | None: ...

    def aux_range(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Auxiliary records whose key starts with ``prefix``, in key order (from the first
        key >= ``start`` when given)."""
        ...

    def raw(self, table: str) -> Iterator[tuple[bytes, bytes]]:
        """Every record of ``table`` (one of :data:`TABLES`) as (key, value) bytes in key
        order, in the encoding of the table above (fsck, migrate)."""
        ...

    def raw_get(self, table: str, key: bytes) -> bytes | None:
        """One record of ``table`` by its encoded key."""
        ...


class Backend(Protocol):
    """A store holding one log."""

    kind: str  # "lmdb" or "postgresql"
    # Several processes may write this store at once (the database serialises their
    # batches): a writer that loses a compare-and-swap reloads and rebuilds its batch.
    shared: bool
    # commit_batch refuses a batch with a leaf hash already stored (DuplicateLeaves, with
    # the stored indices), so the writer need not look its leaf hashes up before building
    # it: on a database that saves a round trip per batch; on LMDB the lookup is a memory
    # read and the commit does not report which hashes it found.
    dedup_on_commit: bool
    # commit_batch also writes the batch's ``aux`` records, in the same transaction.
    aux_in_batch: bool
    # Called once by close() (e.g. release the writer's lock).
    on_close: list[Callable[[], object]]

    @property
    def location(self) -> str:
        """Where the store is, for messages (a path, or a URL without its password)."""
        ...

    @property
    def instance(self) -> str:
        """Which copy of a store this is, among copies with the same contents (and so the
        same store id): LMDB, the store directory's real path; PostgreSQL, the cluster's
        system identifier, the database and the schema. A promoted physical standby is the
        same instance; a dump restored elsewhere or a ``tlog migrate`` copy is another. No
        secret (it names no password)."""
        ...

    def read(self) -> ReadView: ...

    def close(self) -> None: ...

    def set_meta(self, key: str, value: bytes) -> None: ...

    def delete_meta(self, key: str) -> None:
        """Remove the meta record ``key`` if present (``tlog migrate``'s marker)."""
        ...

    def commit_batch(self, batch: BatchWrite) -> None:
        """The batch's compare-and-swap commit (see the module docstring)."""
        ...

    def put_checkpoint(self, size: int, checkpoint: bytes) -> None:
        """Store the first checkpoint of an empty log; :class:`CommitConflict` when the store
        already has one."""
        ...

    def settle(self) -> None:
        """Return once everything read from this store so far survives the loss of its
        server (a replicated database: confirmed by a synchronous standby); raise
        :class:`StorageError` when that cannot be confirmed. A no-op where a commit is
        durable once it is visible (LMDB)."""
        ...

    def put_cosignatures(self, size: int, lines: bytes) -> None: ...

    def put_token(self, digest: bytes, record: bytes) -> None: ...

    def put_aux(
        self, items: Sequence[tuple[bytes, bytes | None]], *, fence: bytes | None = None
    ) -> None:
        """Write (or, with None, delete) auxiliary records in one durable transaction.
        ``fence``: the writer fence they were staged under; :class:`AuxFenced` (nothing
        written) if another process claimed it since."""
        ...

    def write_turn(self) -> AbstractContextManager[None]:
        """Held while this process catches up with the store, builds a batch on it and
        commits it: on a store that several processes write (``shared``), their batches
        then take turns instead of losing each other's compare-and-swap (which the
        compare-and-swap still checks). Raises :class:`TurnTimeout` when another process
        holds it for too long. A no-op on a store with one writer process (LMDB)."""
        ...

    def hold_turn(self) -> Callable[[], None]:
        """Take the write turn (:meth:`write_turn`) until the returned function is called;
        the turn is the process's, so its ``write_turn`` enters at once meanwhile. The SCIM
        writer holds it from a claim of the writer fence until the first group staged under
        that claim is committed, so that no other process can claim the fence in between:
        a staging that lost the fence commits at its next attempt (tlog.scim.service)."""
        ...

    def hold_stage_turn(self) -> tuple[Callable[[], None], bytes | None]:
        """Take the SCIM staging turn until the returned function is called (once), and
        the writer fence (:meth:`claim_aux_writer`) the store holds now. On a store that
        several processes write (``shared``), the SCIM writer holds it while it stages
        groups and until they are committed, so that another process claims the fence only
        when nothing staged here is in flight (a claim would refuse it: staged again, the
        work done twice). Raises :class:`TurnTimeout` when another process holds it for too
        long. Only liveness: the fence still decides. Not used on a store with one writer
        process (LMDB: nothing to hold, no fence)."""
        ...

    def stage_turn_wanted(self) -> bool:
        """Whether another process waits for the SCIM staging turn this one holds
        (:meth:`hold_stage_turn`; False on a store with one writer process)."""
        ...

    def claim_aux_writer(self) -> bytes | None:
        """Become the writer of auxiliary records on a store that several processes write
        (``shared``): returns a fence that this process's later aux writes carry, and that
        stops every write staged under an earlier claim (of this process or another)
        (:class:`AuxFenced`). Whatever was committed under earlier claims is visible to
        every read opened after this returns. None on a store with one writer process
        (LMDB: the lock file already keeps a second writer out), where no fence is needed."""
        ...

    def check_structure(self) -> list[str]:
        """Problems the engine's own structural check finds (fsck's first layer)."""
        ...

    def is_empty(self) -> bool:
        """No log was ever stored here (no meta record, no checkpoint)."""
        ...

    def load_raw(self, table: str, items: Iterator[tuple[bytes, bytes]]) -> int:
        """Copy records (in :meth:`ReadView.raw`'s form) into this store, which must hold no
        log yet (``tlog migrate``); returns how many. Durable when it returns."""
        ...

    def clear_if_meta(self, key: str, value: bytes) -> bool:
        """Remove every record of every table, in one transaction, if and only if the meta
        record ``key`` holds ``value`` (checked inside that transaction); the store is then
        as a new one. Only for ``tlog migrate --restart``, which clears an interrupted copy
        identified by its marker. Whether it cleared. Durable when it returns."""
        ...


def is_database_url(database: str | None) -> bool:
    return database is not None and database.startswith(("postgresql://", "postgres://"))


def open_backend(
    database: str | None,
    data_dir: Path,
    *,
    readonly: bool = False,
    map_size: int | None = None,
    verify_limit: int | None = None,
    replication: str = "none",
) -> Backend:
    """The store a configuration names: ``database`` a ``postgresql://`` URL, or None (or
    ``lmdb``) for the embedded LMDB store in ``<data_dir>/db``."""
    if is_database_url(database):
        from tlog.pg import PgStorage

        assert database is not None
        return PgStorage(database, readonly=readonly, replication=replication)
    if database not in (None, "", "lmdb"):
        raise StorageError(
            f"unknown --database {database!r}: give a postgresql:// URL, or leave it unset "
            "for the embedded LMDB store"
        )
    from tlog import storage

    return storage.Storage(
        data_dir / "db",
        readonly=readonly,
        map_size=DEFAULT_MAP_SIZE if map_size is None else map_size,
        verify_limit=DEFAULT_VERIFY_LIMIT if verify_limit is None else verify_limit,
    )
