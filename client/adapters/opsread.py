"""The audit backlog read for status, readiness and metrics, bounded on a stalled disk and
told apart from a slow one (ops30).

An outbox on a frozen file system holds a read of it until the thaw (a SQLite reader writes
its read mark into the WAL's shared memory after a commit, and that page waits); a read on a
loaded or throttled disk takes long too, but moves. The reads are made by a daemon thread of
their own (:class:`BoundedReads`), and a read that has run longer than the bound counts as
stalled only when that thread has not run at all for the last half of the bound: a thread
that the kernel holds in one wait (a frozen file system, a dead device) is not scheduled,
while one whose reads are slow is, each time one of them completes (its scheduler counters,
``/proc/self/task/<tid>/schedstat``, move). Stall29 counted every read longer than the bound
as a stall, and readiness then shed a healthy proxy from its load balancer.

:class:`OpsReads` is what ``tlog scim-proxy``'s ``/.tlog/`` endpoints and an app embedding
the middleware (:meth:`client.adapters.middleware.AuditMiddleware.ops_state`) read: the
backlog, or at once what a stalled disk's answer says (``disk_stalled``), or, while a read is
slow but moving, the last reading with its age (``disk_slow``)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

Reading = dict[str, Any]

# How often a waiting reader looks at the read thread's progress, in parts of the bound.
_LOOKS = 8
# A read with no earlier reading to answer from is waited for while it moves, at most this
# many bounds; then it is answered as slow without figures (readiness: not ready).
_FIRST_READ_BOUNDS = 4


def thread_progress(tid: int) -> tuple[int, ...] | None:
    """Counters of thread ``tid`` of this process that move whenever it runs: its CPU time
    and the times it was scheduled (``schedstat``), else its context switches (``status``);
    None where neither can be read (not Linux)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
            return tuple(int(x) for x in f.read().split()[::2])  # run ns, timeslices
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/status", "rb") as f:
            return tuple(int(line.split()[1]) for line in f if b"ctxt_switches" in line)
    except (OSError, ValueError, IndexError):
        return None


class DiskStalled(Exception):
    """A read has run longer than the bound and its thread has not run for half of it."""


class DiskSlow(Exception):
    """A read has run longer than the bound, but moves: ``last`` is the last complete
    reading (None when there is none) and ``age`` its age in seconds."""

    def __init__(self, last: Reading | None, age: float) -> None:
        super().__init__("slow")
        self.last = last
        self.age = age


class BoundedReads:
    """Reads made by ``fn`` in a daemon thread of their own (started at the first read),
    one at a time, shared by the readers asking meanwhile, each waited for at most about
    ``bound`` seconds: :class:`DiskStalled` when the read's thread has been held in one
    wait (not scheduled) for the last half of the bound, :class:`DiskSlow` when it moves.
    A read the disk holds holds the thread until the thaw; nothing else waits on it."""

    def __init__(self, fn: Callable[[], Reading], bound: float) -> None:
        self.fn = fn
        self.bound = bound
        self._lock = threading.Lock()
        self._current: tuple[float, Future[Reading]] | None = None
        self._todo: queue.SimpleQueue[Future[Reading] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tid: int | None = None
        # The read thread's progress counters as last seen, and since when (monotonic).
        self._seen: tuple[tuple[int, ...] | None, float] = (None, 0.0)
        self._last: tuple[Reading, float] | None = None  # the last complete reading, when

    def held_for(self) -> float:
        """Seconds the read in flight has run (0 when none)."""
        cur = self._current
        return 0.0 if cur is None else time.monotonic() - cur[0]

    def quiet_for(self) -> float:
        """Seconds the read thread has not run (been scheduled) during the read in flight
        (0 when none; the whole read where its progress cannot be seen)."""
        cur, tid = self._current, self._tid
        if cur is None:
            return 0.0
        now = time.monotonic()
        counters = None if tid is None else thread_progress(tid)
        if counters is None:
            return now - cur[0]
        with self._lock:
            seen, since = self._seen
            if counters != seen or since < cur[0]:
                # it ran since the last look (or this is the first look at this read): it
                # may have run just now, so it has been quiet for no time that is known
                self._seen = (counters, now)
            return now - self._seen[1]

    def stalled(self) -> bool:
        """Whether the read in flight has run longer than the bound and its thread has not
        run for the last half of it (cheap, non-blocking: reads ``/proc`` only)."""
        return self.held_for() > self.bound and self.quiet_for() > self.bound / 2

    def stop(self) -> None:
        """End the thread: now when it is idle; a read the disk holds ends it after the thaw
        (not waited for)."""
        with self._lock:
            thread, self._thread = self._thread, None
            idle = self._current is None
        if thread is not None:
            self._todo.put(None)
            if idle:
                thread.join()

    def _run(self) -> None:
        self._tid = threading.get_native_id()
        while True:
            fut = self._todo.get()
            if fut is None:
                return
            try:
                got = self.fn()
            except BaseException as exc:
                with self._lock:
                    self._current = None
                fut.set_exception(exc)
            else:
                with self._lock:
                    self._current = None
                    self._last = (got, time.monotonic())
                fut.set_result(got)

    def _begin(self) -> tuple[float, Future[Reading]]:
        with self._lock:
            cur = self._current
            if cur is None:
                fut: Future[Reading] = Future()
                fut.set_running_or_notify_cancel()  # never cancelled by a waiter
                cur = self._current = (time.monotonic(), fut)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="tlog-ops-read", daemon=True
                    )
                    self._thread.start()
                self._todo.put(fut)
            return cur

    def _slow(self) -> DiskSlow:
        last = self._last
        if last is None:
            return DiskSlow(None, 0.0)
        return DiskSlow(last[0], time.monotonic() - last[1])

    async def read(self) -> Reading:
        """A fresh reading; :class:`DiskStalled` or :class:`DiskSlow` (with the last
        reading) when the read in flight has not answered within the bound."""
        since, fut = self._begin()
        wrapped = asyncio.wrap_future(fut)
        # (answered slow or stalled, nobody awaits it: its failure after the thaw is read
        # here, not reported as never retrieved)
        wrapped.add_done_callback(_retrieved)
        look = self.bound / _LOOKS
        while True:
            held = time.monotonic() - since
            # one look at its progress a turn (also what the next turn's is measured from)
            quiet = self.quiet_for()
            if held >= self.bound:
                if fut.done():
                    return fut.result()
                if quiet > self.bound / 2:  # held in one wait: stalled (as stalled() says)
                    raise DiskStalled
                if quiet <= look or held > self.bound * 1.5:
                    # moving (it ran since the last look), or not quiet long enough yet
                    # half a bound past the bound: answered from the last reading, or
                    # waited for on while it moves when there is none
                    if self._last is not None or held > self.bound * _FIRST_READ_BOUNDS:
                        raise self._slow()
            wait = look if held >= self.bound else min(look, self.bound - held)
            try:
                return await asyncio.wait_for(asyncio.shield(wrapped), max(wait, 0.001))
            except TimeoutError:
                continue


