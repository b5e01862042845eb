"""Batching submissions into durable commits, with explicit pushback.

Callers on the event loop ``await submit(entries)``; one writer thread takes queued
submissions (group commit: everything that arrived while the previous batch was being
fsynced, up to ``max_batch_entries``, waiting at most ``max_batch_age`` for more), hands them
to :meth:`tlog.log.Log.integrate` and resolves every caller's future with the result **after**
the batch is durable and signed. When more than ``max_backlog`` entries wait, ``submit``
raises :class:`Overloaded` at once instead of queueing (the HTTP layer answers 503 with
``Retry-After``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tlog.backend import (
    AuxFenced,
    CommitConflict,
    CommitUnknown,
    StoreNotHeld,
    StoreUnreachable,
    TurnTimeout,
)
from tlog.log import BatchResult, Log, LogHalted
from tlog.reads import Deadlines, Outcome, settle_on_loops

__all__ = ["Overloaded", "Sequencer", "SequencerStopped"]

T = TypeVar("T")

log = logging.getLogger("tlog.sequencer")

CONFLICT_RETRIES = 8  # rebuilds of one batch after another frontend's commit
IDLE_REFRESH = 1.0  # seconds idle before a frontend on a shared store catches up


class Overloaded(Exception):
    """The backlog is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("the log's backlog is full")
        self.retry_after = retry_after


class SequencerStopped(Exception):
    """The sequencer is shutting down or its writer failed."""


Done = Callable[[BatchResult | BaseException], None]


@dataclass
class _Pending:
    entries: list[bytes]
    hashes: list[bytes] | None  # their RFC 6962 leaf hashes, if the caller computed them
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[BatchResult] | None
    enqueued: float = field(default_factory=time.monotonic)
    # Sequencer.enqueue: records committed with the batch, and the callbacks (see there).
    aux: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    fence: bytes | None = None  # the writer fence ``aux`` was staged under
    done: Done | None = None
    check: Callable[[], None] | None = None
    failed: Callable[[BaseException], None] | None = None


