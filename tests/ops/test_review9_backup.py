"""Review 9: ``tlog backup``'s copy is on disk before it gets the backup's name.

The copy is made aside and renamed to ``<dest>/data.mdb`` once it verifies, and the
directory is fsynced after the rename; but LMDB's copy does not fsync the file it writes.
After a power loss the rename could then be on disk and the copy's pages not: a
``data.mdb`` that looks like a verified backup and is empty or torn. The copy is fsynced
before the rename.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.server.conftest import make_signer
from tlog import backup as backup_mod
from tlog.log import Log
from tlog.storage import Storage


def test_the_copy_is_fsynced_before_it_is_named_data_mdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, dest = tmp_path / "db", tmp_path / "backup"
    storage = Storage(data)
    Log(storage, make_signer()).integrate([f"entry {i}".encode() for i in range(50)])
    storage.close()
    said: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        said.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        said.append(("replace", str(src)))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_mod.os, "fsync", fsync)
    monkeypatch.setattr(backup_mod.os, "replace", replace)
    backup_mod.backup(data, dest)
    copy = str(dest.resolve() / backup_mod.INCOMPLETE / "data.mdb")
    assert ("replace", copy) in said
    assert ("fsync", copy) in said, said
    assert said.index(("fsync", copy)) < said.index(("replace", copy))


@pytest.mark.parametrize("kind", ["file", "symlink to a directory", "dangling symlink"])
def test_a_leftover_that_is_not_a_directory_is_replaced(tmp_path: Path, kind: str) -> None:
    """Whatever stands at ``<dest>/.incomplete`` (a file, a link) is removed, not followed:
    the backup is made, and a link's target is left as it was (review9 found an OSError)."""
    data, dest = tmp_path / "db", tmp_path / "backup"
    storage = Storage(data)
    Log(storage, make_signer()).integrate([b"one", b"two"])
    storage.close()
    dest.mkdir()
    work = dest / backup_mod.INCOMPLETE
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not the backup's")
    if kind == "file":
        work.write_text("junk")
    elif kind == "symlink to a directory":
        work.symlink_to(elsewhere)
    else:
        work.symlink_to(tmp_path / "nowhere")
    report = backup_mod.backup(data, dest)
    assert report.path == dest.resolve() / "data.mdb" and report.path.exists()
    assert not work.exists() and not work.is_symlink()
    assert (elsewhere / "keep").read_text() == "not the backup's"
