"""fix40: ``statvfs`` failing itself (an I/O error, the store's directory removed) in the
check after a commit (:func:`client.runtime.durable.gone_read_only`) surfaced as a raw
``OSError`` from the write (not a StorageError), and left the store taking writes. It says
as little about the commit as a read-only answer: the commit is in doubt
(:class:`StorageReadOnlyInDoubt`, the log halted until a restart). Failed before the fix (a
raw OSError)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tlog.backend import StorageReadOnlyInDoubt
from tlog.log import Log, LogHalted
from tlog.storage import Storage

from .conftest import make_signer


def test_a_failing_statvfs_after_a_commit_is_in_doubt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    storage = Storage(db)
    log = Log(storage, make_signer())
    try:
        log.integrate([b"kept-0"])
        kept = log.latest
        real = os.statvfs

        def statvfs(path: Any) -> Any:
            if str(path) == str(db):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(path)

        monkeypatch.setattr(os, "statvfs", statvfs)
        with pytest.raises(StorageReadOnlyInDoubt, match="Input/output error"):
            log.integrate([b"in-doubt"])
        monkeypatch.setattr(os, "statvfs", real)
        assert log.latest == kept
        with pytest.raises(LogHalted):
            log.integrate([b"next"])
        with pytest.raises(StorageReadOnlyInDoubt):
            storage.set_meta("x", b"y")
    finally:
        storage.close()
