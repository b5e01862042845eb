"""ASGI middleware that records every SCIM write as an audit event (SCIM.md §2.2).

Wrap any ASGI SCIM service provider (or the forwarder of ``tlog scim-proxy``) in
:class:`AuditMiddleware`. For each request it:

1. takes the correlation id from ``X-Request-Id`` (or generates one, passes it to the app and
   echoes it in the response) and W3C ``traceparent``;
2. for a **write** (POST except ``.../.search``, PUT, PATCH, DELETE) buffers the request body,
   runs the app, and buffers the response;
3. turns the exchange into events (:mod:`client.adapters.exchange`, pure; via
   :func:`client.scim.event.new_event`): one per request on
   a resource endpoint, one per operation of a ``/Bulk`` request (``corr.bulk_req``,
   ``corr.seq``, ``corr.bulk_id``), successes and failures alike, with the request digest
   (SHA-256 of the raw body), ``If-Match`` (``ver.pre``), the response status, ``ETag``
   (``ver.post``), ``Location``, the SCIM error ``scimType``/``detail``, and the intent
   (``patch``/``mods``/``refs``/``acts``) parsed from the body by
   :func:`client.scim.actions.parse_request`, marked ``"intent": true``;
4. writes the events to the durable :class:`~client.adapters.outbox.Outbox` (fsynced) *before*
   releasing the response, optionally waits up to ``receipt_timeout`` for the relay to
   deliver them, and adds receipt headers (:mod:`client.adapters.receipts`).

What is **not** a provisioning event (SCIM.md §2.2 step 4) goes to the ``on_access`` hook
(default: the ``client.scim.access`` logger), never to the log: writes answered 401/403,
writes to the discovery endpoints (``/ServiceProviderConfig``, ``/ResourceTypes``,
``/Schemas``: 405), writes to an unknown endpoint answered 404 or 405, PUT/PATCH/DELETE with
no resource id, bodies over ``max_body`` (413 from the middleware itself) and bulk requests
whose body is not a bulk request; and the middleware's own reads of the SP's
``/ResourceTypes`` made with a client's credentials (reason ``sp_types_read``, faith31).
A DELETE answered 404 on a real resource endpoint *is* an
event, with outcome ``skipped`` (the resource is already gone: nothing changed; SCIM.md §2.5
"audit noise"), as is every other failure (outcome ``failure``).

Failure policy (``fail_open``):

* **fail-closed** (default): the response is held until the events are durably in the outbox.
  If the outbox write fails, the events are sent straight to the log (within
  ``receipt_timeout``, at least 2 s); if that fails too the client gets **503** with
  ``Retry-After`` and a SCIM error, and the app's response is discarded. The SP has *already
  applied* the change at that point: a reverse proxy or middleware cannot undo it. SCIM.md
  §2.5 is explicit that a post-hoc append can fail after the SP committed, that the IdP will
  retry (and a retried create then gets 409), and that only a transactional outbox written
  inside the SP's own ``storage.operation()`` closes that gap. To bound the damage, after
  one failed write the middleware probes the outbox (an fsynced write the size of the one
  that failed) before forwarding each further write, and answers 503 *without calling the
  app* while the probe fails and the log cannot be reached directly either, so at most the
  requests in flight at the onset of the fault are applied unrecorded.
* **fail-open**: a failed write is logged at ERROR and the response passes through
  (``Tlog-Status: unrecorded``).

Only asyncio servers are supported (uvicorn, hypercorn, daphne). Events carry request data
(attribute values in ``mods``), which is why they go to a log that encrypts them per
subject; ``password`` (``secret_attrs``) is recorded only as changed, and bearer tokens only
as their SHA-256 thumbprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from client.adapters.body import BodyTooLarge, decode_body, read_request_body
from client.adapters.exchange import (
    INTENT_WAIT,
    REQUEST_ID,
    SCIM_ERROR_URN,
    TRACEPARENT,
    WRITE_METHODS,
    AuditConfig,
    Builder,
    Exchange,
    Recorded,
    SpTypes,
    default_actor,
    event_json,
    get_ci,
    header,
    ident,
    ip_text,
    log_access,
    now_ms,
    path_text,
    relative,
    rid_text,
    route,
    short_text,
    sp_types,
    validated_event,
    wants_sp_types,
    without_dot_segments,
)
from client.adapters.opsread import OpsReads
from client.adapters.outbox import (
    IntentJournal,
    IntentStalled,
    Outbox,
    OutboxError,
    OutboxRecord,
    Receipt,
)
from client.adapters.pseudonyms import PidCollector, substitute_pids
from client.adapters.receipts import RECEIPT_HEADERS, receipt_headers, wait_receipts
from client.adapters.relay import DeliveryError, Relay
from client.runtime.durable import write_error_in
from client.scim.actions import op_for_method
from client.scim.cbor import EventFormatError
from client.scim.event import uuid4_text

# AuditConfig, the hooks, event_json and RECEIPT_HEADERS are re-exported: this module is
# the adapter's entry point.
__all__ = [
    "INTENT_WAIT",
    "RECEIPT_HEADERS",
    "AuditConfig",
    "AuditMiddleware",
    "default_actor",
    "event_json",
    "log_access",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("client.adapters.middleware")
# Seconds between two looks for the journals of adapters sharing the outbox that died
# (AuditMiddleware.intent_recovery_interval).
INTENT_RECOVERY_INTERVAL = 5.0
# Threads of the log's member-pseudonym lookups (a pool of their own): a lookup may wait its
# whole deadline on a slow log, and on the loop's default executor (CPUs + 4 threads) a few
# such waits held every large body's build and the proxy's /.tlog endpoints behind them
# (red team 27: readyz answered after 17 s under 30 group writes).
PSEUDONYM_THREADS = 32
# Seconds a readiness check waits for its probe of a refusing outbox (then: not ready).
PROBE_WAIT = 10.0
# (The seconds a write waits for its write-ahead intent: AuditConfig.intent_wait, default
# INTENT_WAIT.)

# Request and response bodies up to this size are turned into events on the event loop
# (AuditMiddleware._inline); larger ones and bulk requests in a worker thread.
INLINE_BUILD_BYTES = 16 * 1024
# The SP's /ResourceTypes (AuditMiddleware._sp_types): asked within this many seconds, at
# most this many bytes of it read; what it said is kept SP_TYPES_TTL seconds, and after a
# failed read it is asked again no sooner than SP_TYPES_RETRY seconds later; at most
# SP_TYPES_VIEWS answers kept (one per host, and per host and credential where the SP
# requires credentials), the oldest dropped first.
SP_TYPES_WAIT = 5.0
SP_TYPES_MAX = 1 << 20
SP_TYPES_TTL = 300.0
SP_TYPES_RETRY = 300.0
SP_TYPES_VIEWS = 64
# The access record's reason for a /ResourceTypes read made with a request's credentials.
SP_TYPES_READ = "sp_types_read"

# --- the middleware -----------------------------------------------------------------------


class AuditMiddleware:
    """Pure ASGI middleware; see the module docstring for what it records and when.

    ``outbox`` is required (durability); ``relay`` delivers it (without one, run a
    :class:`~client.adapters.relay.Relay` on the same outbox file elsewhere). With ``own=True``
    the middleware starts the relay on ASGI lifespan startup (or the first request) and on
    shutdown drains it for up to ``drain`` seconds, stops it and closes the outbox.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: AuditConfig,
        outbox: Outbox,
        relay: Relay | None = None,
        *,
        own: bool = False,
        drain: float = 2.0,
    ) -> None:
        self.app = app
        self.config = config
        self.outbox = outbox
        self.relay = relay
        self.own = own
        self.drain = drain
        self._started = False
        self._outbox_ok = True
        self._direct_ok = False  # the last direct delivery (outbox broken) worked
        self._failed_size = 0  # bytes of the last add the outbox refused
        # Outcomes of adds and probes seen so far: a probe's success counts only if no other
        # outcome came while it ran (stall29: a readiness probe begun before a failing add
        # and ending after it said ready, and the next write was forwarded into a full disk).
        self._outcomes = 0
        self._outcome_lock = threading.Lock()
        # Why the intent journal could not be opened (None: open, or not tried yet): said by
        # readiness and status, and every write is refused (fail-closed) until it opens.
        self._journal_error: str | None = None
        # A shutdown that gave up waiting for a stalled disk (close_bounded): the process
        # should exit without waiting for its threads (``tlog scim-proxy`` does).
        self.close_unfinished = False
        self.stats = {"events": 0, "access": 0, "unrecorded": 0, "refused": 0, "recovered": 0}
        self._journal: IntentJournal | None = None  # write-ahead intents (start())
        self._intents = False  # intents are written (from start() on)
        # Complete journal lines found damaged (their check failed) when recovering.
        self.stats["intents_damaged"] = 0
        self.stats["intent_stalls"] = 0  # writes refused: their intent not written in time
        # Dead peers' journals are recovered every this many seconds while running (0: at
        # start only), by a thread of their own (_watch_orphans); one recovery at a time.
        self.intent_recovery_interval = INTENT_RECOVERY_INTERVAL
        self._recovering = threading.Lock()
        self._left_alone: set[str] = set()  # another tenant's journals, logged once
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # This process's intents whose events could not be recorded (the outbox and the log
        # both failing): recorded as unknown by the watcher once the outbox takes them
        # again (_settle_stranded), not left for the next start-up (red team 27).
        self._stranded: dict[int, None] = {}
        self._stranded_lock = threading.Lock()
        self._pid_pool: ThreadPoolExecutor | None = None  # made at the first lookup
        # The bounded reads of the backlog for status and readiness (ops_state), made at
        # the first one.
        self._ops_reads: OpsReads | None = None
        # What the SP's /ResourceTypes says (faith30: an extension's type is the SP's word,
        # never guessed from its URN), read at a create that needs it (_sp_types): by view
        # (the host, and the credential where the SP requires one) -> (until when it is
        # kept, what it said: None, not known; _SP_AUTH, the SP requires credentials).
        self._sp_views: dict[tuple[str, str], tuple[float, SpTypes | object | None]] = {}
        self._sp_lock: asyncio.Lock | None = None

    def backlog(self) -> dict[str, Any]:
        """The audit backlog, for monitoring (``tlog scim-proxy`` serves it at
        ``GET /.tlog/status``; metrics exporters can call this directly): the outbox's
        undelivered events (:meth:`Outbox.backlog`), whether the relay is healthy, how many of
        the log's answers failed the relay's receipt verification, how many receipts were
        proven included but not proven to be the event (``receipts_content_unproven``), and this
        process's counters (``events`` recorded, ``unrecorded``, ``refused``, ``access``), and
        whether a new file can be written and synced beside the outbox now
        (``disk_writable``; why not: ``disk_write_error``). Blocks while the disk holds writes.

        The write comes first: a read of the outbox may be answered from memory while its
        disk holds every write (a frozen file system: SQLite's read needs no write when a
        read mark already names the last commit), and the ops reads (:meth:`ops_state`)
        would then say the disk answers; the write is held with it, so they find the stall
        (CI saw the read answered on a frozen disk)."""
        out: dict[str, Any] = {}
        error = write_error_in(self.outbox.path.parent)
        out["disk_writable"] = error is None
        if error is not None:
            out["disk_write_error"] = error
        out.update(self.outbox.backlog())
        out["relay_healthy"] = None if self.relay is None else self.relay.healthy
        out["receipts_unverified"] = 0 if self.relay is None else self.relay.unverified
        # retries the log answered as logged before but erased since: no nonce, so their
        # content is not proven (should stay 0 but for a retry that crossed an erasure)
        out["receipts_content_unproven"] = 0 if self.relay is None else self.relay.erased_retries
        out["writes_taken"] = self.writes_taken()
        out.update(self.journal_state(reopen=True))
        out.update(self.stats)
        return out

    @property
    def ops_reads(self) -> OpsReads:
        """The bounded reads of :meth:`backlog` behind :meth:`ops_state` (one reader thread,
        started at the first read; stopped by :meth:`close`)."""
        reads = self._ops_reads
        if reads is None:
            reads = self._ops_reads = OpsReads(
                self.backlog, self._live_state, self.config.intent_wait
            )
        return reads

    def _live_state(self) -> dict[str, Any]:
        """What the ops reads lay over a reading they could not make now (a slow or stalled
        disk): the journal's state, and whether writes are taken and the relay is healthy
        as this process knows them now, without a probe (review 39: a slow disk's last
        reading, however old, said writes were taken after an add had failed since)."""
        out = self.journal_state()
        out["writes_taken"] = bool(self._outbox_ok or self._direct_ok or self.config.fail_open)
        out["relay_healthy"] = None if self.relay is None else self.relay.healthy
        return out

    async def ops_state(self) -> dict[str, Any]:
        """:meth:`backlog` for an app's status, readiness or metrics, awaited on its event
        loop without ever waiting on the outbox's disk much longer than
        ``config.intent_wait`` (what ``tlog scim-proxy``'s ``/.tlog/`` endpoints read,
        :class:`client.adapters.opsread.OpsReads`): the backlog with ``disk_stalled``
        false; on a stalled disk, at once, ``disk_stalled`` true with the reason
        (``error``) and the intent journal's state only; while a read is slow but its disk
        answers, the last reading with ``disk_slow`` true and ``reading_age_ms``. Raises
        :class:`OutboxError` when the outbox cannot be read (removed, replaced, damaged).
        :meth:`backlog` itself blocks on a stalled disk until the thaw: call it only from a
        thread that may wait that long."""
        return await self.ops_reads.state()

    def intent_journal_stalled(self) -> bool:
        """Whether the intent journal's writer has been held (a stalled disk) longer than a
        write waits for its intent: writes are refused, not applied (cheap, non-blocking)."""
        journal = self._journal
        return journal is not None and journal.stalled(self.config.intent_wait)

    def journal_state(self, *, reopen: bool = False) -> dict[str, Any]:
        """The intent journal's state: stalled, why it could not be opened
        (``intent_journal_error``, None when open), and why it takes no write until a
        restart (``intent_journal_in_doubt``, None but after a flush found in doubt).
        Non-blocking, reads nothing on disk,
        unless ``reopen`` (a worker thread: readiness) tries again to open a journal that
        failed to, so that a fixed disk is ready again before any write comes."""
        if reopen and self._journal_error is not None and self._journal is None:
            with contextlib.suppress(OutboxError):  # said below
                self._open_journal()
        journal = self._journal
        return {
            "intent_journal_stalled": self.intent_journal_stalled(),
            "intent_journal_error": self._journal_error,
            # a flush found in doubt: no write is taken until a restart (IntentJournal)
            "intent_journal_in_doubt": None if journal is None else journal.in_doubt,
            "intent_stalls": self.stats["intent_stalls"],
        }

    def _open_journal(self, *, wait: bool = True) -> IntentJournal:
        """This adapter's intent journal, opened now if it is not yet; OutboxError when it
        cannot be (kept in ``_journal_error`` for readiness, logged when it changes).
        ``wait=False`` on the event loop: refused rather than waiting behind another thread
        that is opening it (:meth:`Outbox.intents`)."""
        journal = self._journal
        if journal is not None:
            return journal
        try:
            journal = self.outbox.intents(durable=self.config.durable_intents, wait=wait)
        except OutboxError as exc:
            if self._journal_error != str(exc):
                _log.error("the write-ahead intent journal cannot be opened: %s", exc)
            self._journal_error = str(exc)
            raise
        self._journal = journal
        if self._journal_error is not None:
            _log.warning("the write-ahead intent journal is open again: writes are taken")
        self._journal_error = None
        return journal

    def _outbox_outcome(self, ok: bool, size: int = 0) -> None:
        """An add's outcome (the last one seen decides whether writes are taken)."""
        with self._outcome_lock:
            self._outcomes += 1
            self._outbox_ok = ok
            if not ok:
                self._failed_size = size

    def _probe_began(self) -> int:
        with self._outcome_lock:
            return self._outcomes

    def _probe_failed(self) -> None:
        """A probe failed: writes are not taken (an outcome as an add's)."""
        with self._outcome_lock:
            self._outcomes += 1
            self._outbox_ok = False

    def _probe_worked(self, began: int) -> bool:
        """A probe begun at outcome ``began`` worked: writes are taken again, unless an
        add or another probe ended meanwhile (then its outcome stands: which of the two
        the outbox ran last is not known here, and a write forwarded into a disk that an
        add just found full is applied without its event)."""
        with self._outcome_lock:
            if self._outcomes == began:
                self._outcomes += 1
                self._outbox_ok = True
            return self._outbox_ok

    def writes_taken(self) -> bool:
        """Whether a write would be taken now (blocking: call it from a worker thread). Not
        while fail-closed refuses writes before the SP ("not applied"): the outbox failed
        its last add (a full disk) and the log took no events directly since. The outbox is
        probed again here (an fsynced write the size of the one refused), so a proxy that
        no write reaches while it is not ready still becomes ready once the disk has room
        (red team 27: ``/.tlog/readyz`` said ready while every write was refused)."""
        if self._outbox_ok or self._direct_ok or self.config.fail_open:
            return True
        began = self._probe_began()
        try:
            # bounded: an outbox writer stuck on a stalled disk must not hold the thread
            self.outbox.probe(max(8192, self._failed_size)).result(PROBE_WAIT)
        except OutboxError:
            self._probe_failed()
            return False
        except TimeoutError:  # not an outcome: the probe may still work
            return False
        return self._probe_worked(began) or self._direct_ok

    # lifecycle

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.recover_intents()
            if self.intent_recovery_interval > 0:
                self._watcher = threading.Thread(
                    target=self._watch_orphans, name="intent-recovery", daemon=True
                )
                self._watcher.start()
            if self.relay is not None:
                self.relay.start()

    def _watch_orphans(self) -> None:
        """While running: the journals of adapters sharing the outbox that died since (their
        lock became free) are recovered as at a start-up (:meth:`recover_orphans`), every
        ``intent_recovery_interval`` seconds, so a dead peer's intents do not wait for some
        adapter on the outbox to start again."""
        while not self._watch_stop.wait(self.intent_recovery_interval):
            if self.outbox.closed:
                return  # (a middleware never closed: its outbox was)
            try:
                self.recover_orphans()
            except Exception:  # logged; tried again at the next round
                _log.exception("recovering the write-ahead intents of a dead adapter failed")
            self.settle_stranded()

    def settle_stranded(self) -> int:
        """This process's writes forwarded while neither the outbox nor the log took their
        events (a full or failing disk, the log down: fail-closed answered 503, fail-open
        ``unrecorded``) recorded as a start-up records a dead adapter's intents (outcome
        unknown, the intent's eid), as soon as the outbox takes them again: before, they
        waited for the next start, the SP's change in no event while the adapter ran on.
        Returns how many events were recorded; what the outbox refuses waits for the next
        round (each round of :meth:`_watch_orphans`)."""
        journal = self._journal
        with self._stranded_lock:
            iids, self._stranded = list(self._stranded), {}
        if journal is None or not iids:
            return 0
        n = 0
        left: list[int] = []
        for i, iid in enumerate(iids):
            doc = journal.intent(iid)
            if doc is None:
                continue  # done meanwhile
            key = f"{journal.id}:{iid}"
            try:
                records = unknown_outcome_records(self.config, doc, key)
                if records:
                    self.outbox.add(records, intent=key).result()
            except OutboxError:
                left = iids[i:]  # the outbox still refuses: the next round
                break
            except Exception as exc:  # a damaged intent: the next start-up skips it loudly
                _log.error("write-ahead intent %s could not be recorded: %s", key, exc)
                continue
            journal.done(iid)
            n += len(records)
        if left:
            with self._stranded_lock:
                self._stranded = dict.fromkeys([*left, *self._stranded])
        if n:
            self.stats["recovered"] += n
            if self.relay is not None:
                self.relay.kick()
            _log.warning(
                "recorded %d write(s) this adapter forwarded while their events could not be "
                "recorded: outcome 'warning' (whether the service provider applied them is "
                "unknown)",
                n,
            )
        return n

    def recover_intents(self) -> int:
        """Start-up: the write-ahead intents that adapters now gone (a kill, a crash, this
        one's previous run) left without a recorded answer become events whose outcome says
        the SP's answer is not known (:func:`unknown_outcome_records`), queued in the outbox
        before the relay starts; then this adapter's own journal is opened. Only journals
        whose lock is free are read: never the intents a live adapter sharing the outbox
        has in flight. Returns how many events were recovered."""
        n = self.recover_orphans()
        self._intents = True
        # Not open: tried again at each write (fail-closed refuses them) and by readiness,
        # which says why meanwhile (journal_state).
        with contextlib.suppress(OutboxError):
            self._open_journal()
        return n

    def recover_orphans(self) -> int:
        """The journals of adapters now gone (their lock free) turned into events whose
        outcome is unknown, each settled once they are in the outbox (:meth:`recover_intents`,
        at start and then periodically); returns how many events were recovered."""
        with self._recovering:
            return self._recover_orphans()

    def _recover_orphans(self) -> int:
        n = 0
        try:
            orphans = self.outbox.orphaned_intents()
        except OutboxError as exc:
            _log.error("cannot read the write-ahead intents left by a previous run: %s", exc)
            orphans = []
        for orphan in orphans:
            tenants = {doc.get("tenant", self.config.tenant) for doc in orphan.intents}
            if tenants - {self.config.tenant}:
                # Another tenant's adapter left it (the log would refuse its events under
                # this adapter's token): for an adapter of that tenant to recover.
                if orphan.ident not in self._left_alone:
                    self._left_alone.add(orphan.ident)
                    _log.error(
                        "the write-ahead intents of journal %s are of another tenant than "
                        "%r: left for an adapter of that tenant",
                        orphan.ident,
                        self.config.tenant,
                    )
                orphan.release()
                continue
            if orphan.damaged:
                self.stats["intents_damaged"] += orphan.damaged
                _log.error(
                    "journal %s: %d damaged write-ahead intent line(s) skipped (a write "
                    "they stood for, if any, has no event recorded)",
                    orphan.ident,
                    orphan.damaged,
                )
            try:
                records: list[OutboxRecord] = []
                by_key: dict[str, list[OutboxRecord]] = {}
                for doc in orphan.intents:
                    req = doc.get("req")
                    t = doc.get("t")
                    if not isinstance(req, str) or type(t) is not int:
                        _log.error(
                            "write-ahead intent %s:%s skipped: no request id or time",
                            orphan.ident,
                            doc.get("i"),
                        )
                        continue
                    key = f"{orphan.ident}:{doc.get('i')}"
                    if self.outbox.answered(req, t, key):
                        continue  # killed between the outbox commit and the journal's "done"
                    try:
                        recs = unknown_outcome_records(self.config, doc, key)
                        records.extend(recs)
                        if recs:
                            by_key[key] = recs
                    except Exception as exc:  # a damaged line, not the journal
                        # One damaged intent (a bit flipped, a field cut or foreign) is
                        # skipped, loudly: releasing the whole journal for it would leave
                        # every other intent in it unrecovered at every start-up.
                        _log.error(
                            "write-ahead intent %s:%s (request %.64r) is damaged and was "
                            "skipped, no event recorded for it: %s",
                            orphan.ident,
                            doc.get("i"),
                            req,
                            type(exc).__name__,
                        )
                # each with its intent (a kill before settle: not recovered again); queued
                # together, so committed in groups, then waited for
                futs = [self.outbox.add(recs, intent=key) for key, recs in by_key.items()]
                for fut in futs:
                    fut.result()
            except Exception:
                _log.exception("could not recover the write-ahead intents of %s", orphan.ident)
                orphan.release()  # left for the next start-up
                continue
            orphan.settle()
            if records:
                _log.warning(
                    "recovered %d write(s) that a previous run forwarded without recording "
                    "the answer: recorded with outcome 'warning' (whether the service "
                    "provider applied them is unknown)",
                    len(records),
                )
            n += len(records)
        self.stats["recovered"] += n
        return n

    def close(self) -> None:
        """Stop the relay (after draining) and close the outbox, if owned."""
        reads, self._ops_reads = self._ops_reads, None
        if reads is not None:
            reads.stop()  # (a read the disk holds ends after the thaw, not waited for)
        self._watch_stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join()
        pool, self._pid_pool = self._pid_pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # lookups end by their deadline
        if not self.own:
            return
        if self.relay is not None:
            self.relay.stop(drain=self.drain)
        self.outbox.close()

    def close_wait(self) -> float:
        """Seconds a shutdown waits for :meth:`close` (the relay's drain, then the outbox's
        and the journal's last writes): ``drain`` and twice ``intent_wait``."""
        return self.drain + 2 * self.config.intent_wait

    async def close_bounded(self) -> bool:
        """:meth:`close` in a thread of its own, waited for at most :meth:`close_wait`
        seconds; returns whether it finished. On a stalled disk it cannot (the outbox's
        and the journal's writers wait in the kernel until the thaw): this says what is
        left unflushed, that nothing acknowledged is lost and that the next start recovers
        the rest, sets :attr:`close_unfinished`, and returns, so that a shutdown never
        waits for the thaw (stall29; before, SIGTERM on a frozen disk hung the proxy)."""
        done: Future[None] = Future()

        def run() -> None:
            try:
                self.close()
            except BaseException as exc:  # said by the awaiting side
                done.set_exception(exc)
            else:
                done.set_result(None)

        closer = threading.Thread(target=run, name="audit-close", daemon=True)
        closer.start()
        bound = self.close_wait()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), bound)
        except TimeoutError:
            self.close_unfinished = True
            _log.error("%s", self._unflushed(bound))
            return False
        closer.join()  # done: it is returning
        return True

    def _unflushed(self, waited: float) -> str:
        """The shutdown's log line when the disk did not let it finish (counts only)."""
        journal = self._journal
        in_flight = 0 if journal is None else journal.in_flight()
        held = 0.0 if journal is None else journal.held_for()
        queued = self.outbox.queued()
        return (
            f"shutdown: the audit outbox's disk did not answer within {waited:g} s (stalled); "
            f"exiting without waiting for it. Left unflushed: {in_flight} write-ahead "
            f"intent(s) in flight (their writes were refused or not answered), the intent "
            f"journal's writer held for {held:.1f} s, {queued} outbox job(s) not committed. "
            "Nothing acknowledged is lost: a write is answered only once its events are "
            "committed. The next start on this outbox (once its disk answers) records each "
            "intent left as 'outcome unknown' and delivers the outbox's events"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.start()
        headers = list(scope.get("headers", ()))
        req_id = header(headers, b"x-request-id")
        generated = req_id is None or not REQUEST_ID.fullmatch(req_id)
        if generated:
            req_id = uuid4_text()  # str(uuid.uuid4()), the bytes from a pool
            headers = [(k, v) for k, v in headers if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", req_id.encode("ascii")))
        if req_id is None:  # pragma: no cover - set above
            raise AssertionError
        inner = dict(scope)
        inner["headers"] = headers
        inner.setdefault("state", {})
        method = str(scope.get("method", "")).upper()
        rel = relative(str(scope.get("path", "/")), self.config.base_path)
        if method not in WRITE_METHODS or (
            method == "POST" and rel.rstrip("/").endswith("/.search")
        ):
            await self.app(inner, receive, _echo_request_id(send, req_id))
            return
        await self._write(inner, receive, send, method, rel, req_id)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen: set[str] = set()  # the lifespan messages the wrapped app received, and sent

        async def recv() -> Message:
            msg = await receive()
            seen.add(msg["type"])
            if msg["type"] == "lifespan.startup":
                self.start()
            elif msg["type"] == "lifespan.shutdown":
                await self.close_bounded()
            return msg

        async def sent(msg: Message) -> None:
            seen.add(msg["type"])
            await send(msg)

        try:
            await self.app(scope, recv, sent)
        except Exception:
            if seen:  # the app took part in the lifespan and failed: its failure stands
                raise
            # An app refusing the lifespan scope before reading a message (``assert
            # scope["type"] == "http"``): ASGI reads that as an app without a lifespan, so
            # it is taken to its end here as for one returning at once. Before red team 21
            # the raise went to the server, which went on without a lifespan ("auto": the
            # outbox never closed, the relay never drained or stopped) or refused to start
            # ("on").
            _log.debug("the wrapped app refused the lifespan scope", exc_info=True)
        if "lifespan.shutdown" in seen or "lifespan.startup.failed" in seen:
            return
        # The wrapped app returned without taking the lifespan to its end (an app that
        # speaks only HTTP, as the bare Forwarder): the middleware answers it for its own
        # start and close. Before red team 20 the shutdown never reached close(): the
        # relay was never drained nor stopped, the outbox never closed, their threads ran
        # on (the server stopped around them).
        if "lifespan.startup" not in seen:
            if (await receive())["type"] != "lifespan.startup":
                return
            self.start()
        if "lifespan.startup.complete" not in seen:
            await send({"type": "lifespan.startup.complete"})
        if (await receive())["type"] == "lifespan.shutdown":
            await self.close_bounded()
            await send({"type": "lifespan.shutdown.complete"})

    async def _write(
        self, scope: Scope, receive: Receive, send: Send, method: str, rel: str, req_id: str
    ) -> None:
        cfg = self.config
        t0 = time.time_ns()
        try:
            body = await read_request_body(receive, cfg.max_body)
        except BodyTooLarge:
            await _send_error(send, 413, "request body too large for the audit adapter", req_id)
            self._access(rel, method, req_id, 413, "body too large")
            return
        if body is None:
            return
        trace = header(scope["headers"], b"traceparent")
        x = Exchange(
            scope,
            method,
            rel,
            req_id,
            trace if trace and TRACEPARENT.fullmatch(trace.strip()) else None,
            body,
            t0,
        )
        if (
            not self._outbox_ok
            and not cfg.fail_open
            and not self._direct_ok
            and not await self._probe()
        ):
            self.stats["refused"] += 1
            await _send_error(
                send,
                503,
                "audit outbox unavailable; the request was not applied",
                req_id,
                cfg.retry_after,
            )
            return

        iid: int | None = None
        if self._intents:
            try:
                iid = self._begin_intent(x)
                if iid is not None and self._journal is not None:
                    if _TEST_PAUSE is not None:
                        await _test_written(self._journal, iid)
                        await _test_pause("begun")  # written, not yet flushed (durable)
                    await self._intent_synced(self._journal, iid)
            except (OSError, OutboxError) as exc:
                stalled = isinstance(exc, IntentStalled)
                if stalled:
                    self.stats["intent_stalls"] += 1
                _log.error("write-ahead intent of request %s not written: %s", req_id, exc)
                if not stalled and not cfg.fail_open:
                    # The journal's disk refused the write (an I/O error, a file system gone
                    # read-only): the outbox beside it cannot be trusted either. Fail closed
                    # as after a failed add, so /.tlog/readyz says so (it probes the outbox)
                    # and writes are refused until a probe of the disk works (red team 30:
                    # every write was refused while readyz said ready). A direct delivery
                    # that worked before (an earlier failed add) no longer says writes are
                    # taken either (review 39: readiness stayed 200 until a restart).
                    self._direct_ok = False
                    self._probe_failed()
                if not cfg.fail_open:  # nothing forwarded: the client may retry
                    self._done(iid)  # (begun, not flushed: it yields nothing)
                    self.stats["refused"] += 1
                    await _send_error(
                        send,
                        503,
                        "audit intent journal stalled (its disk does not answer); the request "
                        "was not applied"
                        if stalled
                        else "audit intent journal unavailable; the request was not applied",
                        req_id,
                        cfg.retry_after,
                    )
                    return
        if _TEST_PAUSE is not None:
            await _test_pause("forward")

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        start: Message | None = None
        body_parts: list[bytes] = []
        trailers: list[Message] = []
        held = 0  # answer bytes held; beyond cfg.max_answer the app's sends fail
        too_large = False
        whole = False  # the app's last body message (more_body false) came

        async def capture(msg: Message) -> None:
            nonlocal start, held, too_large, whole
            t = msg["type"]
            if t == "http.response.start":
                start = msg
                x.t1_ns = time.time_ns()
            elif t == "http.response.body":
                whole = not msg.get("more_body", False)
                chunk = msg.get("body", b"")
                held += len(chunk)
                if too_large or held > cfg.max_answer:
                    too_large = True
                    body_parts.clear()
                    raise _AnswerTooLarge(f"answer over {cfg.max_answer} bytes")
                body_parts.append(chunk)
            else:
                trailers.append(msg)

        failure: BaseException | None = None
        try:
            await self.app(scope, replay, capture)
        except Exception as exc:
            failure = exc
        if too_large:
            failure = None  # the SP answered (and applied the change): recorded below
        if start is None:
            x.status, x.headers, x.t1_ns = 500, [], time.time_ns()
        else:
            x.status = int(start["status"]) if 100 <= int(start["status"]) <= 599 else 500
            x.headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", ())]
        broke_off = start is not None and not whole and not too_large
        if broke_off:  # the SP applied the write (or may have); what it answered is unknown
            x.answer_note = "broke off before its end: the result is unknown"
            body_parts.clear()
        x.resp_body = b"".join(body_parts)

        if _TEST_PAUSE is not None:
            await _test_pause("answered")
        if not broke_off and not too_large and await self._wants_sp_types(x):
            x.sp_types = await self._sp_types(scope, req_id)
        extra, ok = await self._record(x, iid)
        if failure is not None:
            raise failure
        if not ok:
            await _send_error(
                send,
                503,
                f"the service provider processed this request "
                f"(status {x.status}; a change may have been applied) but its "
                "audit event could not be recorded, so the answer is withheld",
                req_id,
                cfg.retry_after,
            )
            return
        if start is None:  # pragma: no cover - the app sent nothing and raised nothing
            await _send_error(send, 500, "no response from the service provider", req_id)
            return
        if too_large or broke_off:
            why = (
                f"is larger than the {cfg.max_answer} bytes the audit adapter holds"
                if too_large
                else "broke off before its end"
            )
            await _send_error(
                send,
                502,
                f"the service provider processed this request (status {x.status}) but its "
                f"answer {why}; the event was recorded",
                req_id,
            )
            return
        out_headers = list(x.headers)
        # No such header at all (the answer's header map, made once for the event).
        if x.resp_header(b"x-request-id") is None:
            out_headers.append((b"x-request-id", req_id.encode("ascii")))
        out_headers.extend(extra)
        await send({**start, "headers": out_headers})
        await send({"type": "http.response.body", "body": x.resp_body, "more_body": False})
        for msg in trailers:
            await send(msg)

    async def _sp_types(self, scope: Scope, req_id: str) -> SpTypes | None:
        """What the SP's ``/ResourceTypes`` says (:class:`SpTypes`) to this request's view:
        asked of the wrapped app (the proxy's upstream) with the request's ``Host`` and no
        credentials first (RFC 7644 §4: a client MAY use the discovery endpoints to learn
        what it needs to interact with the SP; they describe the SP, not a client's data),
        and only where the SP refuses that (401, 403) with the request's own credentials:
        another tenant's or client's view may differ, so such an answer is kept for that
        credential and host alone, and the read, an access nobody asked for made with the
        client's credentials, is recorded as an access (``on_access``, reason
        ``sp_types_read``) under the request's id. Bounded by ``SP_TYPES_WAIT``; an answer
        is kept ``SP_TYPES_TTL`` s, a failed read (None: the events say which extension
        types are not known, ``x.type_unknown``) ``SP_TYPES_RETRY`` s. Before faith31 the
        first create's credentials and host were used for every later request, the answer
        kept for the life of the process, and an app's lifespan state was not passed (an
        app needing it answered 500, and the types read as not known)."""
        host = _route(scope)
        creds = _credentials(scope)
        public = (host, "")
        now = time.monotonic()
        got = self._sp_views.get(public)
        if got is not None and now < got[0] and got[1] is not _SP_AUTH:
            return got[1] if isinstance(got[1], SpTypes) else None
        if got is not None and now < got[0] and not creds:
            return None  # credentials required, and this request has none
        mine = (host, hashlib.sha256(b"\0".join(creds)).hexdigest()) if creds else None
        if got is not None and now < got[0] and mine is not None:
            own = self._sp_views.get(mine)
            if own is not None and now < own[0]:
                return own[1] if isinstance(own[1], SpTypes) else None
        if self._sp_lock is None:
            self._sp_lock = asyncio.Lock()
        async with self._sp_lock:
            now = time.monotonic()
            got = self._sp_views.get(public)
            if got is None or now >= got[0]:
                status, types = await self._ask_types(scope, with_credentials=False)
                if status in (401, 403):
                    self._keep_view(public, SP_TYPES_TTL, _SP_AUTH)
                else:
                    self._keep_view(
                        public, SP_TYPES_TTL if types is not None else SP_TYPES_RETRY, types
                    )
                    return types
            elif got[1] is not _SP_AUTH:
                return got[1] if isinstance(got[1], SpTypes) else None
            if mine is None:
                return None
            own = self._sp_views.get(mine)
            if own is not None and now < own[0]:
                return own[1] if isinstance(own[1], SpTypes) else None
            status, types = await self._ask_types(scope, with_credentials=True)
            self._access("/ResourceTypes", "GET", req_id, status, SP_TYPES_READ)
            self._keep_view(mine, SP_TYPES_TTL if types is not None else SP_TYPES_RETRY, types)
            return types

    def _keep_view(self, key: tuple[str, str], ttl: float, got: SpTypes | object | None) -> None:
        views = self._sp_views
        views.pop(key, None)
        while len(views) >= SP_TYPES_VIEWS:
            del views[next(iter(views))]  # the oldest kept
        views[key] = (time.monotonic() + ttl, got)

    async def _ask_types(
        self, scope: Scope, *, with_credentials: bool
    ) -> tuple[int, SpTypes | None]:
        """The SP's status and :class:`SpTypes` for a ``/ResourceTypes`` read (0, None:
        it could not be read in time or at all), with the request's routing headers
        (:data:`_ROUTING_HEADERS`) and, ``with_credentials``, its credentials
        (:func:`_is_credential`)."""
        try:
            read = self._read_types(scope, with_credentials)
            return await asyncio.wait_for(read, SP_TYPES_WAIT)
        except Exception as exc:  # an SP that cannot answer it: the types not known
            _log.warning("the SP's /ResourceTypes could not be read: %s", type(exc).__name__)
            return 0, None

    async def _read_types(self, scope: Scope, with_credentials: bool) -> tuple[int, SpTypes | None]:
        path = self.config.base_path + "/ResourceTypes"
        headers = [
            (k, v)
            for k, v in scope.get("headers", ())
            if bytes(k).lower() in _ROUTING_HEADERS
            or (with_credentials and _is_credential(bytes(k).lower()))
        ]
        headers.append((b"accept", b"application/scim+json, application/json"))
        inner = {
            **scope,
            "method": "GET",
            "path": path,
            "raw_path": path.encode("ascii", "replace"),
            "query_string": b"",
            "headers": headers,
        }
        state = scope.get("state")
        if isinstance(state, Mapping):
            # the request's own copy of the app's lifespan state (ASGI's lifespan state:
            # each request gets a shallow copy), copied again so that the read changes none
            inner["state"] = dict(state)
        status = 0
        parts: list[bytes] = []
        held = 0

        asked = False

        async def receive() -> Message:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # no disconnect: bounded by SP_TYPES_WAIT
            raise AssertionError("unreachable")  # pragma: no cover

        async def send(msg: Message) -> None:
            nonlocal status, held
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            elif msg["type"] == "http.response.body":
                chunk = bytes(msg.get("body", b""))
                held += len(chunk)
                if held > SP_TYPES_MAX:
                    raise _AnswerTooLarge(f"/ResourceTypes over {SP_TYPES_MAX} bytes")
                parts.append(chunk)

        await self.app(inner, receive, send)
        if status != 200:
            _log.warning("the SP answered /ResourceTypes with status %d", status)
            return status, None
        got = sp_types(b"".join(parts))
        if got is None:
            _log.warning("the SP's /ResourceTypes names no resource type")
        return status, got

    def _access(self, rel: str, method: str, req_id: str, status: int, reason: str) -> None:
        rec = {
            "ts": now_ms(),
            "req": req_id,
            "m": method,
            "p": rel,
            "st": status,
            "reason": reason,
            "tenant": self.config.tenant,
            "sp": self.config.sp_id,
        }
        self._emit_access([rec])

    def _emit_access(self, records: Sequence[Mapping[str, Any]]) -> None:
        hook = self.config.on_access
        self.stats["access"] += len(records)
        if hook is None:
            return
        for rec in records:
            try:
                hook(rec)
            except Exception:
                _log.exception("on_access hook failed")

    async def _probe(self) -> bool:
        began = self._probe_began()
        try:
            await asyncio.wrap_future(self.outbox.probe(max(8192, self._failed_size)))
        except OutboxError:
            self._probe_failed()
            return False
        return self._probe_worked(began)

    def _build(self, x: Exchange, ref_pid: Callable[[str, str], bytes] | None) -> Recorded:
        b = Builder(self.config, x, ref_pid)
        return b.bulk() if x.target(self.config).kind == "bulk" else b.single()

    @staticmethod
    def _outbox_records(x: Exchange, rec: Recorded) -> list[OutboxRecord]:
        """The events' outbox records: their JSON forms as validated when built, or
        :func:`event_json` for an event changed since (pseudonyms substituted)."""
        texts, canon = rec.texts, rec.canon
        out = []
        for e in rec.events:
            eid = str(e["eid"])
            text = texts.get(eid)
            if text is None:
                out.append(OutboxRecord(eid, x.req_id, event_json(e)))
            else:
                out.append(OutboxRecord(eid, x.req_id, text, canon.get(eid)))
        return out

    def _build_records(
        self, x: Exchange, ref_pid: Callable[[str, str], bytes] | None
    ) -> tuple[Recorded, list[OutboxRecord] | None]:
        """Build the events and, unless placeholders wait for pseudonyms, their outbox
        records too: one worker-thread hop for the common request."""
        rec = self._build(x, ref_pid)
        if isinstance(ref_pid, PidCollector) and ref_pid.pairs:
            return rec, None
        return rec, self._outbox_records(x, rec)

    def _inline(self, x: Exchange) -> bool:
        """Whether building this exchange's events is small enough to run on the event loop.

        A single resource write with bodies of a few KiB (the common SCIM write; not under a
        content coding, which may inflate a few KiB into megabytes) builds in a
        fraction of a millisecond of pure CPU, about what handing it to a worker thread and
        back costs; bulk requests and larger bodies (a PATCH adding thousands of members)
        are built in a worker thread so that they never hold up other requests. Member
        pseudonyms are resolved in a worker thread either way (they ask the log)."""
        return (
            len(x.body) <= INLINE_BUILD_BYTES
            and len(x.resp_body) <= INLINE_BUILD_BYTES
            and not _coded(x.req_header(b"content-encoding"))
            and not _coded(x.resp_header(b"content-encoding"))
            and x.target(self.config).kind != "bulk"
        )

    async def _wants_sp_types(self, x: Exchange) -> bool:
        """:func:`wants_sp_types`, which may decode the answer: on the event loop where the
        events would be built there (:meth:`_inline`), else in a worker thread (review 40b:
        a 4 MiB answer, or a gzip one, naming an extension held the loop ~160 ms)."""
        if self._inline(x):
            return wants_sp_types(x, self.config)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, wants_sp_types, x, self.config)

    async def _events(self, x: Exchange) -> tuple[Recorded, list[OutboxRecord]]:
        """Build the events and their outbox records (see :meth:`_inline` for where); member
        pseudonyms in one batched call.

        With a ``ref_pid`` that can resolve in batches (``resolve``, as
        :class:`~client.adapters.pseudonyms.LogPseudonyms`), the events are built once with
        placeholders, every referenced subject is resolved in one call (in a worker thread),
        and the placeholders are replaced. A plain ``ref_pid`` (which may block) is called
        from a worker thread.
        """
        ref_pid = self.config.ref_pid
        resolve = getattr(ref_pid, "resolve", None)
        inline = self._inline(x)
        if ref_pid is None or not callable(resolve):
            if inline and ref_pid is None:
                rec, records = self._build_records(x, None)
            else:
                loop = asyncio.get_running_loop()
                rec, records = await loop.run_in_executor(None, self._build_records, x, ref_pid)
        else:
            collector = PidCollector()
            if inline:
                rec, records = self._build_records(x, collector)
            else:
                loop = asyncio.get_running_loop()
                rec, records = await loop.run_in_executor(None, self._build_records, x, collector)
            if records is None:
                # (asked here, not per write: get_running_loop makes a getpid system call)
                loop = asyncio.get_running_loop()
                try:
                    pool = self._pid_pool
                    if pool is None:
                        pool = self._pid_pool = ThreadPoolExecutor(
                            PSEUDONYM_THREADS, thread_name_prefix="tlog-pseudonyms"
                        )
                    real = await loop.run_in_executor(pool, resolve, list(collector.pairs))
                except EventFormatError as exc:
                    _log.error("member pseudonyms unavailable for request %s: %s", x.req_id, exc)
                    rec, records = await loop.run_in_executor(
                        None, self._build_records, x, _pids_unavailable
                    )
                else:
                    substitute_pids(rec.events, collector.placeholders(real))
                    rec.texts.clear()  # the placeholders' texts: stale now
                    rec.canon.clear()
                    records = None
        if records is None:
            if inline:
                records = self._outbox_records(x, rec)
            else:
                records = await asyncio.get_running_loop().run_in_executor(
                    None, self._outbox_records, x, rec
                )
        return rec, records

    def _begin_intent(self, x: Exchange) -> int | None:
        """Append the write-ahead intent of a write about to be forwarded (None: a request
        that can yield no event). Raises OSError or OutboxError when the journal cannot be
        written."""
        doc = intent_doc(self.config, x)
        if doc is None:
            return None
        # not opened at start-up: tried again (OutboxError: refused, 503)
        return self._open_journal(wait=False).begin(doc, wait=False)

    async def _intent_synced(self, journal: IntentJournal, iid: int) -> None:
        """Wait, off the loop, until intent ``iid`` is in the journal (written by its
        thread; with durable intents on disk, shared flushes: :meth:`IntentJournal.synced`),
        at most ``config.intent_wait`` seconds (then :class:`IntentStalled`). A wait
        cancelled (the client went away) forwards nothing: the intent is done."""
        try:
            await journal.synced(iid, self.config.intent_wait)
        except asyncio.CancelledError:
            self._done(iid)
            raise

    def _intent_key(self, iid: int | None) -> str | None:
        """The name of intent ``iid`` kept with its events in the outbox (as recovery
        names it: ``<journal>:<number>``)."""
        if iid is None or self._journal is None:
            return None
        return f"{self._journal.id}:{iid}"

    def _done(self, iid: int | None, *, recorded: bool = False) -> None:
        if iid is not None and self._journal is not None:
            self._journal.done(iid, wait=False, recorded=recorded)

    async def _record(
        self, x: Exchange, iid: int | None = None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Build and store the events; return the receipt headers and whether it worked.
        The write-ahead intent ``iid`` is done once the events are recorded (or there are
        none); left undone (not recorded), the next start-up records it as unknown."""
        try:
            rec, records = await self._events(x)
        except Exception:
            _log.exception("could not build the audit event of request %s", x.req_id)
            return self._unrecorded([], iid)
        self._emit_access(rec.access)
        if not records:
            self._done(iid)
            return [], True
        eids = [r.eid for r in records]
        waiting = self.relay is not None and self.config.receipt_timeout > 0
        futs = self.relay.watch(eids) if waiting and self.relay is not None else []
        try:
            try:
                await self.outbox.add_async(records, self._intent_key(iid))
            except OutboxError as exc:
                self._outbox_outcome(False, sum(len(r.body) for r in records))
                _log.error("audit outbox write failed for request %s: %s", x.req_id, exc)
                return await self._direct(records, iid)
            self._done(iid, recorded=True)  # (its events in the outbox under its key)
            self._outbox_outcome(True)
            self._direct_ok = False
            self.stats["events"] += len(records)
            receipts: dict[str, Receipt] = {}
            if self.relay is not None:
                self.relay.kick()
                if self.config.receipt_timeout > 0 and self.relay.healthy:
                    receipts = await wait_receipts(futs, self.config.receipt_timeout)
            return receipt_headers(eids, receipts), True
        finally:
            if waiting and self.relay is not None:
                self.relay.unwatch(eids)

    async def _direct(
        self, records: list[OutboxRecord], iid: int | None = None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        eids = [r.eid for r in records]
        # Fail-open does not make every request wait on a log that is known to be down.
        if self.relay is not None and (not self.config.fail_open or self.relay.healthy):
            timeout = max(self.config.receipt_timeout, self.config.direct_timeout)
            loop = asyncio.get_running_loop()
            try:
                got = await loop.run_in_executor(None, self.relay.deliver_now, records, timeout)
            except DeliveryError as exc:
                self._direct_ok = False
                _log.error("direct delivery to the log failed too: %s", exc)
            else:
                self._direct_ok = True
                self._done(iid)
                self.stats["events"] += len(records)
                return receipt_headers(eids, {r.eid: r for r in got}), True
        return self._unrecorded(eids, iid)

    def _unrecorded(
        self, eids: Sequence[str], iid: int | None = None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        self.stats["unrecorded"] += max(1, len(eids))
        if iid is not None:
            with self._stranded_lock:
                self._stranded[iid] = None
        if self.config.fail_open:
            _log.error("fail-open: passing a SCIM response through with its audit event lost")
            return [(b"tlog-status", b"unrecorded")], True
        return [], False


def _coded(content_encoding: str | None) -> bool:
    """A body under a content coding: its wire size says nothing of what reading it costs."""
    return content_encoding is not None and content_encoding.strip().lower() not in ("", "identity")


def _pids_unavailable(rt: str, ref_id: str) -> bytes:
    raise EventFormatError("member pseudonyms unavailable (the log did not answer)")


def _echo_request_id(send: Send, req_id: str) -> Send:
    async def wrapped(msg: Message) -> None:
        if msg["type"] == "http.response.start":
            headers = list(msg.get("headers", ()))
            if not any(bytes(k).lower() == b"x-request-id" for k, _ in headers):
                headers.append((b"x-request-id", req_id.encode("ascii")))
                msg = {**msg, "headers": headers}
        await send(msg)

    return wrapped


# The request headers that carry a client's credentials (AuditMiddleware._sp_types).
_CRED_HEADERS = (b"authorization", b"cookie")
# The headers that say which view of the SP a request is routed to, sent with every
# /ResourceTypes read and naming its kept view. Every other X-Forwarded-* header is taken as
# a credential (review 40b: oauth2-proxy's X-Forwarded-Access-Token, -User, -Email,
# -Groups; Envoy's X-Forwarded-Client-Cert): sent only with the credentialed read.
_ROUTING_HEADERS = (
    b"host",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
)
# A view of /ResourceTypes the SP refused without credentials (401, 403).
_SP_AUTH = object()


def _is_credential(name: bytes) -> bool:
    """Whether header ``name`` (lower case) says who the client is (:data:`_CRED_HEADERS`,
    and every ``X-Forwarded-*`` but the routing ones)."""
    return name in _CRED_HEADERS or (
        name.startswith(b"x-forwarded-") and name not in _ROUTING_HEADERS
    )


def _credentials(scope: Scope) -> tuple[bytes, ...]:
    """The request's credential headers (:func:`_is_credential`), name and value, in order."""
    return tuple(
        bytes(k).lower() + b":" + bytes(v)
        for k, v in scope.get("headers", ())
        if _is_credential(bytes(k).lower())
    )


def _route(scope: Scope) -> str:
    """The request's view of the SP, as its routing headers (:data:`_ROUTING_HEADERS`) say:
    what a kept ``/ResourceTypes`` answer is kept for (review 40b: kept per ``Host`` alone,
    a client's ``X-Forwarded-Host`` fixed the view of every client of that host)."""
    return "\0".join(
        bytes(k).lower().decode("latin-1") + "=" + bytes(v).decode("latin-1")
        for k, v in scope.get("headers", ())
        if bytes(k).lower() in _ROUTING_HEADERS
    )


class _AnswerTooLarge(Exception):
    """Raised into the app's ``send``: its answer to a write is over ``max_answer``."""


async def _send_error(
    send: Send, status: int, detail: str, req_id: str, retry_after: int | None = None
) -> None:
    body = json.dumps(
        {"schemas": [SCIM_ERROR_URN], "status": str(status), "detail": detail}
    ).encode()
    headers = [
        (b"content-type", b"application/scim+json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", req_id.encode("ascii")),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --- write-ahead intents ------------------------------------------------------------------

# Test-only (tests/adapters/test_intent11_*.py): "<point>:<file>" makes every write stop at
# <point> ("forward": its intent written, not yet forwarded; "answered": the SP answered,
# nothing recorded yet), create <file> and wait there for good, so that a test can kill the
# process at that exact point. Inert unless set; read once, at import. Never set it in use.
_TEST_PAUSE = os.environ.get("TLOG_TEST_PAUSE") or None

_UNKNOWN_REASON = (
    "the adapter stopped after forwarding this write and before recording the service "
    "provider's answer: whether the write was applied is unknown"
)
_UNKNOWN_ANSWER = (
    "none recorded: recovered at start-up from the adapter's write-ahead intent "
    "(res.st is not the service provider's)"
)
_MAX_BULK_INTENT_OPS = 1000


async def _test_written(journal: IntentJournal, iid: int) -> None:  # pragma: no cover
    """The "begun" pause comes once the intent is written by the journal's thread."""
    assert _TEST_PAUSE is not None
    if _TEST_PAUSE.startswith("begun:"):
        for _ in range(10000):
            if journal.written(iid):
                return
            await asyncio.sleep(0.001)


async def _test_pause(point: str) -> None:  # pragma: no cover - run in killed subprocesses
    assert _TEST_PAUSE is not None
    want, _, path = _TEST_PAUSE.partition(":")
    if want != point:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(point + "\n")
    await asyncio.sleep(3600)


def intent_doc(cfg: AuditConfig, x: Exchange) -> dict[str, Any] | None:
    """The write-ahead intent of a write (before it is forwarded): what the event that says
    "the answer is not known" needs, and no more than an event carries to the log (the
    request digest, not the body; the credential's thumbprint, not the credential). None
    for a request that can yield no event (discovery, search, no resource id). Kept cheap
    (it is on every write's path): what can wait is done at recovery (the event's ``eid``,
    ``src`` normalised, the path read)."""
    target = x.target(cfg)
    kind = target.kind
    if kind not in ("resource", "bulk", "unknown"):
        return None
    if kind != "bulk" and x.method != "POST" and target.rid is None and not target.me:
        return None  # PUT/PATCH/DELETE without an id: an access record, never an event
    actor = x.credential()
    tok_d = actor.get("tok_d")
    if tok_d is not None:
        actor = {"kind": actor["kind"], "tok_d": tok_d.hex()}
    doc: dict[str, Any] = {
        "t": x.t0_ns // 1_000_000,
        "tenant": cfg.tenant,
        "req": x.req_id,
        "m": x.method,
        "p": x.rel,
        "dig": x.body_digest().hex(),
        "len": len(x.body),
        "actor": actor,
    }
    if kind != "bulk" and target.rid is not None:
        doc["rid"] = target.rid  # routed from the raw path, which "p" (decoded) is not
        raw = x.raw_rel(cfg)
        if raw is not None and raw != x.rel:
            # the path as sent, so recovery routes its type as the request was routed
            # (red team 24: "p" routed again named User a for /Users%2Fx/a)
            doc["r"] = raw
    if x.trace:
        doc["trace"] = x.trace
    if_match = x.req_header(b"if-match")
    if if_match:
        doc["im"] = if_match
    if cfg.record_src:  # raw here, normalised at recovery as Builder.src does
        ip: str | None = None
        if cfg.trust_forwarded:
            fwd = x.req_header(b"x-forwarded-for")
            if fwd:
                ip = fwd.split(",")[0].strip()
        client = x.scope.get("client")
        if ip is None and client:
            ip = str(client[0])
        if ip:
            doc["ip"] = ip[:256]
        ua = x.req_header(b"user-agent")
        if ua:
            doc["ua"] = ua[:4096]
    if kind == "bulk":
        ops = _bulk_ops(cfg, x)
        if ops is None:
            return None  # not a bulk request: an access record, never an event
        doc["ops"] = ops
    return doc


def _recovered_src(doc: Mapping[str, Any]) -> dict[str, str] | None:
    """``src`` as :meth:`client.adapters.exchange.Builder.src` makes it, from the raw
    values of the intent."""
    out: dict[str, str] = {}
    ip = doc.get("ip")
    if isinstance(ip, str):
        norm = ip_text(ip)
        if norm is not None:
            out["ip"] = norm
    ua = doc.get("ua")
    if isinstance(ua, str) and ua:
        text = short_text(ua, 1024)
        if text:
            out["ua"] = text
    return out or None


def derived_eid(key: str) -> str:
    """A UUID (version 8, RFC 9562) that is a function of ``key``: a recovered event's eid,
    the same at every recovery of the same intent (so deduplicated by eid)."""
    b = bytearray(hashlib.sha256(key.encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _bulk_ops(cfg: AuditConfig, x: Exchange) -> list[dict[str, Any]] | None:
    """A bulk request's operations (method, path, bulkId, version), read as the event
    builder reads the body; None when it is not a bulk request."""
    got = decode_body(
        x.body,
        content_type=x.req_header(b"content-type"),
        content_encoding=x.req_header(b"content-encoding"),
        max_size=cfg.max_body,
    )
    req = got.value if got.ok else None
    ops = get_ci(req, "operations") if isinstance(req, dict) else None
    if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
        return None
    out: list[dict[str, Any]] = []
    for seq, op in enumerate(ops[:_MAX_BULK_INTENT_OPS]):
        path = get_ci(op, "path")
        entry: dict[str, Any] = {
            "s": seq,
            "m": str(get_ci(op, "method") or "").upper(),
            "p": path if isinstance(path, str) else "",
        }
        bulk_id = get_ci(op, "bulkid")
        if isinstance(bulk_id, str):
            entry["b"] = bulk_id
        version = get_ci(op, "version")
        if isinstance(version, str):
            entry["v"] = version
        out.append(entry)
    return out


def unknown_outcome_records(
    cfg: AuditConfig, doc: Mapping[str, Any], key: str
) -> list[OutboxRecord]:
    """The events of a write-ahead intent whose answer was never recorded: outcome
    ``warning``, ``err.code`` ``unknown`` (the service forgets what it knew of the
    resource's state, as for any ``warning``), the request's digest, method, path, actor and
    request id, ``ts`` the time the request came in, ``x.answer`` saying that no answer was
    recorded and ``res.st`` 500 standing for none. ``key`` names the intent (its journal and
    number): each event's ``eid`` is derived from it (:func:`derived_eid`), so recovering
    twice yields the same events (the outbox and the log deduplicate by ``eid``). One event
    per write operation of a bulk request."""
    method = str(doc["m"])
    req_id = str(doc["req"])
    actor = dict(doc["actor"])
    if isinstance(actor.get("tok_d"), str):
        actor["tok_d"] = bytes.fromhex(actor["tok_d"])
    sp: dict[str, Any] = {"id": cfg.sp_id}
    if cfg.sp_base:
        sp["base"] = cfg.sp_base
    common: dict[str, Any] = {
        "tenant": cfg.tenant,
        "sp": sp,
        "ts": int(doc["t"]),
        "idp": dict(cfg.idp) if cfg.idp else None,
        "src": _recovered_src(doc),
        "ocsf": cfg.ocsf,
        "actor": actor,
        "res": {"st": 500},
        "outcome": "warning",
        "err": {"code": "unknown", "reason": _UNKNOWN_REASON},
        "x": {"answer": _UNKNOWN_ANSWER},
    }
    req: dict[str, Any] = {"dig": bytes.fromhex(str(doc["dig"])), "len": int(doc["len"])}
    corr: dict[str, Any] = {"req": req_id}
    if isinstance(doc.get("trace"), str):
        corr["trace"] = doc["trace"]
    out: list[OutboxRecord] = []
    ops = doc.get("ops")
    if isinstance(ops, list):
        for op in ops:
            m = str(op.get("m", "")).upper()
            if m not in WRITE_METHODS:
                continue  # not a write: an access record at most
            path = str(op.get("p", ""))
            routed_path = without_dot_segments(path, encoded=True)
            target = route(relative(routed_path, cfg.base_path), m, cfg, encoded=True)
            op_rid = None if m == "POST" else target.rid  # as the builder reads it
            if op_rid is None and m != "POST":
                continue  # no resource to name: the builder records no event either
            version = op.get("v")
            version = version if isinstance(version, str) and ident(version, 256) else None
            op_req = {"m": m, "p": path_text(path), **req}
            if version:
                op_req["if_match"] = version
            seq = int(op.get("s", 0))
            op_corr = {**corr, "bulk_req": req_id, "seq": seq}
            bulk_id = op.get("b")
            if isinstance(bulk_id, str) and ident(bulk_id, 256):
                op_corr["bulk_id"] = bulk_id
            fields = {
                **common,
                "eid": derived_eid(f"{key}:{seq}"),
                "op": op_for_method(m),
                "rt": target.rt or "unknown",
                "rid": None if op_rid is None else rid_text(op_rid),
                "ver": {"pre": version if version and version != "*" else None},
                "corr": op_corr,
                "req": op_req,
            }
            ev, text = validated_event(**fields)
            out.append(OutboxRecord(str(ev["eid"]), req_id, text))
        return out
    rel = str(doc["p"])
    # The path as sent where the intent kept it (red team 24), routed as the request was;
    # else the id the intent was routed to (red team 22: from the raw path, which "p" is
    # not); an intent written before either names none, its decoded path routed as then.
    raw = doc.get("r")
    if isinstance(raw, str):
        target = route(raw, method, cfg, encoded=True)
        routed = target.rid
    else:
        target = route(rel, method, cfg)
        routed = doc["rid"] if isinstance(doc.get("rid"), str) else target.rid
    op_name = op_for_method(method)
    rid: str | None = None
    if op_name != "create":
        rid = "Me" if target.me else (None if routed is None else rid_text(routed))
        if rid is None:
            return out
    single_req = {"m": method, "p": path_text(rel), **req}
    im = doc.get("im")
    pre = None
    if isinstance(im, str) and ident(im, 1024):
        single_req["if_match"] = im
        if im.strip() != "*" and ident(im, 256):
            pre = im
    fields = {
        **common,
        "eid": derived_eid(key),
        "op": op_name,
        "rt": target.rt or "unknown",
        "rid": rid,
        "ver": {"pre": pre},
        "corr": corr,
        "req": single_req,
    }
    ev, text = validated_event(**fields)
    out.append(OutboxRecord(str(ev["eid"]), req_id, text))
    return out
