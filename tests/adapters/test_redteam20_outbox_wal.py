"""Red team 20: the outbox's promises assume SQLite's WAL mode (``synchronous = FULL``
fsyncs the WAL at each commit; the marks' ``NORMAL`` commits are atomic only there), and
its marks-only groups switch the writer's connection to ``NORMAL`` and back.

* an outbox SQLite cannot put in WAL mode refuses to open, naming the mode SQLite kept:
  before, ``Outbox(":memory:")`` (``tlog scim-proxy --outbox :memory:``) opened an
  in-memory database (``journal_mode`` answers ``memory``) and acknowledged every add,
  each gone with the process (and its readers, on another connection, saw no table);
* the switch back to ``FULL`` failing (SQLite's authorizer refusing the ``PRAGMA``, the
  one way to make a statement that touches no file fail here) fails the group it was for,
  nothing acknowledged and nothing stored, and is tried again at the next group: a guard
  (held), reachable now in a test.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxError, OutboxRecord, Receipt


def _rec(i: int) -> OutboxRecord:
    return OutboxRecord(f"eid-{i}", f"req-{i}", '{"x":"a"}')


def _eids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT eid FROM events ORDER BY seq")]
    finally:
        conn.close()


def test_an_outbox_not_in_wal_mode_refuses_to_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutboxError, match=r"not in WAL mode .*'memory'"):
        ob = Outbox(":memory:")
        try:  # before: acknowledged, and held in memory only
            ob.put([_rec(1)], timeout=10)
        finally:
            ob.close()
    assert list(tmp_path.iterdir()) == []  # nothing left of it (the file it made removed)


def test_an_outbox_in_wal_mode_still_opens(tmp_path: Path) -> None:
    """The guard: a file outbox (and one whose WAL a previous run left) opens as before."""
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put([_rec(1)], timeout=10)
    with Outbox(tmp_path / "o.sqlite") as ob:
        assert ob.counts()["pending"] == 1


class _Pragmas:
    """SQLite's authorizer on the writer's connection: records every ``PRAGMA
    synchronous`` it is asked, and refuses ``FULL`` while ``deny`` is set."""

    def __init__(self) -> None:
        self.deny = threading.Event()
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() == "synchronous" and arg2:
            refused = arg2.upper() == "FULL" and self.deny.is_set()
            self.seen.append((arg2.upper(), refused))
            return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK
        return sqlite3.SQLITE_OK


def test_the_switch_back_to_full_failing_fails_its_group(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    pragmas = _Pragmas()
    with Outbox(path) as ob:
        ob._writer_conn.set_authorizer(pragmas)  # before any group: the writer is idle
        ob.put([_rec(0), _rec(1)], timeout=10)
        ob.mark_delivered([Receipt("eid-0", 0, "AA==", 1, "cp")]).result(10)  # NORMAL now
        pragmas.deny.set()
        with pytest.raises(OutboxError, match="not authorized"):
            ob.put([_rec(2)], timeout=10)

        async def add_async() -> None:
            await ob.add_async([_rec(3)])

        with pytest.raises(OutboxError):  # the event loop's path: not acknowledged either
            asyncio.run(add_async())
        assert _eids(path) == ["eid-0", "eid-1"]  # nothing of the failed groups stored
        pragmas.deny.clear()
        ob.put([_rec(4)], timeout=10)  # tried again, and FULL again before the add
        assert ob.counts()["pending"] == 2
    assert _eids(path) == ["eid-0", "eid-1", "eid-4"]
    assert pragmas.seen == [
        ("NORMAL", False),
        ("FULL", True),
        ("FULL", True),
        ("FULL", False),
    ]
