"""LMDB storage, the default backend of :mod:`tlog.backend`: the only module that imports lmdb.

One LMDB sub-database per table of :mod:`tlog.backend` (same names, same key encoding:
big-endian, so LMDB's byte order is numeric order; dedup keys are full leaf hashes).

Integrity on the read side (see docs/design.md, "Corruption is never served"):

* before LMDB maps ``data.mdb``, :func:`check_data_file` compares the file's length with
  what its newest meta page says it holds, so a truncated file is refused with a message
  instead of a SIGBUS on first access; files up to ``verify_limit`` bytes are also walked
  by py-lmdb's offline structural verifier (:mod:`lmdb.verify`) at open;
* every LMDB failure a reader can meet becomes :class:`StorageCorrupt` (or
  :class:`StorageFull` for ENOSPC/EFBIG), never a raw ``lmdb.Error``;
* stale reader slots of dead processes (a killed ``tlog fsck``) are cleared at open and
  every ``reader_check_interval`` seconds, so they cannot pin old pages and grow the file;
* the map size is a setting; a write that fills the map grows it (doubling) and retries,
  after letting the current readers of this process finish.

Durability contract: :meth:`Storage.commit_batch` returns only after LMDB has committed the
transaction with ``fsync`` (``sync=True``); entries, tree hashes, dedup index, the new tree
size and the checkpoint covering them are written in that one transaction, so after a crash
either all of a batch exists or none of it does.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import lmdb
import lmdb.verify

from client.runtime.durable import can_write_in, gone_read_only
from tlog import backend
from tlog.backend import (
    DEFAULT_MAP_SIZE,
    DEFAULT_VERIFY_LIMIT,
    TABLES,
    BatchWrite,
    CommitConflict,
    ReadView,
    StorageCorrupt,
    StorageError,
    StorageFull,
    StorageReadOnly,
    StorageReadOnlyInDoubt,
    read_only_fault,
    storage_fault,
    tile_key,
    u64,
)
from tlog.lockfile import follow_lock_file, hold_unserved, read_only_copy

__all__ = [
    "BatchWrite",
    "CommitConflict",
    "LmdbReadView",
    "ReadView",
    "Storage",
    "StorageCorrupt",
    "StorageError",
    "StorageFull",
    "check_data_file",
    "storage_fault",
    "tile_key",
    "u64",
]

log = logging.getLogger("tlog.storage")

_U64 = struct.Struct(">Q")
_TILE_KEY = struct.Struct(">BQ")
_Puts = Sequence[tuple[bytes, bytes]]  # a run of aux items without deletions
FORMAT_VERSION = b"1"
READER_CHECK_INTERVAL = 60.0  # seconds between clearing stale reader slots
MAX_MAP_GROWTHS = 16


_T = TypeVar("_T")

# LMDB errors that mean the file is damaged (or was truncated under us).
_CORRUPT = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.PanicError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.BadValsizeError,
)


def _lmdb_fault(exc: BaseException) -> StorageError | None:
    """The :class:`StorageError` an exception from LMDB stands for (registered with
    :func:`tlog.backend.storage_fault`, which maps the OS's own errors under it: a full disk,
    a read-only file system)."""
    if isinstance(exc, lmdb.DiskError):
        return StorageFull(f"disk full: the store cannot grow ({exc}); nothing was written")
    if isinstance(exc, _CORRUPT):
        return StorageCorrupt(f"the store is damaged: {exc}; run tlog fsck")
    if isinstance(exc, lmdb.Error):
        msg = str(exc)
        if os.strerror(errno.EROFS) in msg:  # LMDB's own error carries only the message
            return read_only_fault(exc)
        if "No space left" in msg or "File too large" in msg or "quota" in msg.lower():
            return StorageFull(f"disk full: the store cannot grow ({exc}); nothing was written")
        return StorageError(f"storage failure: {exc}")
    return None


backend.register_fault(_lmdb_fault)


def _meta_pages(head: bytes) -> list[tuple[int, int, int]]:
    """(txnid, last page, page size) of each valid LMDB 0.9 meta page in ``head``."""
    out: list[tuple[int, int, int]] = []
    for page in (0, 1):
        # Page size lives in the free DB's md_pad; page 1 starts at that offset.
        base = 0 if page == 0 else (out[0][2] if out else 4096)
        if len(head) < base + 152:
            continue
        magic, version = struct.unpack_from("<II", head, base + 16)
        if magic != 0xBEEFC0DE or version != 1:
            continue
        psize = struct.unpack_from("<I", head, base + 40)[0]
        last_pg, txnid = struct.unpack_from("<QQ", head, base + 136)
        if psize < 512 or psize & (psize - 1):
            continue
        out.append((txnid, last_pg, psize))
    return out


def check_data_file(path: Path) -> None:
    """Refuse a ``data.mdb`` shorter than its newest meta page says (before mapping it).

    LMDB maps the file and would die with SIGBUS on the first page past its end.
    """
    try:
        length = path.stat().st_size
    except FileNotFoundError:
        return
    if length == 0:
        return  # a new (or emptied) store: the log's own start-up checks decide
    with path.open("rb") as f:
        head = f.read(2 * 65536)
    metas = _meta_pages(head)
    if not metas:
        raise StorageCorrupt(
            f"{path} is not an LMDB data file or both its meta pages are damaged "
            f"({length} bytes); restore it from a backup (see docs/operations.md)"
        )
    txnid, last_pg, psize = max(metas)
    need = (last_pg + 1) * psize
    if length < need:
        raise StorageCorrupt(
            f"{path} is truncated: it is {length} bytes but its last transaction "
            f"(txn {txnid}) uses {need} bytes; restore it from a backup or run tlog recover "
            "(see docs/operations.md)"
        )


def u64_range(first: int, count: int) -> list[bytes]:
    """Big-endian keys first .. first+count-1, packed in one call."""
    packed = struct.pack(f">{count}Q", *range(first, first + count))
    return [packed[i : i + 8] for i in range(0, 8 * count, 8)]


class LmdbReadView:
    """A consistent read-only snapshot (one LMDB read transaction)."""

    __slots__ = ("_s", "_tiles", "_txn")

    def __init__(self, storage: Storage, txn: Any) -> None:
        self._s = storage
        self._txn = txn
        self._tiles = storage.db_tiles

    # A context manager by hand (not @contextmanager): this wraps every proof and tile read.
    def __enter__(self) -> LmdbReadView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()
        self._s._end_read()

    def meta(self, key: str) -> bytes | None:
        v = self._txn.get(key.encode(), db=self._s.db_meta)
        return None if v is None else bytes(v)

    def tree_size(self) -> int:
        v = self._txn.get(b"tree_size", db=self._s.db_meta)
        return 0 if v is None else int(_U64.unpack(v)[0])

    def blob(self, level: int, index: int) -> memoryview | None:
        v = self._txn.get(_TILE_KEY.pack(level, index), db=self._tiles)
        return v  # type: ignore[no-any-return]

    def entry(self, index: int) -> bytes | None:
        v = self._txn.get(u64(index), db=self._s.db_entries)
        return None if v is None else bytes(v)

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries start .. end-1 (fewer if the log is shorter)."""
        out: list[bytes] = []
        if start >= end:
            return out
        cur = self._txn.cursor(db=self._s.db_entries)
        if not cur.set_key(u64(start)):
            return out
        for i, v in enumerate(cur.iternext(keys=False, values=True)):
            if i >= end - start:
                break
            out.append(bytes(v))
        return out

    def index_of(self, leaf_hash: bytes) -> int | None:
        v = self._txn.get(leaf_hash, db=self._s.db_dedup)
        return None if v is None else int(_U64.unpack(v)[0])

    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """The stored index of each of ``leaf_hashes`` that is in the log (one C call)."""
        cur = self._txn.cursor(db=self._s.db_dedup)
        found = cur.getmulti(leaf_hashes)
        return {bytes(k): int(_U64.unpack(v)[0]) for k, v in found}

    def checkpoint(self, size: int) -> bytes | None:
        v = self._txn.get(u64(size), db=self._s.db_checkpoints)
        return None if v is None else bytes(v)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        cur = self._txn.cursor(db=self._s.db_checkpoints)
        if not cur.last():
            return None
        return int(_U64.unpack(cur.key())[0]), bytes(cur.value())

    def checkpoints(self) -> Iterator[tuple[int, bytes]]:
        cur = self._txn.cursor(db=self._s.db_checkpoints)
        for k, v in cur.iternext():
            yield int(_U64.unpack(k)[0]), bytes(v)

    def checkpoint_at_or_after(self, size: int) -> tuple[int, bytes] | None:
        """The first stored checkpoint whose tree size is at least ``size`` (the console's
        history chart samples sizes with this), or None."""
        cur = self._txn.cursor(db=self._s.db_checkpoints)
        if not cur.set_range(u64(size)):
            return None
        return int(_U64.unpack(cur.key())[0]), bytes(cur.value())

    def cosignatures(self, size: int) -> bytes | None:
        v = self._txn.get(u64(size), db=self._s.db_cosigs)
        return None if v is None else bytes(v)

    def latest_cosigned(self) -> tuple[int, bytes] | None:
        cur = self._txn.cursor(db=self._s.db_cosigs)
        if not cur.last():
            return None
        return int(_U64.unpack(cur.key())[0]), bytes(cur.value())

    def token(self, digest: bytes) -> bytes | None:
        v = self._txn.get(digest, db=self._s.db_tokens)
        return None if v is None else bytes(v)

    def tokens(self) -> Iterator[tuple[bytes, bytes]]:
        cur = self._txn.cursor(db=self._s.db_tokens)
        for k, v in cur.iternext():
            yield bytes(k), bytes(v)

    def aux(self, key: bytes) -> bytes | None:
        v = self._txn.get(key, db=self._s.db_aux)
        return None if v is None else bytes(v)

    def aux_range(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Auxiliary records whose key starts with ``prefix``, in key order.

        With ``start``, iteration begins at the first key >= ``start`` (a seek, not a scan).
        """
        cur = self._txn.cursor(db=self._s.db_aux)
        if not cur.set_range(start if start is not None and start > prefix else prefix):
            return
        for k, v in cur.iternext():
            k = bytes(k)
            if not k.startswith(prefix):
                return
            yield k, bytes(v)

    def raw(self, table: str) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._txn.cursor(db=self._s.dbs[table]).iternext():
            yield bytes(k), bytes(v)

    def raw_get(self, table: str, key: bytes) -> bytes | None:
        v = self._txn.get(key, db=self._s.dbs[table])
        return None if v is None else bytes(v)


def verify_structure(path: Path) -> list[str]:
    """Problems py-lmdb's offline verifier finds in ``path`` (reads, never maps it)."""
    try:
        problems: list[str] = lmdb.verify.verify(str(path))  # type: ignore[no-untyped-call]
    except (lmdb.verify.VerifyError, OSError) as exc:
        return [f"data.mdb cannot be verified: {exc}"]
    return [f"data.mdb structure: {p}" for p in problems]


def _verify_file(path: Path, verify_limit: int) -> None:
    """The open-time checks of ``data.mdb``: its length, then (if small enough) its structure."""
    check_data_file(path)
    try:
        length = path.stat().st_size
    except FileNotFoundError:
        return
    if not 0 < length <= verify_limit:
        return
    try:
        problems: list[str] = lmdb.verify.verify(str(path))  # type: ignore[no-untyped-call]
    except lmdb.verify.VerifyError as exc:
        problems = [str(exc)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        shown = "; ".join(problems[:3]) + more
        raise StorageCorrupt(
            f"{path} is damaged ({shown}); run tlog fsck, restore from a backup "
            "(see docs/operations.md)"
        )


def _check_readers_loop(ref: weakref.ref[Storage], stop: threading.Event, interval: float) -> None:
    """The periodic stale-reader sweep (holds no strong reference: an unclosed, dropped
    Storage is still garbage-collected and its environment closed)."""
    while not stop.wait(interval):
        storage = ref()
        if storage is None:
            return
        try:
            storage.check_readers()
        except lmdb.Error:  # closed under us
            return
        del storage


def _nothing() -> None:
    """A release with nothing to release (Storage.hold_turn)."""


def _writes(fn: Callable[..., _T]) -> Callable[..., _T]:
    """A write transaction method: grow a full map and retry; disk full -> StorageFull."""

    @functools.wraps(fn)
    def wrapper(self: Storage, *args: Any, **kwargs: Any) -> _T:
        if self.in_doubt is not None:  # until a restart: the disk may differ from memory
            raise StorageReadOnlyInDoubt(self.in_doubt)
        said = self.write_fault
        if said is not None and not can_write_in(self.path):
            # Still read-only: nothing is tried. A file system gone read-only after an
            # error takes a commit that needs no new block into the page cache, and its
            # fdatasync answers 0: such a commit would be acknowledged and lost (review 39).
            raise StorageReadOnly(said)
        for _ in range(MAX_MAP_GROWTHS):
            try:
                done = fn(self, *args, **kwargs)
            except lmdb.MapFullError:
                self._grow_map()
            except (lmdb.Error, OSError) as exc:
                fault = storage_fault(exc)
                if fault is None:
                    raise
                if type(fault) is StorageError and self._looks_full():
                    # LMDB reports a short write (the disk filled mid-write) as EIO.
                    fault = StorageFull(
                        f"disk full: the store cannot grow ({exc}; {self._space()}); "
                        "nothing was written"
                    )
                if isinstance(fault, StorageReadOnly):
                    self.write_fault = str(fault)  # /readyz fails until a write succeeds
                    log.critical("READ-ONLY FILE SYSTEM: %s (store %s)", fault, self.path)
                elif isinstance(fault, StorageFull):
                    log.critical("DISK FULL: %s (store %s)", fault, self.path)
                elif isinstance(fault, StorageCorrupt):
                    log.critical("STORE DAMAGED: %s (store %s)", fault, self.path)
                raise fault from exc
            else:
                try:
                    gone: OSError | None = gone_read_only(self.path)
                except OSError as exc:  # statvfs itself failed (EIO, the directory removed)
                    gone = exc
                if gone is not None:
                    # The commit's fsync answered 0, but on a read-only file system that
                    # says nothing (ext4 after an error, older kernels): not acknowledged.
                    doubt = StorageReadOnlyInDoubt(
                        f"the file system under the store went read-only under a write "
                        f"({gone}); nothing of it was acknowledged, and nothing is written "
                        "or signed until a restart. Check the file system (an I/O error?), "
                        "remount it read-write and restart tlog serve"
                    )
                    self.write_fault = self.in_doubt = str(doubt)
                    log.critical("READ-ONLY FILE SYSTEM: %s (store %s)", doubt, self.path)
                    raise doubt
                self.write_fault = None
                return done
        raise StorageFull(f"the LMDB map could not grow enough (now {self.map_size} bytes)")

    return wrapper


class Storage:
    """An LMDB environment holding one log. Safe for one writer thread and many readers."""

    kind = "lmdb"
    shared = False  # one writer process: the data directory's lock (tlog.integrity)
    dedup_on_commit = False  # the writer looks its leaf hashes up first (a memory read)
    aux_in_batch = True  # commit_batch writes the batch's aux records in its transaction

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        readonly: bool = False,
        sync: bool = True,
        verify_limit: int = DEFAULT_VERIFY_LIMIT,
        reader_check_interval: float = READER_CHECK_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.on_close: list[Callable[[], object]] = []  # e.g. release the writer's lock
        # Why the last write failed when it failed because the file system went read-only
        # (StorageReadOnly), None once a write succeeds: /readyz fails meanwhile.
        self.write_fault: str | None = None
        # Set when the file system said read-only right after a commit (StorageReadOnlyInDoubt):
        # every write is refused until a restart.
        self.in_doubt: str | None = None
        if not readonly:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif not (self.path / "data.mdb").exists():
            raise StorageError(f"no log store at {self.path}")
        self._gate = threading.Condition()
        self._active_reads = 0
        self._resizing = False
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        self.stale_readers_cleared = 0
        _verify_file(self.path / "data.mdb", verify_limit)
        # A copy on read-only media (or without write permission): no lock table can be
        # written, so LMDB opens it without one, safe while no process holds the store.
        no_lock_table = readonly and read_only_copy(self.path)
        if no_lock_table:
            self.on_close.append(hold_unserved(self.path))
        elif self.path.is_dir():
            follow_lock_file(self.path)  # the lock table every opener shares (tlog.lockfile)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=16,
                max_readers=512,
                readonly=readonly,
                lock=not no_lock_table,
                sync=sync,
                metasync=sync,
                readahead=False,  # random proof reads: don't pull whole regions in
                meminit=True,  # never write leftover process memory (plaintext, keys) to disk
            )
        except lmdb.Error as exc:
            self._release()
            fault = storage_fault(exc)
            raise type(fault or StorageError())(
                f"cannot open store at {self.path}: {fault or exc}"
            ) from exc
        try:
            self._open_dbs(readonly)
        except lmdb.Error as exc:
            self.env.close()
            self._release()
            raise storage_fault(exc) or StorageError(str(exc)) from exc
        except BaseException:
            self.env.close()
            self._release()
            raise
        if not readonly:
            self.check_readers()
            if reader_check_interval > 0:
                self._checker = threading.Thread(
                    target=_check_readers_loop,
                    args=(weakref.ref(self), self._stop, reader_check_interval),
                    name="lmdb-reader-check",
                    daemon=True,
                )
                self._checker.start()

    def _open_dbs(self, readonly: bool) -> None:
        create = not readonly
        self.db_meta = self.env.open_db(b"meta", create=create)
        self.db_entries = self.env.open_db(b"entries", create=create)
        self.db_dedup = self.env.open_db(b"dedup", create=create)
        self.db_tiles = self.env.open_db(b"tiles", create=create)
        self.db_checkpoints = self.env.open_db(b"checkpts", create=create)
        self.db_cosigs = self.env.open_db(b"cosigs", create=create)
        self.db_tokens = self.env.open_db(b"tokens", create=create)
        self.db_aux = self.env.open_db(b"aux", create=create)
        self.dbs = {
            "meta": self.db_meta,
            "entries": self.db_entries,
            "dedup": self.db_dedup,
            "tiles": self.db_tiles,
            "checkpts": self.db_checkpoints,
            "cosigs": self.db_cosigs,
            "tokens": self.db_tokens,
            "aux": self.db_aux,
        }
        assert set(self.dbs) == set(TABLES)
        if not readonly:
            with self.env.begin(write=True) as txn:
                v = txn.get(b"format", db=self.db_meta)
                if v is None:
                    txn.put(b"format", FORMAT_VERSION, db=self.db_meta)
                elif bytes(v) != FORMAT_VERSION:
                    raise StorageError(f"store format {bytes(v)!r} is not supported")

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def instance(self) -> str:
        return f"lmdb:{self.path.resolve()}"

    def check_structure(self) -> list[str]:
        """py-lmdb's offline verifier over ``data.mdb`` (plain reads, never the map)."""
        return verify_structure(self.path / "data.mdb")

    def is_empty(self) -> bool:
        with self.read() as rv:
            return rv.meta("origin") is None and rv.latest_checkpoint() is None

    @_writes
    def load_raw(self, table: str, items: Iterator[tuple[bytes, bytes]]) -> int:
        """Copy records into this store in one transaction (``tlog migrate``)."""
        n = 0
        with self.env.begin(write=True) as txn:
            for k, v in items:
                if not txn.put(k, v, db=self.dbs[table], overwrite=table == "meta"):
                    raise CommitConflict(f"{table} record {k.hex()[:24]} already exists")
                n += 1
        return n

    @_writes
    def clear_if_meta(self, key: str, value: bytes) -> bool:
        """Empty every table if meta ``key`` holds ``value`` (``tlog migrate --restart``)."""
        with self.env.begin(write=True) as txn:
            held = txn.get(key.encode(), db=self.db_meta)
            if held is None or bytes(held) != value:
                return False
            for db in self.dbs.values():
                txn.drop(db, delete=False)
            txn.put(b"format", FORMAT_VERSION, db=self.db_meta)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._checker is not None and self._checker is not threading.current_thread():
            self._checker.join(5)
        self.env.close()
        self._release()

    def _release(self) -> None:
        for f in self.on_close:
            f()
        self.on_close.clear()

    # -- readers ---------------------------------------------------------------------------

    def check_readers(self) -> int:
        """Clear the reader slots of dead processes (e.g. a ``tlog fsck`` killed with
        SIGKILL): such a slot pins the pages of its snapshot, so the file would only grow."""
        n = int(self.env.reader_check())
        if n:
            self.stale_readers_cleared += n
            log.warning("cleared %d stale LMDB reader slot(s) left by dead processes", n)
        return n

    def read(self) -> LmdbReadView:
        """A read snapshot; use as ``with storage.read() as rv:`` (ends the transaction)."""
        gate = self._gate
        with gate:
            while self._resizing:
                gate.wait()
            self._active_reads += 1
        try:
            txn = self.env.begin(buffers=True)
        except BaseException as exc:
            self._end_read()
            fault = storage_fault(exc)
            if fault is not None and fault is not exc:
                raise fault from exc
            raise
        return LmdbReadView(self, txn)

    def _end_read(self) -> None:
        gate = self._gate
        with gate:
            self._active_reads -= 1
            if self._resizing and not self._active_reads:
                gate.notify_all()

    # -- disk space ------------------------------------------------------------------------

    _FULL_MARGIN = 64 << 20  # less free space (or file-size headroom) than this: "full"

    def _space(self) -> str:
        try:
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
        except OSError:
            return "free space unknown"
        return f"{free} bytes free on the file system"

    def _looks_full(self) -> bool:
        """After a failed write: is the file system (or RLIMIT_FSIZE) out of room?"""
        try:
            st = os.statvfs(self.path)
            if st.f_bavail * st.f_frsize < self._FULL_MARGIN:
                return True
            size = (self.path / "data.mdb").stat().st_size
        except OSError:
            return False
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return soft != resource.RLIM_INFINITY and size + self._FULL_MARGIN > soft

    # -- map size --------------------------------------------------------------------------

    @property
    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def _grow_map(self) -> None:
        """Double the map, once this process's readers are done (LMDB remaps the file)."""
        gate = self._gate
        with gate:
            self._resizing = True
            try:
                if not gate.wait_for(lambda: not self._active_reads, timeout=30):
                    raise StorageError("cannot grow the map: readers did not finish")
                new = self.map_size * 2
                self.env.set_mapsize(new)
            finally:
                self._resizing = False
                gate.notify_all()
        log.warning("LMDB map was full: grew it to %d bytes", new)

    @_writes
    def set_meta(self, key: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), value, db=self.db_meta)

    @_writes
    def delete_meta(self, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode(), db=self.db_meta)

    @_writes
    def commit_batch(self, batch: BatchWrite) -> None:
        """Write a sequenced batch and its checkpoint in one durable transaction.

        A compare-and-swap: inside the write transaction (LMDB serialises writers, across
        processes too) the stored tree size must be ``batch.first_index`` and the latest
        stored checkpoint must be ``batch.base_checkpoint``, and every put must succeed;
        otherwise the transaction is aborted (nothing is written) and
        :class:`CommitConflict` is raised.
        """
        first = batch.first_index
        with self.env.begin(write=True) as txn:
            v = txn.get(b"tree_size", db=self.db_meta)
            stored = 0 if v is None else int(_U64.unpack(v)[0])
            if stored != first:
                raise CommitConflict(
                    f"the store's tree size is {stored}, this writer built on {first}"
                )
            ccur = txn.cursor(db=self.db_checkpoints)
            if not ccur.last() or ccur.key() != u64(first) or ccur.value() != batch.base_checkpoint:
                raise CommitConflict(
                    "the store's latest checkpoint is not the one this writer built on"
                )
            n = len(batch.entries)
            keys = u64_range(first, n)
            cur = txn.cursor(db=self.db_entries)
            if cur.putmulti(zip(keys, batch.entries, strict=True), append=True)[1] != n:
                raise CommitConflict(f"entries {first}..{first + n - 1} could not all be added")
            dcur = txn.cursor(db=self.db_dedup)
            if dcur.putmulti(zip(batch.leaf_hashes, keys, strict=True), overwrite=False)[1] != n:
                raise CommitConflict("a leaf hash of the batch is already in the dedup index")
            for level, index, blob in batch.blobs:
                txn.put(tile_key(level, index), blob, db=self.db_tiles)
            txn.put(b"tree_size", u64(batch.tree_size), db=self.db_meta)
            if not txn.put(
                u64(batch.tree_size), batch.checkpoint, db=self.db_checkpoints, overwrite=False
            ):
                raise CommitConflict(f"a checkpoint for size {batch.tree_size} already exists")
            self._aux_into(txn, batch.aux)

    @_writes
    def put_checkpoint(self, size: int, checkpoint: bytes) -> None:
        """Store the first checkpoint of an empty log (the size-0 one, at init).

        Only into a store with no checkpoint and no tree size yet: otherwise
        :class:`CommitConflict` (another process initialised it first).
        """
        with self.env.begin(write=True) as txn:
            v = txn.get(b"tree_size", db=self.db_meta)
            if (v is not None and bytes(v) != u64(size)) or txn.cursor(
                db=self.db_checkpoints
            ).last():
                raise CommitConflict("the store already has a checkpoint")
            txn.put(u64(size), checkpoint, db=self.db_checkpoints)

    def settle(self) -> None:
        """Nothing to wait for: a commit is durable before any reader can see it."""

    @_writes
    def put_cosignatures(self, size: int, lines: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(u64(size), lines, db=self.db_cosigs)

    @_writes
    def put_token(self, digest: bytes, record: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(digest, record, db=self.db_tokens)

    @_writes
    def put_aux(
        self, items: Sequence[tuple[bytes, bytes | None]], *, fence: bytes | None = None
    ) -> None:
        """Write (or, with None, delete) auxiliary records in one durable transaction.
        ``fence`` is not checked: one process writes an LMDB store (``claim_aux_writer``)."""
        with self.env.begin(write=True) as txn:
            self._aux_into(txn, items)

    def write_turn(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to wait for: the lock file keeps every other writer process out."""
        return contextlib.nullcontext()

    def hold_turn(self) -> Callable[[], None]:
        """Nothing to hold (:meth:`write_turn`)."""
        return _nothing

    def hold_stage_turn(self) -> tuple[Callable[[], None], bytes | None]:
        """Nothing to hold and no fence: one writer process."""
        return _nothing, None

    def stage_turn_wanted(self) -> bool:
        """Never: one writer process."""
        return False

    def claim_aux_writer(self) -> bytes | None:
        """None: the lock file keeps every other writer process out of an LMDB store, so
        this process's aux writes need no fence (:meth:`tlog.backend.Backend.claim_aux_writer`)."""
        return None

    def _aux_into(self, txn: lmdb.Transaction, items: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Write ``items`` in order: each run of puts in one ``putmulti`` (LMDB's loop in C,
        not one Python call a record; a SCIM event is ~12 records), each deletion in its
        place, so a key both written and deleted ends as the last item says."""
        db = self.db_aux
        cur = txn.cursor(db=db)
        start = 0
        for i, (k, v) in enumerate(items):
            if v is None:
                if i > start:
                    cur.putmulti(cast(_Puts, items[start:i]))
                txn.delete(k, db=db)
                start = i + 1
        if start < len(items):
            cur.putmulti(cast(_Puts, items[start:] if start else items))
