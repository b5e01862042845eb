"""proxy29: the intent journal's cheaper hand-off, and what it must still promise.

* The bounds of :meth:`IntentJournal.synced`'s waits share one timer a loop (no timer a
  write): every wait still fails with :class:`IntentStalled` once past its own bound while
  the writer is held (a stalled disk), a shorter bound begun after a longer one first, and
  the waits within their bound are still settled by the writer once it goes on.
* A recorded intent's done line (its events in the outbox under its key) does not wake the
  writer: it goes with the next round, or on its own a moment later when no other line
  comes; any other line is written at once.

The frozen file system itself (``fsfreeze``) is test_redteam27_proxy_frozen_disk's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters import outbox as outbox_module
from client.adapters.outbox import IntentJournal, IntentStalled, _read_journal

# A safety net so that a broken bound fails the test instead of hanging it (not a timing
# assertion: every bound tested is far below it).
NET = 60.0


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[IntentJournal]:
    j = IntentJournal(tmp_path)
    try:
        yield j
    finally:
        j.close(remove=True)


def _hold_writer(j: IntentJournal) -> tuple[threading.Event, threading.Event]:
    """The writer thread held in its next write (as a stalled disk holds it) until the
    second event is set; the first is set once it is held."""
    held, release = threading.Event(), threading.Event()
    append = j._append

    def stalled(line: bytes) -> None:
        held.set()
        release.wait(NET)
        append(line)

    j._append = stalled  # type: ignore[method-assign]
    return held, release


def test_proxy29_every_wait_fails_at_its_own_bound_with_one_timer(
    journal: IntentJournal,
) -> None:
    held, release = _hold_writer(journal)

    async def run() -> None:
        first = journal.begin({"req": "r0", "t": 1}, wait=False)
        assert await asyncio.to_thread(held.wait, NET)  # the writer is stuck in its write
        late = [journal.begin({"req": f"r{n}", "t": 1}, wait=False) for n in (1, 2, 3)]
        long_wait = asyncio.ensure_future(journal.synced(late[0], NET))
        await asyncio.sleep(0)
        # Begun after a wait with a longer bound, each of these fails at its own bound.
        for iid in (first, *late[1:]):
            with pytest.raises(IntentStalled):
                await asyncio.wait_for(journal.synced(iid, 0.05), NET)
        assert not long_wait.done()  # within its bound: still waiting for the writer
        assert journal._watchdog is not None and journal._watchdog._timer is not None
        release.set()  # the disk answers: the waiting write goes on
        await asyncio.wait_for(long_wait, NET)
        # a later wait is bounded too (the timer armed again after the ones that fired)
        again = journal.begin({"req": "r4", "t": 1}, wait=False)
        await asyncio.wait_for(journal.synced(again, 5.0), NET)

    asyncio.run(run())
    assert [d["req"] for d in _read_journal(journal.paths)] == [f"r{n}" for n in range(5)]


def test_proxy29_a_cancelled_wait_is_forgotten_and_the_others_still_fail(
    journal: IntentJournal,
) -> None:
    held, release = _hold_writer(journal)

    async def run() -> None:
        a = journal.begin({"req": "a", "t": 1}, wait=False)
        b = journal.begin({"req": "b", "t": 1}, wait=False)
        assert await asyncio.to_thread(held.wait, NET)
        cancelled = asyncio.ensure_future(journal.synced(a, 0.05))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(IntentStalled):
            await asyncio.wait_for(journal.synced(b, 0.05), NET)
        assert cancelled.cancelled()
        watch = journal._watchdog
        assert watch is not None and not watch._waits and watch._timer is None
        release.set()

    asyncio.run(run())


def test_proxy29_a_recorded_done_needs_no_round_of_its_own(
    journal: IntentJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never on its own while this holds (the writer waits this long for another line).
    monkeypatch.setattr(outbox_module, "_LAZY_WAIT", NET * 10)

    async def run() -> None:
        iid = journal.begin({"req": "r0", "t": 1}, wait=False)
        await journal.synced(iid, 5.0)
        journal.done(iid, wait=False, recorded=True)
        # Queued, and the writer was not woken for it.
        assert journal._queue and not journal._prompt
        # It goes with the next intent's round: both lines in one write.
        nxt = journal.begin({"req": "r1", "t": 1}, wait=False)
        await journal.synced(nxt, 5.0)
        assert not journal._queue and journal._written == nxt
        assert [d["req"] for d in _read_journal(journal.paths)] == ["r1"]

        # Alone (no other line comes), it is written a moment later all the same.
        monkeypatch.setattr(outbox_module, "_LAZY_WAIT", 0.05)
        last = journal.begin({"req": "r2", "t": 1}, wait=False)  # (a round: the new wait)
        await journal.synced(last, 5.0)
        journal.done(nxt, wait=False, recorded=True)
        journal.done(last, wait=False, recorded=True)
        deadline = time.monotonic() + NET
        while journal._written < last + 2:
            assert time.monotonic() < deadline, "the recorded dones were never written"
            await asyncio.sleep(0.01)
        assert _read_journal(journal.paths) == []  # every intent begun is done

    asyncio.run(run())


def test_proxy29_a_done_not_recorded_is_written_at_once(
    journal: IntentJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "_LAZY_WAIT", NET * 10)
    iid = journal.begin({"req": "r0", "t": 1})
    journal.done(iid, wait=False)  # refused, or no event: the writer is woken for it
    deadline = time.monotonic() + NET
    while journal._written < iid + 1:
        assert time.monotonic() < deadline, "the done was not written without another line"
        time.sleep(0.001)
    assert _read_journal(journal.paths) == []


def _count_rounds(j: IntentJournal) -> list[int]:
    """How many writes (rounds of the writer) ``j`` makes from now on, in a list's one item."""
    rounds = [0]
    append = j._append

    def counted(line: bytes) -> None:
        rounds[0] += 1
        append(line)

    j._append = counted  # type: ignore[method-assign]
    return rounds