class Sequencer:
    def __init__(
        self,
        log_: Log,
        *,
        max_batch_entries: int,
        max_batch_age: float,
        max_backlog: int,
        on_published: Callable[[int], None] | None = None,
        commit_timeout: float | None = None,
    ) -> None:
        self.log = log_
        self.max_batch_entries = max_batch_entries
        self.max_batch_age = max_batch_age
        self.max_backlog = max_backlog
        self.idle_refresh = IDLE_REFRESH
        self.on_published = on_published
        # A caller waits at most this long for its commit, then gets StorageStalled (503):
        # a stalled store must not hold requests forever. The batch itself is not
        # cancelled; if it lands later, a retry of the same entry is a duplicate.
        self.commit_timeout = commit_timeout
        self._deadlines: Deadlines | None = None
        # Called by the writer after each batch: (entries, seconds, committed) (metrics).
        self.on_batch: Callable[[int, float, bool], None] | None = None
        self._queue: deque[_Pending] = deque()
        self._queued_entries = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        # Committed batches waiting for their checkpoint to be remembered (the publisher
        # thread), so the next batch is built and committed meanwhile; None: stop.
        self._done: deque[tuple[list[_Pending], BatchResult | BaseException] | None] = deque()
        self._done_cond = threading.Condition()
        self._publisher: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._publisher = threading.Thread(
                target=self._publish_run, name="tlog-publisher", daemon=True
            )
            self._publisher.start()
            self._thread = threading.Thread(target=self._run, name="tlog-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish what is queued, and join the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._publisher is not None:
            self._publisher.join(timeout)
            self._publisher = None

    @property
    def running(self) -> bool:
        """The writer thread runs and accepts submissions."""
        t = self._thread
        return t is not None and t.is_alive() and not self._stopping

    @property
    def backlog(self) -> int:
        return self._queued_entries

    async def submit(
        self, entries: list[bytes], leaf_hashes: list[bytes] | None = None
    ) -> BatchResult:
        """Sequence ``entries``; answered once they are durable in a published checkpoint.

        ``leaf_hashes``: their RFC 6962 leaf hashes (:func:`client.formats.merkle.leaf_hash`),
        if the caller has them: computed on the caller's thread (e.g. while decoding a batch
        body), that work overlaps the writer's commit instead of adding to it.
        """
        if not entries:
            raise ValueError("nothing to submit")
        if leaf_hashes is not None and len(leaf_hashes) != len(entries):
            raise ValueError("one leaf hash per entry")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[BatchResult] = loop.create_future()
        with self._cond:
            if self._stopping or self._thread is None:
                raise SequencerStopped("the log is not accepting entries")
            if self._queued_entries + len(entries) > self.max_backlog:
                raise Overloaded()
            self._queue.append(_Pending(entries, leaf_hashes, loop, fut))
            self._queued_entries += len(entries)
            self._cond.notify()
        return await self.bounded(fut)

    def bounded(self, fut: asyncio.Future[T]) -> asyncio.Future[T]:
        """``bound(fut, "a commit", self.commit_timeout)`` (:func:`tlog.reads.bound`) with one
        timer for every commit awaited, this sequencer's submissions and its callers'
        (:class:`tlog.reads.Deadlines`), not one per future."""
        seconds = self.commit_timeout
        if seconds is None:
            return fut
        d = self._deadlines
        if d is None or d.seconds != seconds:
            d = self._deadlines = Deadlines("a commit", seconds)
        return d.add(fut)

    def enqueue(
        self,
        entries: list[bytes],
        leaf_hashes: list[bytes] | None,
        aux: list[tuple[bytes, bytes | None]],
        done: Done,
        *,
        check: Callable[[], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
        fence: bytes | None = None,
    ) -> None:
        """:meth:`submit` from any thread, with auxiliary records committed in the batch's
        own transaction (:meth:`tlog.log.Log.integrate`'s ``aux``; ``entries`` may then be
        empty), under the writer ``fence`` they were staged under (``aux_fence``). Raises
        :class:`Overloaded` or :class:`SequencerStopped` at once.

        ``done(result)`` is called on the publisher thread once the batch is durable and its
        checkpoint remembered (or with the exception that stopped it); ``check()`` on the
        writer thread right before the batch is built: if it raises, this submission is left
        out and ``done`` gets the exception; ``failed(exc)`` on the writer thread as soon as a
        commit that carried this submission failed, before the next batch is taken (so a
        caller that staged later submissions on top of this one can refuse them). If the
        fence was taken by another process meanwhile, ``done`` gets
        :class:`tlog.backend.AuxFenced` and nothing of this submission is written; the other
        submissions of the same batch are committed without it.
        """
        if not entries and not aux:
            raise ValueError("nothing to submit")
        if leaf_hashes is not None and len(leaf_hashes) != len(entries):
            raise ValueError("one leaf hash per entry")
        with self._cond:
            if self._stopping or self._thread is None:
                raise SequencerStopped("the log is not accepting entries")
            if self._queued_entries + len(entries) > self.max_backlog:
                raise Overloaded()
            self._queue.append(
                _Pending(
                    entries,
                    leaf_hashes,
                    None,
                    None,
                    aux=aux,
                    fence=fence,
                    done=done,
                    check=check,
                    failed=failed,
                )
            )
            self._queued_entries += len(entries)
            self._cond.notify()

    def _take(self) -> list[_Pending] | None:
        """The next batch; None when stopping and drained; [] after ``idle_refresh``
        seconds without work on a shared store (time to catch up with other frontends)."""
        idle = self.idle_refresh if self.log.storage.shared else None
        with self._cond:
            while not self._queue and not self._stopping:
                if not self._cond.wait(idle) and not self._queue:
                    return []
            if not self._queue:
                return None  # stopping and drained
            if self.max_batch_age > 0 and not self._stopping:
                deadline = self._queue[0].enqueued + self.max_batch_age
                while self._queued_entries < self.max_batch_entries and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch: list[_Pending] = []
            n = 0
            while self._queue and (
                not batch or n + len(self._queue[0].entries) <= self.max_batch_entries
            ):
                p = self._queue.popleft()
                batch.append(p)
                n += len(p.entries)
            self._queued_entries -= n
            return batch

    def _refresh(self) -> None:
        """Idle on a shared store: adopt what other frontends committed, so this one's
        ``/checkpoint``, entries and proofs follow the log without a write of its own. On
        the writer thread, like every change of the log's state."""
        try:
            self.log.catch_up()
        except Exception as exc:  # the store is unreachable: the next batch reloads first
            log.warning("could not catch up with the shared store: %s", exc)

    def _integrate(
        self,
        entries: list[bytes],
        hashes: list[bytes] | None = None,
        aux: list[tuple[bytes, bytes | None]] | None = None,
        fence: bytes | None = None,
    ) -> BatchResult:
        """One batch, built on the store's current state: on a shared database another
        frontend may have committed since this one's last batch, so while this frontend
        holds the write turn it catches up first (incrementally), then commits; if a
        commit still loses the compare-and-swap (a frontend that takes no turn), it
        catches up and rebuilds the batch, at most ``CONFLICT_RETRIES`` times: the database
        decides who wins each round. :class:`TurnTimeout` is not retried (the wait was
        the bound). The batch's records go with it again only under the same writer
        ``fence``: if another frontend took it, :class:`AuxFenced` at once (records staged
        on what it may have changed are never retried as they are)."""
        storage = self.log.storage
        shared = storage.shared  # LMDB: one writer; a second one is refused loudly
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                # The frontends take turns (Backend.write_turn): the catch-up sees the last
                # holder's commit, so the batch built on it normally wins its compare-and-
                # swap. Published by the publisher thread (_publish_run), not here.
                with storage.write_turn():
                    if shared:
                        self.log.catch_up(publish=False)
                    return self.log.integrate(
                        entries, publish=False, leaf_hashes=hashes, aux=aux or (), aux_fence=fence
                    )
            except (AuxFenced, TurnTimeout):
                raise
            except CommitConflict:
                if attempt == CONFLICT_RETRIES or not shared:
                    raise
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # let the other batch land
        raise AssertionError("unreachable")

    def _run(self) -> None:
        batch: list[_Pending] | None = None
        try:
            while True:
                batch = None
                batch = self._take()
                if batch is None:
                    return
                if not batch:
                    self._refresh()
                    continue
                # Fenced first: its ``failed`` hooks tell the callers which submissions
                # failed, so that the checks refuse the ones staged on top of them.
                batch = self._checked(self._fenced(batch))
                if not batch:
                    continue
                t0 = time.perf_counter()
                result = self._commit(batch)
                if isinstance(result, AuxFenced):
                    # Another frontend took the SCIM writer fence: the submissions that
                    # carry records fail (their writer stages them again), the others are
                    # committed without them in a batch of their own, checked again: the
                    # failed hooks refuse what was staged on top of the fenced submissions
                    # (e.g. a retry of one of their events, a duplicate of a leaf whose
                    # records were just refused).
                    self._refuse([p for p in batch if p.aux], result)
                    batch = self._checked([p for p in batch if not p.aux])
                    if not batch:
                        continue
                    result = self._commit(batch)
                if isinstance(result, BaseException):
                    self._fail(batch, result)
                self.batches += 1
                if self.on_batch is not None:
                    try:
                        self.on_batch(
                            sum(len(p.entries) for p in batch),
                            time.perf_counter() - t0,
                            not isinstance(result, BaseException),
                        )
                    except Exception:  # pragma: no cover - a hook must not stop the writer
                        log.exception("on_batch hook failed")
                self._queued_done(batch, result)
                batch = None
        except BaseException as exc:
            self._died(batch, exc)
            raise
        finally:
            with self._done_cond:  # the publisher answers what is left, then stops
                self._done.append(None)
                self._done_cond.notify()

    def _died(self, batch: list[_Pending] | None, exc: BaseException) -> None:
        """The writer thread is ending on an exception nothing above caught (a defect): say
        so loudly, accept nothing more, and answer the batch it held and everything queued
        (nothing of them acknowledged; a retry of one that did commit is a duplicate), so
        that no submitter waits for a writer that is gone and every ``done`` hook runs (the
        SCIM writer gives back the write turn it holds for a group there)."""
        log.critical(
            "the log's writer stopped on an unexpected error; nothing more is accepted until "
            "a restart: %r",
            exc,
        )
        with self._cond:
            self._stopping = True
            rest = list(self._queue)
            self._queue.clear()
            self._queued_entries = 0
        pending = [*(batch or ()), *rest]
        if pending:
            dead = SequencerStopped(
                f"nothing of the batch was acknowledged: the writer stopped: {exc!r}"
            )
            self._fail(pending, dead)
            self._queued_done(pending, dead)

    def _commit(self, batch: list[_Pending]) -> BatchResult | BaseException:
        """Commit ``batch``: its result, or why nothing of it was acknowledged (a
        :class:`AuxFenced` as it is: the caller retries the batch without its records)."""
        try:
            return self._integrate_batch(batch)
        except AuxFenced as exc:
            return exc
        except (CommitConflict, CommitUnknown, LogHalted, StoreNotHeld, StoreUnreachable) as exc:
            # Logged where it happened (a CommitUnknown that reaches here was read back and
            # not found in the store: Log.integrate says so); the callers get 503 with the
            # reason.
            return SequencerStopped(f"nothing of the batch was acknowledged: {exc}")
        except Exception as exc:
            n = sum(len(p.entries) for p in batch)
            log.exception("batch of %d entries failed; none acknowledged", n)
            return SequencerStopped(f"the batch could not be committed: {exc}")

    def _integrate_batch(self, batch: list[_Pending]) -> BatchResult:
        entries = [e for p in batch for e in p.entries]
        aux = [it for p in batch for it in p.aux]
        hashes: list[bytes] | None = None
        if len(batch) == 1:
            hashes = batch[0].hashes
        elif all(p.hashes is not None for p in batch):
            hashes = [h for p in batch for h in p.hashes or ()]
        fence = next((p.fence for p in reversed(batch) if p.aux), None)
        return self._integrate(entries, hashes, aux, fence)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        """Tell each submission of a failed commit (``failed`` hooks) before the next batch."""
        for p in batch:
            if p.failed is not None:
                try:
                    p.failed(exc)
                except Exception:  # pragma: no cover - a hook must not stop the writer
                    log.exception("failed hook failed")

    def _fenced(self, batch: list[_Pending]) -> list[_Pending]:
        """``batch`` without the submissions whose records were staged under another writer
        fence than the newest one in it (answered with :class:`AuxFenced`): one batch
        commits under one fence. One process claims fences one after another, and every
        submission staged under the older one is stale."""
        fences = {p.fence for p in batch if p.aux}
        if len(fences) <= 1:
            return batch
        newest = next(p.fence for p in reversed(batch) if p.aux)
        stale = [p for p in batch if p.aux and p.fence != newest]
        self._refuse(
            stale, AuxFenced("staged under an older SCIM writer fence: nothing of it was written")
        )
        return [p for p in batch if not (p.aux and p.fence != newest)]

    def _refuse(self, pendings: list[_Pending], exc: BaseException) -> None:
        """Fail ``pendings`` (their ``failed`` hooks now, their answers in order)."""
        self._fail(pendings, exc)
        self._queued_done(pendings, exc)

    def _checked(self, batch: list[_Pending]) -> list[_Pending]:
        """``batch`` without the submissions whose ``check`` refuses them (answered with
        its exception, in order with the other answers)."""
        if all(p.check is None for p in batch):
            return batch
        live: list[_Pending] = []
        for p in batch:
            try:
                if p.check is not None:
                    p.check()
            except Exception as exc:
                self._queued_done([p], exc)
                continue
            live.append(p)
        return live

    def _queued_done(self, batch: list[_Pending], result: BatchResult | BaseException) -> None:
        with self._done_cond:
            self._done.append((batch, result))
            self._done_cond.notify()

    def _publish_run(self) -> None:
        """Remember the newest committed checkpoint, then answer every batch it covers.

        One fdatasync of the remembered-checkpoint file for everything committed while the
        previous one ran: it overlaps the next batch's build and commit instead of adding to
        its latency, and nobody is answered before both the store and the file hold the
        checkpoint (:meth:`tlog.log.Log.publish`).
        """
        while True:
            with self._done_cond:
                while not self._done:
                    self._done_cond.wait()
                items = list(self._done)
                self._done.clear()
            done = [it for it in items if it is not None]
            newest = None
            for _, res in done:
                if not isinstance(res, BaseException) and (
                    newest is None or res.checkpoint.size > newest.size
                ):
                    newest = res.checkpoint
            if newest is not None:
                try:
                    self.log.publish(newest)
                except Exception as exc:
                    log.exception(
                        "could not remember checkpoint %d; nothing of it acknowledged", newest.size
                    )
                    failed = SequencerStopped(
                        "nothing of the batch was acknowledged: the checkpoint could not be "
                        f"remembered: {exc}"
                    )
                    done = [(b, failed) for b, _ in done]
                    newest = None
            for batch, result in done:
                self._answer(batch, result)
            if self.on_published is not None and newest is not None:
                try:
                    self.on_published(newest.size)
                except Exception:  # pragma: no cover - a hook must not stop the publisher
                    log.exception("on_published hook failed")
            if any(it is None for it in items):
                return

    @staticmethod
    def _answer(batch: list[_Pending], result: BatchResult | BaseException) -> None:
        answers: list[Outcome] = []
        pos = 0
        for p in batch:
            n = len(p.entries)
            if isinstance(result, BaseException):
                r: BatchResult | BaseException = result
            elif len(batch) == 1:
                r = result
            else:
                r = BatchResult(
                    result.indices[pos : pos + n],
                    result.duplicates[pos : pos + n],
                    result.leaf_hashes[pos : pos + n],
                    result.checkpoint,
                )
            pos += n
            if p.done is not None:
                try:
                    p.done(r)
                except Exception:  # pragma: no cover - a callback must not stop the publisher
                    log.exception("done callback failed")
            elif p.loop is not None and p.future is not None:
                err = r if isinstance(r, BaseException) else None
                answers.append((p.loop, p.future, err, r))
        settle_on_loops(answers)
