"""Guards of the log's two promises against operator faults: one sequencer, no rollback.

* :class:`DataDirLock`: the process that writes the log (``tlog serve``, ``tlog recover``)
  holds an exclusive ``flock`` on ``<store>/tlog.lock`` for its lifetime; a second one is
  refused with the PID and host of the holder. (The compare-and-swap in
  :meth:`tlog.backend.Backend.commit_batch` is the second, independent guard.)
* :class:`CheckpointFile`: the last checkpoint the log signed and published, remembered
  *outside* the LMDB file (two checksummed slots written alternately and fdatasynced, so a
  crash never leaves it torn), so a store that was emptied, truncated or restored from an
  older backup is recognised as behind at start-up.
* :func:`preflight`: the checks on the store file that must run before LMDB opens it
  (a 0-byte ``data.mdb`` would otherwise silently become a new, empty log).
* :class:`RollbackDetected`: the refusal, with what happened and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import FormatError, Verifier, open_note
from client.runtime.durable import atomic_write, gone_read_only
from tlog.backend import StorageError

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


_SLOT = 4096
_MAGIC = b"TLOGCKP1"
_SLOT_HEAD = struct.Struct(">8sQI")  # magic, sequence number, note length
_MAX_NOTE = _SLOT - _SLOT_HEAD.size - 32


class CheckpointFile:
    """The last published checkpoint note, in a file of its own, durable and never torn.

    Written after each batch is durable in LMDB and before any of it is acknowledged, so it
    is never ahead of the store and never behind what anyone outside has seen.

    Layout: two 4 KiB slots, like LMDB's two meta pages. Each holds ``TLOGCKP1``, a sequence
    number, the note's length, the note (plain text) and a SHA-256 over all of that. A write
    goes to the slot with the older sequence number (``pwrite`` + ``fdatasync`` of a file
    whose size never changes: one data flush, no metadata), so a crash mid-write can only
    damage that slot and the other still holds the previous checkpoint. Reading takes the
    valid slot with the highest sequence number. (A temporary file renamed over the old one
    gives the same guarantee at about eight times the cost per batch: a create, a rename and
    a directory fsync.) A plain-text note in the file (written by hand, or by an earlier
    version) is read too.
    """

    def __init__(self, path: str | os.PathLike[str], verifier: Verifier, origin: str) -> None:
        self.path = Path(path)
        self._verifier = verifier
        self._origin = origin
        self._fd: int | None = None

    def _slots(self, data: bytes) -> tuple[int, bytes] | None:
        """The (sequence, note) of the newest valid slot."""
        best: tuple[int, bytes] | None = None
        for off in (0, _SLOT):
            slot = data[off : off + _SLOT]
            if len(slot) != _SLOT:
                continue
            magic, seq, n = _SLOT_HEAD.unpack_from(slot)
            if magic != _MAGIC or n > _MAX_NOTE:
                continue
            body = slot[: _SLOT_HEAD.size + n]
            if hashlib.sha256(body).digest() != slot[_SLOT - 32 :]:
                continue  # a torn or damaged slot
            if best is None or seq > best[0]:
                best = (seq, body[_SLOT_HEAD.size :])
        return best

    def read(self) -> Remembered | None:
        """The remembered checkpoint, verified with the log key; None if there is no file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) == 2 * _SLOT:  # the slot format (a note is never 8 KiB: see _slot)
            found = self._slots(data)
            if found is None:
                raise StorageError(
                    f"the remembered checkpoint {self.path} is damaged (no valid slot). Find "
                    "out what wrote it; if the store is known good, move the file aside."
                )
            data = found[1]
        try:
            text = data.decode("utf-8")
            cp = Checkpoint.parse(open_note(text, [self._verifier]).text)
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
        return Remembered(cp.size, cp.root_hash, text)

    def _open(self, note: bytes) -> int:
        """The file, open; created (or converted from a plain-text note) holding ``note``.

        Creation goes through a temporary file, fsync, rename and a directory fsync, once:
        a crash never leaves an empty or half-made file at ``path``.
        """
        if self._fd is None:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = -1
            if size != 2 * _SLOT:
                atomic_write(self.path, self._slot(0, note) + bytes(_SLOT))
            self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    @staticmethod
    def _slot(seq: int, note: bytes) -> bytes:
        if len(note) > _MAX_NOTE:
            raise ValueError(f"checkpoint note of {len(note)} bytes does not fit a slot")
        body = _SLOT_HEAD.pack(_MAGIC, seq, len(note)) + note
        return body + bytes(_SLOT - 32 - len(body)) + hashlib.sha256(body).digest()

    def write(self, note: str) -> None:
        """Remember ``note``, durably, in the slot holding the older checkpoint."""
        data = note.encode("utf-8")
        fd = self._open(data)
        # The newest sequence number on disk, not a counter of ours: another process may
        # have written (the lock bypassed); a lost race still leaves a checkpoint <= store.
        found = self._slots(os.pread(fd, 2 * _SLOT, 0))
        seq = 0 if found is None else found[0] + 1
        os.pwrite(fd, self._slot(seq, data), (seq % 2) * _SLOT)
        os.fdatasync(fd)
        # A slot is always a write over blocks the file has: a file system gone read-only
        # after an error (older kernels) takes it into the page cache and its fdatasync
        # answers 0. Not remembered, then (publish refuses the batch).
        gone = gone_read_only(fd)
        if gone is not None:
            raise gone

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
            f"{data} is empty (0 bytes): a failed copy or restore, not a log. " + RECOVER_HINT
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
