"""Where LMDB's lock file lives: on a memory file system by default, found by every opener.

LMDB's read transactions write their reader slot in ``lock.mdb``, and py-lmdb holds Python's
GIL while doing so: with ``lock.mdb`` on a frozen data disk (``fsfreeze``, a hung volume)
the whole process stops, ``/healthz`` included. So ``tlog serve`` puts the lock file on a
memory file system and makes ``<store>/db/lock.mdb`` a symlink to it
(:func:`place_lock_file`, called while holding the store's exclusive lock):

* the directory: ``--lock-dir``, else the first of ``/dev/shm`` and ``$XDG_RUNTIME_DIR``
  that is a memory file system, in a per-user subdirectory ``tlog-<uid>`` (mode 0700, owned
  by this user, else not used); with none, the lock file stays in the store directory and
  a warning says what that means (:func:`default_lock_dir`);
* the file name comes from the store directory's identity (``st_dev``/``st_ino``), not its
  path, so every spelling of one store (a symlink, a bind mount, a relative path) names
  the same file and two stores never share one; created 0600.

Every process that opens the store (``serve``, ``fsck``, ``backup``, ``token``, ...) follows
the symlink, so they share one lock table, as LMDB requires. :func:`follow_lock_file`,
called by :class:`tlog.storage.Storage` before it opens the environment, keeps that true:
after a reboot it recreates the link's directory; a link that names another store's lock
file (the data directory was copied with its symlink) is re-pointed, unless a server holds
the store; and where the link's target is missing while a server holds the store (this
process sees another ``/dev/shm``: another container or host) it refuses to open rather
than start a second lock table beside the server's.

A copy of a data directory on read-only media, or without write permission (a snapshot an
auditor checks with ``tlog fsck``), has no lock table this process can write: neither the
link can be re-pointed nor ``lock.mdb`` created. :func:`read_only_copy` tells such a store,
and :func:`hold_unserved` makes opening it without LMDB's lock table safe: it refuses while
a server holds the store (its ``tlog.lock``, found read-only: a read-only view of a live
store, e.g. a read-only bind mount in another container) and keeps a server from starting on
it while the copy is open.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from tlog.backend import StorageError
from tlog.integrity import LOCK_FILE, DataDirLock, LockHeld

__all__ = [
    "LockFileInvisible",
    "default_lock_dir",
    "follow_lock_file",
    "hold_unserved",
    "lock_name",
    "place_lock_file",
    "read_only_copy",
]

log = logging.getLogger("tlog.lockfile")

MEMORY_FS = {"tmpfs", "ramfs"}
_NAME = re.compile(r"tlog-[0-9a-f]+-[0-9a-f]+-lock\.mdb")


class LockFileInvisible(StorageError):
    """A server holds the store, but its LMDB lock file is not visible to this process."""


def lock_name(db: Path) -> str:
    """The lock file's name for store directory ``db``: from its device and inode."""
    st = os.stat(db)
    return f"tlog-{st.st_dev:x}-{st.st_ino:x}-lock.mdb"


def _fs_type(path: Path) -> str | None:
    """The file system type mounted at ``path`` or above it (/proc/self/mounts), if known."""
    try:
        mounts = Path("/proc/self/mounts").read_text("utf-8").splitlines()
    except OSError:
        return None
    real = str(path.resolve())
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def _private_dir(parent: Path) -> Path | None:
    """``parent/tlog-<uid>``, created 0700, or None if it is not safely ours."""
    d = parent / f"tlog-{os.getuid()}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
        if not os.path.isdir(d) or os.path.islink(d) or st.st_uid != os.getuid():
            log.warning("not using %s for LMDB's lock file: not a directory of this user", d)
            return None
        if st.st_mode & 0o077:
            os.chmod(d, 0o700)
    except OSError as exc:
        log.warning("not using %s for LMDB's lock file: %s", d, exc)
        return None
    return d


def default_lock_dir() -> Path | None:
    """The first memory file system of ``/dev/shm`` and ``$XDG_RUNTIME_DIR`` that this user
    can write, as a private ``tlog-<uid>`` subdirectory; None if there is none."""
    candidates = [Path("/dev/shm")]  # noqa: S108 - a private 0700 subdirectory, checked
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        candidates.append(Path(xdg))
    for c in candidates:
        if not c.is_dir() or not os.access(c, os.W_OK | os.X_OK):
            continue
        kind = _fs_type(c)
        if kind is not None and kind not in MEMORY_FS:
            continue
        d = _private_dir(c)
        if d is not None:
            return d
    return None


