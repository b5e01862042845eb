"""``tlog backup``: a consistent, compacted, private and verified copy of a live store.

LMDB copies from one read transaction (``mdb_env_copy2`` with ``MDB_CP_COMPACT``), so the
copy is one consistent snapshot while the server keeps writing, and compaction leaves out
freed pages (which may still hold wrapped keys of erased subjects). The copy is written with
mode 0600 in a 0700 directory (``mdb_copy`` would leave it as the umask says), then opened
read-only and checked with :func:`tlog.fsck.fsck` before it is reported as good.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tlog.fsck import FsckReport, fsck
from tlog.storage import Storage, StorageError

__all__ = ["BackupError", "BackupReport", "backup"]


class BackupError(StorageError):
    """The copy could not be made, or does not verify."""


@dataclass(frozen=True)
class BackupReport:
    path: Path  # the copied data.mdb
    bytes: int
    tree_size: int
    fsck: FsckReport | None


def backup(db: Path, dest: Path, *, verify: bool = True) -> BackupReport:
    """Copy the LMDB store in ``db`` into the directory ``dest`` (new, or empty)."""
    dest = dest.resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    src = Storage(db, readonly=True)
    old = os.umask(0o077)
    try:
        src.env.copy(str(dest), compact=True)
    except Exception as exc:
        raise BackupError(f"copy to {dest} failed: {exc}") from exc
    finally:
        os.umask(old)
        src.close()
    out = dest / "data.mdb"
    os.chmod(out, 0o600)
    copy = Storage(dest, readonly=True)
    try:
        with copy.read() as rv:
            size = rv.tree_size()
        rep = fsck(copy) if verify else None
    finally:
        copy.close()
    for extra in dest.iterdir():  # the lock file a read-only open may leave
        if extra.name != "data.mdb":
            os.chmod(extra, 0o600)
    if rep is not None and not rep.ok:
        raise BackupError(f"the copy in {dest} does not verify: {'; '.join(rep.errors[:3])}")
    return BackupReport(out, out.stat().st_size, size, rep)
