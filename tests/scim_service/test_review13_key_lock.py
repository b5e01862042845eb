"""review13: ``KeyFileLock.make_exclusive`` (``tlog reseal-actors`` on a PostgreSQL store).

flock(2) converts a shared lock to exclusive by dropping it first, so a refused conversion
left the process holding no lock at all while the object still said it held it shared; and
a granted one left the file without the holder's name, which a refused frontend prints."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from tlog.backend import StorageError
from tlog.scim.keys import KeyFileLock


def _try_exclusive(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_refused_upgrade_keeps_the_shared_lock(tmp_path: Path) -> None:
    key = tmp_path / "scim-master.key"
    key.write_bytes(b"k")
    ours = KeyFileLock(key).acquire(exclusive=False)
    other = KeyFileLock(key).acquire(exclusive=False)  # a frontend serving the store
    try:
        with pytest.raises(StorageError, match="needs the server stopped"):
            ours.make_exclusive("reseal-actors")
        other.release()
        assert not _try_exclusive(ours.path), "the refused upgrade dropped our shared lock"
    finally:
        other.release()
        ours.release()
    assert _try_exclusive(ours.path)


def test_a_granted_upgrade_names_its_holder(tmp_path: Path) -> None:
    key = tmp_path / "scim-master.key"
    key.write_bytes(b"k")
    ours = KeyFileLock(key).acquire(exclusive=False)
    try:
        ours.make_exclusive("reseal-actors")
        assert not _try_exclusive(ours.path)
        text = ours.path.read_text()
        assert f"PID {os.getpid()} " in text and "(reseal-actors, since " in text, text
        with pytest.raises(StorageError, match="reseal-actors"):
            KeyFileLock(key).acquire(exclusive=False)
    finally:
        ours.release()
