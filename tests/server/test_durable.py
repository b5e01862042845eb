"""client/runtime/durable.py: the one way a file is made to survive a power loss.

Every ``fsync`` is recorded with the file or directory its descriptor names (read from
/proc), so the tests see what was flushed and in what order against the renames: a file
fsynced before it gets its name, and the directory fsynced after.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.runtime import durable
from client.runtime.durable import write_error_in


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What was fsynced and renamed, in order, with the real calls made."""
    log: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        log.append(("replace", str(dst)))
        real_replace(src, dst)

    def rename(src: str, dst: str) -> None:
        log.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return log


def test_fsync_dir_flushes_the_directory(tmp_path: Path, said: list[tuple[str, str]]) -> None:
    durable.fsync_dir(tmp_path)
    assert said == [("fsync", str(tmp_path))]


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "f")


def test_fsync_path_flushes_the_file(tmp_path: Path, said: list[tuple[str, str]]) -> None:
    (tmp_path / "f").write_bytes(b"x")
    durable.fsync_path(tmp_path / "f")
    assert said == [("fsync", str(tmp_path / "f"))]


def test_atomic_write_flushes_the_file_then_renames_then_flushes_the_directory(
    tmp_path: Path, said: list[tuple[str, str]]
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    durable.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [what for what, _ in said] == ["fsync", "replace", "fsync"], said
    tmp = said[0][1]  # the temporary file, fsynced while it had its own name
    assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".state.json.")
    assert said[1:] == [("replace", str(path)), ("fsync", str(tmp_path))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        durable.atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_rename_durably_flushes_the_target_directory(
    tmp_path: Path, said: list[tuple[str, str]]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.new").write_bytes(b"x")
    durable.rename_durably(tmp_path / "a" / "f.new", tmp_path / "a" / "f")
    assert said == [("rename", str(tmp_path / "a" / "f")), ("fsync", str(tmp_path / "a"))]


def test_create_new_flushes_the_file_and_its_directory(
    tmp_path: Path, said: list[tuple[str, str]]
) -> None:
    path = tmp_path / "k.key"
    durable.create_new(path, b"secret\n")
    assert path.read_bytes() == b"secret\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert said == [("fsync", str(path)), ("fsync", str(tmp_path))]


def test_create_new_never_overwrites_and_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        durable.create_new(path, b"new")
    assert path.read_bytes() == b"old"


def test_create_new_that_fails_to_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        durable.create_new(tmp_path / "k.key", b"secret\n")
    assert list(tmp_path.iterdir()) == []


def test_the_write_probe_leaves_nothing_and_says_why_it_cannot_write(tmp_path: Path) -> None:
    """``write_error_in``: a new file of its own (random name, ``O_EXCL | O_NOFOLLOW``),
    removed after; files already there untouched; the reason when no file can be made."""
    (tmp_path / "kept").write_bytes(b"data")
    for _ in range(3):
        assert write_error_in(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert (tmp_path / "kept").read_bytes() == b"data"
    said = write_error_in(tmp_path / "kept")  # not a directory
    assert said is not None and "NotADirectoryError" in said, said
    said = write_error_in(tmp_path / "missing")
    assert said is not None and "FileNotFoundError" in said, said
