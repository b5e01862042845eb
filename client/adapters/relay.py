"""The relay: delivers queued events from an :class:`~client.adapters.outbox.Outbox` to the log.

One background thread takes the oldest pending events (up to 1000 and ``max_batch_bytes``,
never cutting one write's events apart: a split request's parts reach the log in one batch,
which it commits whole), sends them with ``POST /v1/scim/events/batch`` and marks each one
delivered by ``eid`` with the log's receipt. Delivery is at-least-once; the log
deduplicates by ``eid`` (a retried ``eid`` gets its original index back), so a crash or a
lost answer never makes a second leaf.

Failure handling, by what the log answered:

* network error, timeout, 5xx: exponential backoff with jitter (``backoff_min`` doubling up
  to ``backoff_max``); nothing is dropped;
* 503 or 429: wait ``Retry-After`` (seconds or HTTP date, capped at ``backoff_max``);
* 413: the batch is split in halves;
* 400/422 (the log refuses an event as malformed): the batch is bisected to find the
  offending event, which is moved out of the queue as *rejected* (kept in the outbox, logged
  at ERROR) so that it cannot block every event behind it; only the log's own JSON error
  (``{"error": ...}``) counts as that verdict: a 400/413/422 without it (a front proxy's or
  WAF's page) rejects nothing (a 413 still halves the batch, to fit a front proxy's body
  limit; the rest is a failed delivery, retried with backoff);
* 401/403: the token is wrong or lacks the role: logged at ERROR, backoff, events kept;
* 200 whose receipts do not verify under the log's key (``log_key``; see
  :class:`~client.adapters.receipts.ReceiptVerifier`: signature, rollback or fork, index,
  inclusion of each leaf hash in the signed tree): nothing is marked delivered; logged at
  ERROR (what failed, no identifiers), counted in :attr:`Relay.unverified`, backoff, the
  events are sent again. A log that cannot be asked for the tiles to check with is a failed
  delivery like any other.

Without ``log_key`` the relay believes the log's answers unchecked (a WARNING says so at
start) unless ``trust_on_first_use``: then it pins the key the log names in ``GET /v1/log``
on its first contact, once the log's ``/checkpoint`` verifies under it (a WARNING names the
key), and verifies every answer after that under it.

The batch POST goes over one kept-alive connection of :mod:`client.net.lean` (the same
deadline, size bound, TLS context and error model as :class:`~client.net.core.HTTPCore`, a
fraction of httpx's CPU); the other requests (tiles, the key on first use), a test's
transport, and a POST while that connection is busy go through httpx.

When woken by new events it lingers ``linger`` seconds (default 50 ms) before reading the
queue, unless a request is waiting for a receipt, so that bursts travel as one batch. The
relay never raises into its caller; :attr:`Relay.healthy` says whether the last attempt
reached the log.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import httpx

from client.adapters.outbox import (
    Canonical,
    Outbox,
    OutboxError,
    OutboxRecord,
    Pending,
    Receipt,
)
from client.adapters.receipts import Commit, ReceiptVerifier, StoredActor, check_commitments
from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Verifier, FormatError, b64decode_strict
from client.net.core import Answer, HTTPCore, HTTPFailure, Unreachable, retry_after
from client.net.lean import LeanPoster, lean_url
from client.net.logclient import LogClient
from client.scim.leaf import NONCE_SIZE

__all__ = ["BATCH_PATH", "MAX_BATCH", "DeliveryError", "Relay"]

_log = logging.getLogger("client.adapters.relay")

BATCH_PATH = "/v1/scim/events/batch"
MAX_BATCH = 1000  # the log's limit per batch request
ANSWER_LIMIT = 8 << 20  # bytes of a batch answer (1,000 receipts are ~200 KB)


class DeliveryError(Exception):
    """The log did not take the events (unreachable, overloaded, refused)."""


class _Backoff(Exception):
    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay


class _Unverified(_Backoff):
    """The log answered 200, but its receipts do not verify: evidence against the log."""


def _halve(items: Sequence[Pending]) -> int:
    """Where to cut ``items`` in two (a batch the log refused): at the boundary between two
    writes nearest the middle, so that one write's linked parts stay in one batch
    (:meth:`Outbox.pending`); the middle when the batch is one write's events."""
    mid = len(items) // 2
    cuts = [i for i in range(1, len(items)) if items[i].write != items[i - 1].write]
    return min(cuts, key=lambda i: abs(i - mid)) if cuts else mid


