"""``tlog backup``: a consistent, compacted, private and verified copy of a live store.

LMDB copies from one read transaction (``mdb_env_copy2`` with ``MDB_CP_COMPACT``), so the
copy is one consistent snapshot while the server keeps writing, and compaction leaves out
freed pages (which may still hold wrapped keys of erased subjects). The copy is written with
mode 0600 in a 0700 directory (``mdb_copy`` would leave it as the umask says), then opened
read-only and checked with :func:`tlog.fsck.fsck` before it is reported as good.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from client.runtime.durable import fsync_dir, fsync_path
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


INCOMPLETE = ".incomplete"  # where the copy is made and verified, inside the destination


def backup(db: Path, dest: Path, *, verify: bool = True) -> BackupReport:
    """Copy the LMDB store in ``db`` into the directory ``dest`` (new, or empty).

    The copy is made in ``<dest>/.incomplete/`` and becomes ``<dest>/data.mdb`` only once it
    verified: a copy that does not verify (a damaged source) is deleted, and one left by a
    run that died (killed, power lost) is never taken for a backup; the next run into the
    same destination replaces it.
    """
    dest = dest.resolve()
    work = dest / INCOMPLETE
    if dest.exists() and (not dest.is_dir() or any(p != work for p in dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        work.unlink()  # not ours to follow: a link goes, its target stays
    elif work.exists():
        shutil.rmtree(work)  # an interrupted earlier run's unverified copy
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    work.mkdir(mode=0o700)
    try:
        rep, size = _copy(db, work, verify)
        # LMDB's copy does not fsync what it wrote: without this, a power loss could keep the
        # rename below and lose the pages, leaving a data.mdb that looks like a backup.
        fsync_path(work / "data.mdb")
        out = dest / "data.mdb"
        os.replace(work / "data.mdb", out)
        fsync_dir(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BackupReport(out, out.stat().st_size, size, rep)


def _copy(db: Path, work: Path, verify: bool) -> tuple[FsckReport | None, int]:
    src = Storage(db, readonly=True)
    old = os.umask(0o077)
    try:
        src.env.copy(str(work), compact=True)
    except Exception as exc:
        raise BackupError(f"copy to {work.parent} failed: {exc}") from exc
    finally:
        os.umask(old)
        src.close()
    os.chmod(work / "data.mdb", 0o600)
    copy = Storage(work, readonly=True)
    try:
        with copy.read() as rv:
            size = rv.tree_size()
        rep = fsck(copy) if verify else None
    finally:
        copy.close()
    if rep is not None and not rep.ok:
        raise BackupError(
            f"the copy in {work.parent} does not verify, so it was not kept: "
            f"{'; '.join(rep.errors[:3])}"
        )
    return rep, size