def test_proxy29_the_intents_of_one_loop_iteration_share_one_round(
    journal: IntentJournal,
) -> None:
    rounds = _count_rounds(journal)

    async def run() -> None:
        # Begun in one iteration of the loop (no await between): the writer is woken once,
        # at its end, and writes them together. (The pauses, the GIL released, would let a
        # writer woken by each begin write the first ones apart.)
        iids = []
        for n in range(5):
            iids.append(journal.begin({"req": f"r{n}", "t": 1}, wait=False))
            time.sleep(0.01)
        await asyncio.gather(*(journal.synced(i, NET) for i in iids))

    asyncio.run(run())
    assert rounds == [1]
    assert [d["req"] for d in _read_journal(journal.paths)] == [f"r{n}" for n in range(5)]


def test_proxy29_a_wake_up_pending_on_a_closed_loop_holds_no_other_loop(
    journal: IntentJournal,
) -> None:
    gone = asyncio.new_event_loop()
    gone.close()
    journal._kick_loop = gone  # as a loop closed before its pending wake-up ran leaves it

    async def run() -> None:
        iid = journal.begin({"req": "r0", "t": 1}, wait=False)
        await journal.synced(iid, NET)  # woken by this loop's own wake-up

    asyncio.run(run())
    assert [d["req"] for d in _read_journal(journal.paths)] == ["r0"]


def test_proxy29_a_refused_wait_makes_the_held_writer_stalled_at_once(
    journal: IntentJournal,
) -> None:
    """The health check after a write's 503 says the journal stalls even when the writer's
    I/O began after that write's wait (the bound, far longer here, not reached yet)."""
    held, release = _hold_writer(journal)

    async def run() -> None:
        iid = journal.begin({"req": "r0", "t": 1}, wait=False)
        assert await asyncio.to_thread(held.wait, NET)
        assert not journal.stalled(NET)  # held, for less than the bound, no wait failed
        with pytest.raises(IntentStalled):
            await asyncio.wait_for(journal.synced(iid, 0.05), NET)
        assert journal.stalled(NET)
        release.set()
        later = journal.begin({"req": "r1", "t": 1}, wait=False)
        await journal.synced(later, NET)
        assert not journal.stalled(NET)  # the I/O went on: no longer

    asyncio.run(run())
