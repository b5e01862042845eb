"""Files that survive a crash or a power loss: the one way every program makes them so.

A file's own ``fsync`` makes its bytes durable, not its name: a file created, renamed or
linked into a directory can vanish at a power loss (or come back under its old name) until
the directory itself is fsynced. :func:`atomic_write` is the whole sequence for replacing a
small file (a temporary file beside it, fsync, rename, fsync of the directory), so a crash
leaves the old file or the new one, whole; :func:`fsync_dir` is the last step alone, for
code that names a file some other way (``os.link``, ``os.rename``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = [
    "atomic_write",
    "can_write_in",
    "create_new",
    "fsync_dir",
    "fsync_path",
    "gone_read_only",
    "rename_durably",
    "write_error_in",
]

StrPath = str | os.PathLike[str]


def fsync_path(path: StrPath) -> None:
    """Flush what was written to the file (or directory) at ``path`` to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: StrPath) -> None:
    """Make the names in ``directory`` durable: a file created, renamed, linked or removed
    there stays so after a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_durably(src: StrPath, dst: StrPath) -> None:
    """``os.rename(src, dst)``, then the directory of ``dst`` fsynced (the rename is on the
    disk when this returns)."""
    os.rename(src, dst)
    fsync_dir(Path(dst).parent)


def atomic_write(path: StrPath, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``, owner-only by default) so that a
    crash leaves the old file or the new one, whole, and the new one is on the disk when
    this returns. The temporary file (``.<name>.<random>.tmp`` beside it) never stays."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def create_new(path: StrPath, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data`` (file mode ``mode`` from the first byte, owner-only
    by default), never over an existing file (:class:`FileExistsError`), and on the disk,
    name included, when this returns. For keys: one that is lost cannot be replaced without
    telling everyone who trusts it. A failed write removes the file again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # in case the umask or the filesystem widened it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    fsync_dir(Path(path).parent)


def write_error_in(directory: StrPath) -> str | None:
    """Why a new file cannot be made, written and synced in ``directory`` now (None: it
    can; the file is removed after). What tells a file system that went read-only after an
    error (ext4 ``errors=remount-ro``) from one that works again: it still takes writes over
    blocks a file already has into the page cache, and its ``fsync`` answers 0, so a write
    that needed no new block seems to succeed; a new file is refused (EROFS). On a disk that
    holds writes (a frozen file system, a dead device) the call waits with it. The file is
    new and this call's own (a random name, made with ``O_EXCL | O_NOFOLLOW``: a file or
    link planted under a name is never written through, and probes of other threads,
    processes or containers sharing the directory never meet); a process killed in the
    middle leaves an empty ``.tlog-write-probe-*`` file, which may be removed."""
    probe = Path(directory) / f".tlog-write-probe-{os.getpid()}-{os.urandom(6).hex()}"
    made = False
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        made = True
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        if made:
            with contextlib.suppress(OSError):
                probe.unlink()
        return f"{exc.strerror or exc} ({type(exc).__name__})"
    return None


def can_write_in(directory: StrPath) -> bool:
    """Whether a new file can be made, written and synced in ``directory`` now
    (:func:`write_error_in`)."""
    return write_error_in(directory) is None


def gone_read_only(path: StrPath | int) -> OSError | None:
    """An ``EROFS`` error if the file system holding ``path`` (or the open file ``path``)
    says it is read-only now (``statvfs``'s ``ST_RDONLY``), else None. Asked after a
    commit's fsync and before it is acknowledged: on kernels that mark the super block
    read-only after an ext4 error (``errors=remount-ro``; upstream before 6.6, and the CI
    machine's of review 39), ext4 still takes a write over blocks a file already has into
    the page cache and answers its ``fsync`` with 0 (an early return for a read-only super
    block), so such a commit seemed durable and was lost. Kernels from 6.15 refuse the
    write and the fsync themselves (``EROFS``) and leave the flag clear (``/proc/mounts``
    says ``emergency_ro``). One system call."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return OSError(
            errno.EROFS,
            f"{os.strerror(errno.EROFS)}: the file system went read-only under a commit "
            "whose fsync answered success; it may not be on the disk",
        )
    return None