def _batch_body(bodies: Sequence[str]) -> bytes:
    # The bodies are event JSON produced by event_to_json: splicing them is exact JSON.
    return ('{"events":[' + ",".join(bodies) + "]}").encode("utf-8")


def _stored_actor(got: object) -> StoredActor | None:
    """The answer's ``actor`` (how the log stored the event's actor), if any."""
    if got is None:
        return None
    if not isinstance(got, dict) or not {"pid", "sd"} <= set(got) <= {"pid", "sd", "nonce"}:
        raise ValueError("malformed stored actor")
    an = got.get("nonce")
    return (
        b64decode_strict(got["pid"], size=16),
        b64decode_strict(got["sd"], size=32),
        None if an is None else b64decode_strict(an, size=32),
    )


def _parse_results(data: Any, eids: Sequence[str]) -> tuple[list[Receipt], dict[str, Commit]]:
    """The receipts of a batch answer, and each event's leaf and commitment nonce (the
    nonce None where the answer has none: see :func:`check_commitments`)."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError("batch answer without 'results'")
    tree_size, checkpoint = data.get("tree_size"), data.get("checkpoint")
    if type(tree_size) is not int or not isinstance(checkpoint, str):
        raise ValueError("batch answer without tree_size/checkpoint")
    wanted = set(eids)
    out: list[Receipt] = []
    commits: dict[str, Commit] = {}
    for item in data["results"]:
        if not isinstance(item, dict):
            raise ValueError("malformed result item")
        eid, index, lh = item.get("eid"), item.get("index"), item.get("leaf_hash")
        if eid not in wanted or type(index) is not int or not isinstance(lh, str):
            raise ValueError("result item for an unknown eid or without index/leaf_hash")
        leaf, nonce = item.get("leaf"), item.get("nonce")
        if isinstance(leaf, str) and (nonce is None or isinstance(nonce, str)):
            commits[eid] = (
                b64decode_strict(leaf),
                None if nonce is None else b64decode_strict(nonce, size=NONCE_SIZE),
                _stored_actor(item.get("actor")),
            )
        out.append(
            Receipt(
                eid=str(eid),
                index=index,
                leaf_hash=lh,
                tree_size=tree_size,
                checkpoint=checkpoint,
                duplicate=bool(item.get("duplicate")),
            )
        )
    return out, commits


def _log_error(r: Answer) -> bool:
    """The answer is the log's own refusal: a JSON object with an ``error`` text."""
    try:
        doc = r.json()
    except FormatError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str)


