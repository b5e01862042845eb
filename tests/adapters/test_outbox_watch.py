"""The outbox's files removed or replaced while the adapter runs, with nothing after it
that would notice (no add, no mark), then a crash or a clean stop: what was acknowledged is
still found by the next start. Before, only the next add or mark noticed (red team 7), so
a removal followed by quiet and a crash lost what the open WAL (or the unlinked file)
held."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from client.adapters.outbox import Outbox, OutboxRecord

from .outbox_files import pending as _pending

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import os, sys, time
from client.adapters.outbox import Outbox, OutboxRecord
path, what = sys.argv[1], sys.argv[2]
ob = Outbox(path)
ob.put([OutboxRecord("eid-before", "r1", "{}"), OutboxRecord("eid-two", "r2", "{}")])
if what == "wal":
    os.unlink(path + "-wal")  # an operator's clean-up of "temporary" files
elif what == "file":
    for side in ("", "-wal", "-shm"):
        os.unlink(path + side)
elif what == "replaced":
    for side in ("-wal", "-shm"):
        os.unlink(path + side)
    os.rename(sys.argv[3], path)  # another outbox moved over it
print("ready", flush=True)
time.sleep(60)
"""


def _run_then_kill(path: Path, what: str, *extra: str, wait_for: Path | None = None) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), what, *extra],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("ready")
        deadline = time.monotonic() + 15
        if wait_for is not None:
            while not wait_for.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            time.sleep(3)  # a few of the idle writer's checks
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(15)


def test_a_removed_wal_then_quiet_then_a_crash_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    _run_then_kill(path, "wal")
    assert _pending(path) == ["eid-before", "eid-two"]


def test_a_removed_file_then_quiet_then_a_crash_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    _run_then_kill(path, "file", wait_for=path)
    assert path.exists(), "the file was not written back"
    assert path.stat().st_mode & 0o777 == 0o600
    assert _pending(path) == ["eid-before", "eid-two"]


def test_a_replaced_file_is_left_alone_and_the_events_saved_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    other = tmp_path / "other.sqlite"
    with Outbox(other) as ob:
        ob.put([OutboxRecord("eid-other", "r9", "{}")])
    _run_then_kill(path, "replaced", str(other))
    assert _pending(path) == ["eid-other"]  # the file put there is untouched
    saved = sorted(tmp_path.glob("outbox.sqlite.rescued-*"))
    assert len(saved) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert saved[0].stat().st_mode & 0o777 == 0o600
    assert _pending(saved[0]) == ["eid-before", "eid-two"]
    assert not list(tmp_path.glob(".outbox.sqlite.rescue-*"))  # no temporary file left


def test_a_clean_stop_after_the_file_was_removed_writes_it_back(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([OutboxRecord("eid-before", "r1", "{}")])
    for side in ("", "-wal", "-shm"):
        os.unlink(str(path) + side)
    ob.close()  # at once: before the idle writer's first check
    assert _pending(path) == ["eid-before"]


def test_a_file_in_place_is_never_copied(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    _run_then_kill(path, "none")
    assert sorted(p.name for p in tmp_path.iterdir() if "rescue" in p.name) == []
    assert _pending(path) == ["eid-before", "eid-two"]
