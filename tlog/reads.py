"""Storage work off the event loop, with a bound on how long a request waits for the store.

A stalled store (a frozen file system, a dead disk, a hung network volume) blocks whatever
thread touches it: with LMDB even a read transaction writes its reader slot in ``lock.mdb``,
and under ``fsfreeze`` that write waits for the thaw. If that thread were the event loop,
every request of every tenant would hang, ``/healthz`` and ``/checkpoint`` included. So
nothing on the event loop touches the store: requests answer from memory (the checkpoint,
the verified tiles of :class:`tlog.log.Log`) or hand the storage work to a :class:`ReadPool`
and wait for it at most ``timeout`` seconds, then answer 503 (:class:`StorageStalled`).

:class:`ReadPool` is a few threads sharing one queue, like the sequencer's group commit: a
thread takes every job waiting (up to a batch), runs them, and resolves their futures with
one wake-up of the event loop per batch, so under load a job costs the loop a future and a
queue append, not a thread round trip. A thread stuck in the store keeps only its own batch;
the others go on with the rest. When every thread is stuck, jobs wait in the queue until
their deadline (their futures fail with :class:`StorageStalled`, and the jobs are dropped
unrun); beyond ``max_waiting`` queued jobs a new one is refused at once.

One stall no thread can work around: LMDB's read transaction writes its reader slot in
``lock.mdb`` *while holding Python's GIL* (py-lmdb does not release it there), and on a
frozen file system that write waits for the thaw, so the whole process stops. Hence
:mod:`tlog.lockfile`: the lock file lives on a memory file system by default, reads never
write to the data disk, and a frozen disk only blocks commits (which do release the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tlog.backend import StorageError

__all__ = ["Deadlines", "ReadPool", "StorageStalled", "settle_on_loops"]

log = logging.getLogger("tlog.reads")

T = TypeVar("T")

_BATCH = 64


class StorageStalled(StorageError):
    """The store did not answer within the bound (HTTP 503): nothing was acknowledged."""


def _stalled(what: str, seconds: float) -> StorageStalled:
    return StorageStalled(
        f"the log's store has not answered {what} within {seconds:g} s (a stalled or frozen "
        "disk, or a database lock held by another session?); nothing was acknowledged; "
        "retry later"
    )


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future


Outcome = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", BaseException | None, Any]


def _settle(items: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for fut, err, value in items:
        if fut.done():
            continue  # timed out (or the caller went away) meanwhile
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(value)


def settle_on_loops(outcomes: Iterable[Outcome]) -> None:
    """Settle futures from a worker thread: each ``(loop, future, error, result)`` gets
    ``error`` raised or ``result`` returned, with one wake-up of each event loop for all of
    its futures. A future already done (timed out, cancelled) is left alone; a closed loop
    means its callers are gone."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    for loop, fut, err, value in outcomes:
        by_loop.setdefault(loop, []).append((fut, err, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # loop closed: the callers are gone
            pass


def _expire(fut: asyncio.Future[Any], what: str, seconds: float) -> None:
    if not fut.done():
        log.error("STORE NOT ANSWERING: %s took more than %g s; answering 503", what, seconds)
        fut.set_exception(_stalled(what, seconds))


def bound(fut: asyncio.Future[T], what: str, seconds: float | None) -> asyncio.Future[T]:
    """Fail ``fut`` with :class:`StorageStalled` if it is not done within ``seconds``."""
    if seconds is not None:
        handle = asyncio.get_running_loop().call_later(seconds, _expire, fut, what, seconds)
        fut.add_done_callback(lambda _f: handle.cancel())
    return fut


_Deadline = tuple[float, "asyncio.Future[Any]"]


class Deadlines:
    """:func:`bound` for many futures with the same bound: one timer for all of them.

    ``bound`` costs each future a timer and a done-callback (~6-12 µs with uvloop, per
    single SCIM event); here :meth:`add` costs a deque append. Each future added is failed
    with :class:`StorageStalled` (logged as ``bound`` logs it) if it is not done
    ``seconds`` after it was added, as ``bound`` would. The futures' deadlines are in the
    order they were added (one ``seconds`` for all), so one timer, armed for the oldest
    future not yet done, serves them all: when it fires it drops the done futures at the
    front, fails those whose deadline passed and re-arms for the next one. The done ones
    are also dropped from the front at each :meth:`add`, so the queue holds about the
    futures in flight. Per event loop (a service can be driven from more than one)."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        # loop -> (deadline, future) in the order added, and the loop's armed timer
        self._waiting: dict[asyncio.AbstractEventLoop, deque[_Deadline]] = {}
        self._timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}

    def add(self, fut: asyncio.Future[T]) -> asyncio.Future[T]:
        """Bound ``fut`` (from its loop's thread); returns it."""
        loop = fut.get_loop()
        waiting = self._waiting.get(loop)
        if waiting is None:
            for other in [lp for lp in self._waiting if lp.is_closed()]:
                del self._waiting[other]  # its callers are gone
                self._timers.pop(other, None)
            waiting = self._waiting[loop] = deque()
        while waiting and waiting[0][1].done():
            waiting.popleft()
        deadline = loop.time() + self.seconds
        waiting.append((deadline, fut))
        if loop not in self._timers:
            self._timers[loop] = loop.call_at(deadline, self._fire, loop)
        return fut

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timers.pop(loop, None)
        waiting = self._waiting.get(loop)
        if waiting is None:
            return
        now = loop.time()
        while waiting:
            deadline, fut = waiting[0]
            if not fut.done():
                if deadline > now:
                    self._timers[loop] = loop.call_at(deadline, self._fire, loop)
                    return
                _expire(fut, self.what, self.seconds)
            waiting.popleft()


class ReadPool:
    """``threads`` worker threads running storage jobs for the event loop (module docstring)."""

    def __init__(self, threads: int = 4, timeout: float = 10.0, max_waiting: int = 4096) -> None:
        if threads < 1 or timeout <= 0 or max_waiting < 1:
            raise ValueError("threads and max_waiting must be >= 1, timeout > 0")
        self.threads = threads
        self.timeout = timeout
        self.max_waiting = max_waiting
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._stopping = False
        self.busy = 0  # threads running a batch (for /metrics and tests)

    def start(self) -> None:
        with self._cond:
            self._stopping = False
            while len(self._workers) < self.threads:
                t = threading.Thread(
                    target=self._run, name=f"tlog-read-{len(self._workers)}", daemon=True
                )
                self._workers.append(t)
                t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (a thread stuck in the store is left behind: it is a daemon)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        self._workers = []

    async def run(self, fn: Callable[[], T], what: str = "a read") -> T:
        """``fn()`` on a pool thread; :class:`StorageStalled` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._workers:  # an app used without its lifespan (tests)
            self.start()
        with self._cond:
            if len(self._queue) >= self.max_waiting:
                raise _stalled(what + f" (already {len(self._queue)} reads waiting)", self.timeout)
            self._queue.append(_Job(fn, loop, fut))
            self._cond.notify()
        return await bound(fut, what, self.timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                n = min(len(self._queue), _BATCH)
                jobs = [self._queue.popleft() for _ in range(n)]
                self.busy += 1
            done: list[Outcome] = []
            for job in jobs:
                if job.future.done():
                    continue  # its caller already got 503: do not run it late
                try:
                    done.append((job.loop, job.future, None, job.fn()))
                except BaseException as exc:  # handed to the caller, who maps it to a status
                    done.append((job.loop, job.future, exc, None))
            with self._cond:
                self.busy -= 1
            settle_on_loops(done)