def _retrieved(fut: asyncio.Future[Reading]) -> None:
    if not fut.cancelled():
        fut.exception()


class OpsReads:
    """What status, readiness and metrics read: the backlog (``backlog``, blocking, read by
    :class:`BoundedReads`) and the intent journal's state with what the process knows now
    of its writes and relay (``journal``, non-blocking, laid over a reading not made now),
    never waiting on the disk much longer than ``bound`` seconds."""

    def __init__(
        self,
        backlog: Callable[[], Reading],
        journal: Callable[[], Reading],
        bound: float,
    ) -> None:
        self.bound = bound
        self.journal = journal
        self.reads = BoundedReads(backlog, bound)

    def stall(self, *, read_held: bool = False) -> Reading | None:
        """What a stalled disk's answers say (None: not stalled: neither the intent
        journal's writer nor the read in flight is held; ``read_held``: a read was just
        found held). Reads nothing on disk."""
        j = self.journal()
        if not j.get("intent_journal_stalled") and not read_held and not self.reads.stalled():
            return None
        return {
            **j,
            "disk_stalled": True,
            "error": (
                f"the audit outbox's disk has not answered for more than {self.bound:g} s "
                "(stalled): writes are refused, not applied, until it answers"
            ),
        }

    async def state(self) -> Reading:
        """The backlog with ``disk_stalled`` false; or what a stalled disk's answers say
        (``disk_stalled`` true, the journal's state, no figure that needs the disk); or,
        while the read is slow but moving, the last reading with ``disk_slow`` true and its
        age (``reading_age_ms``), or no figures when there is none yet. May raise what the
        backlog raises (:class:`client.adapters.outbox.OutboxError`)."""
        stalled = self.stall()
        if stalled is not None:
            return stalled
        try:
            got = await self.reads.read()
        except DiskStalled:
            stalled = self.stall(read_held=True)
            assert stalled is not None
            return stalled
        except DiskSlow as slow:
            doc: Reading = {"disk_stalled": False, "disk_slow": True}
            if slow.last is None:
                return {
                    **self.journal(),
                    **doc,
                    "error": (
                        "the audit outbox's disk is slow (it answers, but its first read "
                        f"has taken more than {_FIRST_READ_BOUNDS * self.bound:g} s)"
                    ),
                }
            age = int(slow.age * 1000)
            return {**slow.last, **self.journal(), **doc, "reading_age_ms": age}
        return {**got, "disk_stalled": False}

    def stop(self) -> None:
        self.reads.stop()