def _create_0600(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def place_lock_file(db: Path, lock_dir: Path | None) -> Path:
    """Point ``<db>/lock.mdb`` at this store's lock file in ``lock_dir`` (None: in the store
    directory, a plain file). Call only while holding the store's exclusive lock, before the
    store is opened. Returns where the lock file is."""
    link = db / "lock.mdb"
    if lock_dir is None:
        if link.is_symlink():
            link.unlink()  # LMDB creates the lock table anew beside the data
        return link
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = lock_dir.resolve() / lock_name(db)
    if not target.exists():
        _create_0600(target)  # LMDB initialises an empty lock file
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return target
        link.unlink()
    elif link.exists():
        link.unlink()  # the lock table on disk: only live readers (fsck) still use it
    os.symlink(target, link)
    log.info("LMDB lock file %s -> %s", link, target)
    return target


def follow_lock_file(db: Path) -> None:
    """Before opening the store in ``db``: make sure its ``lock.mdb`` link leads to this
    store's lock file, shared with any server of it (module docstring)."""
    link = db / "lock.mdb"
    if not link.is_symlink():
        return  # a plain lock file (or none yet): LMDB's own business
    target = Path(os.readlink(link))
    wrong = _NAME.fullmatch(target.name) is not None and target.name != lock_name(db)
    if not wrong and target.exists():
        return
    try:
        held = DataDirLock(db, "opening the store").acquire()
    except LockHeld:
        if wrong:
            return  # the server placed its own link; it knows best
        raise LockFileInvisible(
            f"the store {db} is held by a running server, but its LMDB lock file {target} "
            "is not visible to this process (another /dev/shm: another container or host?). "
            "Run this command where the server runs, or share the lock directory with it "
            "(--lock-dir); opening the store here would corrupt its lock table."
        ) from None
    try:
        # No server: recreate the link's directory (after a reboot), or re-point a link
        # copied from another store at this store's own lock file.
        lock_dir = target.parent
        if wrong:
            link.unlink()
            lock_dir = lock_dir if lock_dir.is_dir() else db
            if lock_dir == db:
                return
            place_lock_file(db, lock_dir)
            return
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_0600(target)
    finally:
        held.release()


def _writable(path: Path) -> bool:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        return False
    return os.access(path, os.W_OK)


def read_only_copy(db: Path) -> bool:
    """Is the store directory ``db`` one this process cannot write (read-only media, no
    write permission) and without a lock table it could share (a ``lock.mdb`` link to this
    store's writable lock file)? Then LMDB can open it only without its lock table, behind
    :func:`hold_unserved`."""
    if _writable(db):
        return False
    link = db / "lock.mdb"
    if link.is_symlink():
        target = Path(os.readlink(link))
        usable = target.name == lock_name(db) and target.exists() and os.access(target, os.W_OK)
        return not usable
    return not (link.exists() and os.access(link, os.W_OK))


def hold_unserved(db: Path) -> Callable[[], None]:
    """For :func:`read_only_copy` stores: refuse (:class:`LockHeld`) while a process holds
    the store's lock (``tlog.lock``, opened read-only), else hold it shared until the
    returned release is called, so no server starts on the store while it is read
    without LMDB's lock table. No ``tlog.lock`` at all: no server ever ran there (nothing
    to hold, and a server could not create one on such a directory)."""
    path = db / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _nothing
    except OSError as exc:
        raise StorageError(
            f"cannot tell whether a server holds the store {db} ({exc}), and a read-only copy "
            "is opened without LMDB's lock table: refused (make its tlog.lock readable)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise LockHeld(
            f"the store {db} is read-only here but held by a running process (lock {path}): "
            "it cannot be read without the server's LMDB lock table, which this process "
            "cannot reach. Run the command where the server runs, or on a copy"
        ) from None
    return lambda: os.close(fd)


def _nothing() -> None:
    """Nothing to release (hold_unserved of a store without a lock file)."""
