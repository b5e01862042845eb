"""review15: the outbox's database file removed while in use, and an add (or a mark)
arriving before the idle writer's check: the add is refused (red team 7), and what the
open file holds must still be written back. Before, the add's path folded the WAL and
marked the files "folded", which the idle check and the clean stop took as "already
handled": the rescue never ran, and a stop or a crash lost every queued event."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxError, OutboxRecord

from .outbox_files import pending as _pending


def test_an_add_after_the_removal_then_a_clean_stop_writes_the_file_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([OutboxRecord("eid-before", "r1", "{}")])
    for side in ("", "-wal", "-shm"):
        os.unlink(str(path) + side)
    with pytest.raises(OutboxError):
        ob.put([OutboxRecord("eid-after", "r2", "{}")])  # refused: would be lost
    ob.close()
    assert path.exists(), "the removed file was not written back"
    assert path.stat().st_mode & 0o777 == 0o600
    assert _pending(path) == ["eid-before"]
    assert not list(tmp_path.glob(".outbox.sqlite.rescue-*"))


def test_an_add_after_a_replacement_saves_the_events_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    other = tmp_path / "other.sqlite"
    with Outbox(other) as o2:
        o2.put([OutboxRecord("eid-other", "r9", "{}")])
    ob = Outbox(path)
    ob.put([OutboxRecord("eid-before", "r1", "{}")])
    for side in ("-wal", "-shm"):
        os.unlink(str(path) + side)
    os.rename(other, path)
    with pytest.raises(OutboxError):
        ob.put([OutboxRecord("eid-after", "r2", "{}")])
    ob.close()
    assert _pending(path) == ["eid-other"]
    saved = sorted(tmp_path.glob("outbox.sqlite.rescued-*"))
    assert len(saved) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert _pending(saved[0]) == ["eid-before"]