class Relay:
    """Background delivery of an outbox to a log (see the module docstring).

    ``log_url`` is the log's base URL and ``token`` a submitter token bound to the events'
    tenant. It talks to the log through the shared :class:`client.net.core.HTTPCore` (bounded
    answers, one error model); ``transport`` is for tests (e.g. an ``httpx.MockTransport``).
    Safe for concurrent use; :meth:`start` and :meth:`stop` are idempotent.
    """

    def __init__(
        self,
        outbox: Outbox,
        log_url: str,
        token: str,
        *,
        batch_size: int = MAX_BATCH,
        max_batch_bytes: int = 8 << 20,
        timeout: float = 10.0,
        backoff_min: float = 0.1,
        backoff_max: float = 30.0,
        idle: float = 1.0,
        linger: float = 0.05,
        prune_every: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        log_key: str | Ed25519Verifier | None = None,
        trust_on_first_use: bool = False,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
        self.outbox = outbox
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.idle = idle
        self.linger = linger
        self.prune_every = prune_every
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._core = HTTPCore(
            log_url,
            httpx.Client(timeout=timeout, transport=transport) if transport else None,
            timeout=timeout,
            headers=headers,
        )
        # The batch POST on one kept-alive http.client connection (client.net.lean: the
        # same bounds, a fraction of httpx's CPU); a test's transport keeps httpx.
        self._lean: LeanPoster | None = None
        if transport is None and lean_url(log_url) is not None:
            tls = httpx.create_ssl_context() if log_url.lower().startswith("https:") else None
            self._lean = LeanPoster(log_url, timeout=timeout, headers=headers, context=tls)
        self._log_url = log_url
        self._timeout = timeout
        self._tofu = trust_on_first_use and log_key is None
        self._verifier: ReceiptVerifier | None = None
        self._pin_lock = threading.Lock()
        self._log: LogClient | None = None
        self.log_key: str | None = None
        if log_key is not None:
            self._pin(log_key)
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Future[Receipt]]] = {}
        self._failures = 0
        self._healthy = True
        self._down_since = ""  # when the current run of failed deliveries began (UTC)
        self.delivered = 0  # events delivered by this relay (duplicates included)
        self.attempts = 0  # batch requests sent
        self.unverified = 0  # batch answers whose receipts did not verify (none marked)
        # retries answered without a nonce (their bodies erased since): inclusion only
        self.erased_retries = 0
        self.last_error = ""

    # --- the log's key -----------------------------------------------------------------------

    def _pin(self, key: str | Ed25519Verifier) -> None:
        verifier = key if isinstance(key, Ed25519Verifier) else Ed25519Verifier.from_vkey(key)
        # Shares the relay's HTTP client (tile reads are public: no token is sent).
        self._log = LogClient(self._log_url, verifier, http=self._core.http, timeout=self._timeout)
        self._verifier = ReceiptVerifier(self._log.verify_note, self._log.fetch_tile)
        self.log_key = verifier.vkey()

    def _first_use(self) -> None:
        """Trust on first use: pin the key the log names once its checkpoint verifies."""
        with self._pin_lock:
            if self._verifier is not None:
                return
            try:
                info = self._core.send("GET", "/v1/log", limit=1 << 20).json()
                vkey = info.get("vkey") if isinstance(info, dict) else None
                if not isinstance(vkey, str):
                    raise FormatError("GET /v1/log names no vkey")
                verifier = Ed25519Verifier.from_vkey(vkey)
                LogClient(
                    self._log_url, verifier, http=self._core.http, timeout=self._timeout
                ).checkpoint()
            except (HTTPFailure, FormatError, VerificationError, ValueError) as exc:
                raise _Backoff(
                    self._next_backoff(), f"cannot pin the log's key on first use: {exc}"
                ) from None
            self._pin(verifier)
            _log.warning(
                "trusting the log's key on first use (no --log-key given): %s", self.log_key
            )

    def _verify(
        self,
        receipts: Sequence[Receipt],
        eids: Sequence[str],
        floor: int,
        commits: Mapping[str, Commit],
        bodies: Mapping[str, str],
        handed: Mapping[str, tuple[str, Canonical]] | None = None,
    ) -> str:
        """'' when the receipts verify (or no key is pinned), else why not (no identifiers):
        inclusion under the log's key, then that each leaf commits to the event sent.
        Raises :class:`HTTPFailure` when the log cannot be asked for its tiles."""
        if self._verifier is None:
            return ""
        try:
            self._verifier.check(receipts, eids, floor)
            erased = check_commitments(receipts, commits, bodies, handed)
        except (VerificationError, FormatError, ValueError) as exc:
            return f"the log's receipts do not verify: {exc}"
        if erased:
            self.erased_retries += erased
            _log.warning(
                "%d event(s) answered as logged before and erased since: their inclusion is "
                "proven, their content cannot be (the log keeps no body to open)",
                erased,
            )
        return ""

    def _floor(self) -> int:
        return 0 if self._verifier is None else self._verifier.size

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self._verifier is None and not self._tofu:
                _log.warning(
                    "the relay does not verify the log's receipts: no log key is configured"
                )
            self._thread = threading.Thread(target=self._loop, name="scim-relay", daemon=True)
            self._thread.start()

    def stop(self, drain: float = 0.0) -> None:
        """Stop the thread; with ``drain`` > 0 first try that many seconds to empty the queue."""
        if drain > 0 and self._thread is not None:
            try:
                self.flush(drain)
            except OutboxError as exc:  # removed, replaced or damaged: stop all the same
                _log.error("the relay could not drain the outbox before stopping: %s", exc)
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
        if not self._core.http.is_closed:
            self._core.http.close()  # ours, whether the core made it or we did
        if self._lean is not None:
            self._lean.close()

    @property
    def healthy(self) -> bool:
        """False while the last delivery attempt failed (the relay is backing off)."""
        return self._healthy

    def kick(self) -> None:
        """Wake the relay now (new events are queued)."""
        if not self._kick.is_set():  # called per write: skip the lock when already set
            self._kick.set()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending; True if the queue drained within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.outbox.counts()["pending"] == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            self._kick.set()
            time.sleep(0.02)

    # --- receipts for waiting requests -------------------------------------------------------

    def watch(self, eids: Sequence[str]) -> list[Future[Receipt]]:
        """Futures resolved with each event's receipt when the relay delivers it.

        Register before adding the events to the outbox, so a fast delivery is not missed;
        call :meth:`unwatch` when no longer interested.
        """
        futs: list[Future[Receipt]] = []
        with self._lock:
            for eid in eids:
                f: Future[Receipt] = Future()
                self._waiters.setdefault(eid, []).append(f)
                futs.append(f)
        return futs

    def unwatch(self, eids: Sequence[str]) -> None:
        with self._lock:
            for eid in eids:
                self._waiters.pop(eid, None)

    def _resolve(self, receipts: Sequence[Receipt]) -> None:
        with self._lock:
            waiting = [(r, self._waiters.pop(r.eid, [])) for r in receipts]
        for r, futs in waiting:
            for f in futs:
                with contextlib.suppress(Exception):  # cancelled by a caller that gave up
                    if not f.done():
                        f.set_result(r)

    def _fail_waiters(self, reason: str) -> None:
        """A delivery attempt failed: whoever waits for a receipt stops waiting now."""
        with self._lock:
            waiting, self._waiters = self._waiters, {}
        for futs in waiting.values():
            for f in futs:
                with contextlib.suppress(Exception):
                    if not f.done():
                        f.set_exception(DeliveryError(reason))

    # --- delivery ----------------------------------------------------------------------------

    def deliver_now(self, records: Sequence[OutboxRecord], timeout: float) -> list[Receipt]:
        """Send events straight to the log, bypassing the outbox (used when it is unwritable).

        Raises :class:`DeliveryError` unless the log took every one of them and its receipts
        verify.
        """
        if self._tofu and self._verifier is None:
            try:
                self._first_use()
            except _Backoff as exc:
                raise DeliveryError(str(exc)) from None
        floor = self._floor()
        try:
            r = self._post([x.body for x in records], timeout)
        except Unreachable as exc:
            raise DeliveryError(f"log unreachable: {exc}") from None
        except FormatError as exc:
            raise DeliveryError(f"bad answer from the log: {exc}") from None
        if r.status != 200:
            raise DeliveryError(f"log answered {r.status}")
        try:
            receipts, commits = _parse_results(r.json(), [x.eid for x in records])
        except (ValueError, FormatError) as exc:
            raise DeliveryError(f"bad answer from the log: {exc}") from None
        if {x.eid for x in receipts} != {x.eid for x in records}:
            raise DeliveryError("the log did not take every event")
        try:
            bad = self._verify(
                receipts,
                [x.eid for x in records],
                floor,
                commits,
                {x.eid: x.body for x in records},
                {x.eid: (x.body, x.canon) for x in records if x.canon is not None},
            )
        except HTTPFailure as exc:
            raise DeliveryError(f"cannot check the log's receipts: {exc}") from None
        if bad:
            self.unverified += 1
            _log.error("%s", bad)
            raise DeliveryError(bad)
        self._resolve(receipts)
        return receipts

    def _post(self, bodies: Sequence[str], timeout: float | None = None) -> Answer:
        content = _batch_body(bodies)
        if self._lean is not None:
            got = self._lean.post(BATCH_PATH, content, limit=ANSWER_LIMIT, timeout=timeout)
            if got is not None:
                return got
            # another thread (a direct delivery) is on the kept-alive connection: httpx
        # idempotent by eid: a batch sent twice answers the first one's receipts, adds no leaf
        return self._core.send(
            "POST",
            BATCH_PATH,
            limit=ANSWER_LIMIT,
            content=content,
            timeout=timeout,
            idempotent=True,
        )

    def _loop(self) -> None:
        last_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                done = self._deliver_once()
            except _Backoff as b:
                self._failed()
                self._healthy = False
                self.last_error = str(b)
                self._fail_waiters(str(b))
                level = logging.ERROR if isinstance(b, _Unverified) else logging.WARNING
                _log.log(level, "delivery to the log failed (%s); retrying in %.2fs", b, b.delay)
                self._stop.wait(b.delay)
                continue
            except OutboxError as exc:
                self.last_error = str(exc)
                _log.error("outbox error in the relay: %s", exc)
                self._stop.wait(self._next_backoff())
                self._failed()
                continue
            except Exception:  # a bug must not kill delivery for good
                _log.exception("relay error")
                self._failed()
                self._stop.wait(self._next_backoff())
                continue
            if done:
                if done < self.batch_size and self.linger > 0 and not self._waiters:
                    self._stop.wait(self.linger)  # see the module docstring: batch bursts
                continue
            if time.monotonic() - last_prune > self.prune_every:
                last_prune = time.monotonic()
                with contextlib.suppress(OutboxError):
                    self.outbox.prune().result()
            if self._kick.wait(self.idle) and self.linger > 0 and not self._waiters:
                # Let a burst accumulate: one batch of many events costs the log one commit
                # and one checkpoint signature instead of many. Nobody waits for these
                # events (they are durable in the outbox); a receipt waiter skips this.
                self._stop.wait(self.linger)
            self._kick.clear()

    def _failed(self) -> None:
        """Count a failed attempt; the first of a run says when the run began (for the
        "resumed" line), whatever failed: the log, the outbox, or a bug."""
        if self._failures == 0:
            self._down_since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._failures += 1

    def _next_backoff(self) -> float:
        base = min(self.backoff_max, self.backoff_min * float(2 ** min(self._failures, 30)))
        return base * random.uniform(0.5, 1.0)

    def _deliver_once(self) -> int:
        self._kick.clear()
        items = self.outbox.pending(self.batch_size, self.max_batch_bytes)
        if not items:
            return 0
        n = self._send(items)
        if self._failures:
            # Said once, so whoever read the warnings knows that they stopped and why.
            _log.warning(
                "delivery to the log resumed after %d failed attempt(s) since %s",
                self._failures,
                self._down_since,
            )
        self._healthy = True
        self._failures = 0
        return n

    def _send(self, items: Sequence[Pending]) -> int:
        """Deliver ``items``; return how many left the queue. Raises _Backoff."""
        eids = [p.eid for p in items]
        if self._tofu and self._verifier is None:
            self._first_use()
        floor = self._floor()
        self.attempts += 1
        try:
            r = self._post([p.body for p in items])
        except Unreachable as exc:
            raise _Backoff(self._next_backoff(), f"log unreachable: {exc}") from None
        except FormatError as exc:
            raise _Backoff(self._next_backoff(), f"bad answer from the log: {exc}") from None
        st = r.status
        if st == 200:
            try:
                receipts, commits = _parse_results(r.json(), eids)
            except (ValueError, FormatError) as exc:
                raise _Backoff(self._next_backoff(), f"bad answer from the log: {exc}") from None
            try:
                bad = self._verify(
                    receipts,
                    eids,
                    floor,
                    commits,
                    {p.eid: p.body for p in items},
                    self.outbox.handed(eids),
                )
            except HTTPFailure as exc:
                raise _Backoff(
                    self._next_backoff(), f"cannot check the log's receipts: {exc}"
                ) from None
            if bad:
                self.unverified += 1
                with contextlib.suppress(OutboxError):
                    self.outbox.note_failure(eids, bad).result()
                raise _Unverified(self._next_backoff(), bad)
            self.outbox.mark_delivered(receipts).result()
            self.delivered += len(receipts)
            self._resolve(receipts)
            return len(receipts)
        if st in (429, 503):
            delay = retry_after(r.headers.get("retry-after"), self.backoff_max)
            raise _Backoff(self._next_backoff() if delay is None else delay, f"log answered {st}")
        if st in (400, 413, 422):
            verdict = _log_error(r)  # the log's own refusal, not a front proxy's or WAF's page
            if len(items) > 1 and (verdict or st == 413):
                # Halves: to find the refused event, or to fit a body limit (also one of a
                # front proxy, e.g. nginx's client_max_body_size).
                mid = _halve(items)
                return self._send(items[:mid]) + self._send(items[mid:])
            if verdict:
                reason = f"log refused the event ({st}): {r.text[:500]}"
                _log.error("event %s rejected and moved out of the queue: %s", eids[0], reason)
                self.outbox.note_failure(eids, reason, reject=True).result()
                return 1
            # Not the log's verdict on these events: rejecting on it could move the whole
            # outbox out of the queue for good. Kept, retried.
            with contextlib.suppress(OutboxError):
                self.outbox.note_failure(eids, f"log answered {st} without its JSON error").result()
            raise _Backoff(self._next_backoff(), f"log answered {st} without its JSON error")
        if st in (401, 403):
            _log.error("the log refused the relay's token (%s): check --token-file/tenant", st)
        with contextlib.suppress(OutboxError):
            self.outbox.note_failure(eids, f"log answered {st}").result()
        raise _Backoff(self._next_backoff(), f"log answered {st}")
