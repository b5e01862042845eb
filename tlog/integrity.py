"""Guards of the log's two promises against operator faults: one sequencer, no rollback.

* :class:`DataDirLock`: the process that writes the log (``tlog serve``, ``tlog recover``)
  holds an exclusive ``flock`` on ``<store>/tlog.lock`` for its lifetime; a second one is
  refused with the PID and host of the holder. (The compare-and-swap in
  :meth:`tlog.storage.Storage.commit_batch` is the second, independent guard.)
* :class:`CheckpointFile`: the last checkpoint the log signed and published, remembered
  *outside* the LMDB file (written to a temporary file, fsynced, renamed over the old one,
  directory fsynced), so a store that was emptied, truncated or restored from an older
  backup is recognised as behind at start-up.
* :func:`preflight`: the checks on the store file that must run before LMDB opens it
  (a 0-byte ``data.mdb`` would otherwise silently become a new, empty log).
* :class:`RollbackDetected`: the refusal, with what happened and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from client.checkpoint import Checkpoint
from client.merkle import VerificationError
from client.note import FormatError, Verifier, open_note
from tlog.storage import StorageError

__all__ = [
    "CHECKPOINT_FILE",
    "LOCK_FILE",
    "CheckpointFile",
    "DataDirLock",
    "LockHeld",
    "Remembered",
    "RollbackDetected",
    "preflight",
]

LOCK_FILE = "tlog.lock"
CHECKPOINT_FILE = "last-checkpoint"  # in the data directory, beside (not inside) the store


class LockHeld(StorageError):
    """Another process holds the data directory's lock."""


class RollbackDetected(StorageError):
    """The store is behind (or forked from) a checkpoint this log already signed."""


RECOVER_HINT = (
    "Do not start the log on this store: it would sign a second, different tree at sizes "
    "it already published. Restore the newest copy of the store, or bring this one forward "
    "with 'tlog recover --from <tiles URL, tiles directory or store directory>' "
    "(see docs/operations.md, 'Rollback refused')."
)


# -- the lock --------------------------------------------------------------------------------


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>/tlog.lock``.

    ``flock`` locks belong to the open file: the kernel releases them when the process
    exits, however it exits (SIGKILL included), so a crash never leaves a stale lock. The
    file keeps the holder's PID, host and start time, for the refusal message only.
    """

    def __init__(self, directory: str | os.PathLike[str], purpose: str = "tlog serve") -> None:
        self.path = Path(directory) / LOCK_FILE
        self.purpose = purpose
        self._f: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        f = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            holder = f.read(500).strip() or "another process"
            f.close()
            raise LockHeld(
                f"the store {self.path.parent} is in use by {holder} (lock {self.path}). "
                "Only one process may write a log: a second sequencer would fork it. Stop "
                "the other process first (in a rolling deploy, stop the old instance before "
                "starting the new one)."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            f"PID {os.getpid()} on host {socket.gethostname()} ({self.purpose}, since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n"
        )
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.truncate(0)
            self._f.close()  # closing the file releases the flock
            self._f = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- the remembered checkpoint ---------------------------------------------------------------


@dataclass(frozen=True)
class Remembered:
    size: int
    root_hash: bytes
    note: str


class CheckpointFile:
    """The last published checkpoint note, in a file of its own (atomic replace, fsynced).

    Written after each batch is durable in LMDB and before any of it is acknowledged, so it
    is never ahead of the store and never behind what anyone outside has seen.
    """

    def __init__(self, path: str | os.PathLike[str], verifier: Verifier, origin: str) -> None:
        self.path = Path(path)
        self._verifier = verifier
        self._origin = origin
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._dir_fd: int | None = None

    def read(self) -> Remembered | None:
        """The remembered checkpoint, verified with the log key; None if there is no file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            cp = Checkpoint.parse(open_note(data.decode("utf-8"), [self._verifier]).text)
        except (UnicodeDecodeError, FormatError, VerificationError) as exc:
            raise StorageError(
                f"the remembered checkpoint {self.path} is not a checkpoint signed by this "
                f"log's key ({exc}). If the log key was replaced on purpose, move the file "
                "aside; otherwise find out who changed it."
            ) from None
        if cp.origin != self._origin:
            raise StorageError(
                f"the remembered checkpoint {self.path} is for origin {cp.origin!r}, "
                f"not {self._origin!r}"
            )
        return Remembered(cp.size, cp.root_hash, data.decode("utf-8"))

    def write(self, note: str) -> None:
        """Replace the file with ``note``, durably (write, fsync, rename, fsync directory)."""
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, note.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        if self._dir_fd is None:
            self._dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(self._dir_fd)

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


# -- checks before LMDB opens the file -------------------------------------------------------

# LMDB's meta page (lmdb.h / mdb.c, 64-bit): a 16-byte page header, then MDB_meta:
# magic u32, version u32, address ptr, mapsize size_t, two 48-byte MDB_db, last_pg, txnid.
_META = struct.Struct("<II8x8x48x48xQQ")
_MDB_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16


def _last_page(head: bytes, page_size: int) -> int | None:
    """The last page number the newest meta page refers to (None if no meta page is valid)."""
    best: tuple[int, int] | None = None
    for pg in (0, 1):
        off = pg * page_size + _PAGE_HEADER
        if len(head) < off + _META.size:
            continue
        magic, _version, last_pg, txnid = _META.unpack_from(head, off)
        if magic == _MDB_MAGIC and (best is None or txnid > best[0]):
            best = (txnid, last_pg)
    return None if best is None else best[1]


def preflight(store: Path) -> None:
    """Refuse a store file that LMDB would silently re-initialise or crash on.

    * a 0-byte ``data.mdb`` (a failed copy or restore) would become a new, empty log;
    * a ``data.mdb`` shorter than its own meta page says (a truncated copy) would make the
      first read past its end kill the process with SIGBUS.
    """
    data = store / "data.mdb"
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        return  # a new store
    if size == 0:
        raise RollbackDetected(
            f"{data} is empty (0 bytes): a failed copy or restore, not a log. "
            + RECOVER_HINT
        )
    page_size = os.sysconf("SC_PAGE_SIZE")
    with open(data, "rb") as f:
        head = f.read(2 * page_size)
    last = _last_page(head, page_size)
    if last is None:
        raise RollbackDetected(f"{data} has no valid LMDB meta page: it is not a log store.")
    if size < (last + 1) * page_size:
        raise RollbackDetected(
            f"{data} is truncated: {size} bytes, but its last transaction uses "
            f"{(last + 1) * page_size} bytes. " + RECOVER_HINT
        )
