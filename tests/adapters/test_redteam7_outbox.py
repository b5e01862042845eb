"""Red team 7: the outbox file under an operator's (or an attacker's) hands while the adapter
runs. The promise: an add is acknowledged only when the event is durable *where the next
start will find it*, or it fails (the middleware then delivers directly or answers 503);
never a silent loss. And nothing the outbox holds (plaintext events) reaches a log line.

* the file removed while open: SQLite keeps writing into the unlinked inode and every add
  was acknowledged, gone at the next start; a reader opened since made a fresh, empty
  database at the path ("no such table: events") instead of saying what happened;
* the file replaced by another one (another proxy's outbox moved over it): adds went to the
  old inode, the relay's new readers read the other file;
* a damaged page: sqlite3's own error carries the damaged row's text (the event JSON), which
  the relay logged with its traceback.

A disk that fills up under the outbox mid-run already held (no acknowledged add lost);
the test of it is here because only the quota stood in for a full disk before.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxError, OutboxRecord, Receipt

from .helpers import FakeLog, put_until_full, relay_for, said_then_killed, tmpfs

SECRET = "jane.doe.secret@example.org"


def rec(i: int, size: int = 10) -> OutboxRecord:
    body = '{"userName":"' + SECRET + '","x":"' + "a" * size + '"}'
    return OutboxRecord(f"eid-{i:05d}", f"req-{i}", body)


def _remove(path: Path) -> None:
    for side in ("", "-wal", "-shm"):
        p = Path(str(path) + side)
        if p.exists():
            p.unlink()


def _held_at_start(path: Path) -> list[str]:
    """The eids a new start of the outbox at ``path`` finds pending."""
    again = Outbox(path)
    try:
        return [p.eid for p in again.pending()]
    finally:
        again.close()


def _acknowledged_or_refused(ob: Outbox, path: Path, record: OutboxRecord) -> bool:
    """Add ``record``; True when it was acknowledged (False when refused)."""
    try:
        ob.put([record], timeout=10)
    except OutboxError as exc:
        assert "removed or replaced" in str(exc), exc
        return False
    return True


def test_adds_after_the_file_was_removed_are_refused_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([rec(1)])
    assert [p.eid for p in ob.pending()] == ["eid-00001"]  # the relay's reader is open
    _remove(path)
    acked = _acknowledged_or_refused(ob, path, rec(2))
    # The probe (the middleware's "may I forward writes again?") says no as well.
    with pytest.raises(OutboxError, match="removed or replaced"):
        ob.probe().result(10)
    # What was acknowledged before the removal stays deliverable by the open reader.
    assert [p.eid for p in ob.pending()] == ["eid-00001"]
    ob.mark_delivered([Receipt("eid-00001", 0, "AAAA", 1, "cp\n")]).result(10)
    ob.close()
    held = _held_at_start(path)
    # acknowledged => found by the next start
    assert not acked or "eid-00002" in held, (acked, held)
    assert not acked


def test_adds_after_the_file_was_replaced_are_refused_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([rec(1)])
    ob.pending()
    other = Outbox(tmp_path / "other.sqlite")
    other.put([rec(9)])
    other.close()
    _remove(path)
    os.replace(tmp_path / "other.sqlite", path)

    async def add_on_a_loop() -> None:  # the middleware's path (one hand-over per loop turn)
        await ob.add_async([rec(3)])

    with pytest.raises(OutboxError, match="removed or replaced"):
        asyncio.run(add_on_a_loop())
    acked = _acknowledged_or_refused(ob, path, rec(2))
    ob.close()
    held = _held_at_start(path)
    assert not acked or "eid-00002" in held, (acked, held)
    assert not acked
    assert held == ["eid-00009"]  # the other outbox is left as it was


def test_a_reader_opened_after_the_removal_does_not_make_an_empty_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([rec(1)])
    _remove(path)
    try:
        with pytest.raises(OutboxError, match="removed or replaced"):
            ob.backlog()  # this thread's first read: a new connection
        assert not path.exists()  # no empty database (with the umask's mode) left there
    finally:
        ob.close()


def test_a_damaged_outbox_never_puts_event_text_in_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([rec(i, 3000) for i in range(40)])
    ob.close()
    data = bytearray(path.read_bytes())
    for i in range(4096 + 100, len(data), 997):  # damage the rows' text, not the header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    caplog.set_level(logging.DEBUG)
    ob = Outbox(path)
    log = FakeLog()
    relay = relay_for(ob, log)
    try:
        with pytest.raises(OutboxError) as got:
            ob.pending()
        assert SECRET not in str(got.value) and "aaaa" not in str(got.value)
        relay.start()
        relay.flush(1.0)
    finally:
        relay.stop()
        ob.close()
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "outbox" in text  # the relay said something about it ...
    assert SECRET not in text and "aaaaaaaa" not in text  # ... without the events' text


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "small", lazy=True)


def test_a_disk_filling_up_under_the_outbox_loses_no_acknowledged_add(small_disk: Path) -> None:
    # A real ENOSPC mid-run (the quota tests fake it): every add is either acknowledged
    # and found again after a restart, or refused with OutboxError; none half-stored.
    path = small_disk / "outbox.sqlite"
    ob = Outbox(path)
    acked: list[str] = []
    refused = put_until_full(ob, (rec(i, 4000) for i in range(400)), lambda r: acked.append(r.eid))
    assert acked and refused  # the disk did fill up
    ob.close()
    with Outbox(path) as again:
        assert [p.eid for p in again.pending(10_000)] == acked


_CRASHING_CHILD = """
import os, sys, time
from client.adapters.outbox import Outbox, OutboxError, OutboxRecord
path = sys.argv[1]
ob = Outbox(path)
ob.put([OutboxRecord("eid-before", "r1", "{}")])
os.unlink(path + "-wal")  # an operator's clean-up of "temporary" files
try:
    ob.put([OutboxRecord("eid-after", "r2", "{}")], timeout=10)
    print("acked", flush=True)
except OutboxError as exc:
    print("refused", exc, flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_removed_wal_and_a_crash_lose_no_acknowledged_add(tmp_path: Path) -> None:
    # The WAL holds every commit since the last checkpoint: removed under the running
    # outbox and followed by a crash, it took acknowledged adds with it (those made before
    # the removal too). Now the next commit folds the open WAL into the file first and
    # refuses adds.
    path = tmp_path / "outbox.sqlite"
    said = said_then_killed(_CRASHING_CHILD, str(path))
    assert said.startswith(("acked", "refused")), said
    with Outbox(path) as again:
        held = [p.eid for p in again.pending()]
    assert "eid-before" in held, held
    assert said.startswith("refused") and "removed or replaced" in said, said
