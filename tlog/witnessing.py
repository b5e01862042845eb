"""The log side of witnessing: push checkpoints to witnesses, gather cosignatures.

After each published checkpoint the pusher sends ``add-checkpoint`` to every witness of the
policy that has a URL, at most once per ``interval`` per witness, always with the latest
checkpoint. It rebuilds the consistency proof from the size in a 409 answer, backs off on
429/503 (honouring ``Retry-After``) and on network errors, and treats a 409 without a size
body or a 422 as a split-view alarm: logged at CRITICAL, kept, and shown at
``GET /v1/witnesses``.

What is gathered (the cosignatures, the newest cosigned checkpoint) and handed out is the
published state, :class:`tlog.published.Witnessed`, which the pusher feeds
(``pusher.published``); this module is only the push rounds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from client.formats.merkle import VerificationError
from client.formats.note import FormatError, Signature
from client.formats.policy import Policy
from client.net.core import http_client
from client.net.witness_client import (
    SplitViewAlarm,
    WitnessBusy,
    WitnessClient,
    WitnessConflict,
    WitnessError,
    WitnessRejected,
)
from tlog.integrity import RECOVER_HINT, RollbackDetected
from tlog.log import Log, Published
from tlog.published import Witnessed

__all__ = ["WitnessPusher"]

log = logging.getLogger("tlog.witness")


@dataclass
class WitnessState:
    name: str
    url: str
    cosigned_size: int = 0
    next_attempt: float = 0.0
    backoff: float = 0.0
    last_error: str | None = None
    alarms: list[dict[str, Any]] = field(default_factory=list)


class WitnessPusher:
    def __init__(
        self,
        log_: Log,
        policy: Policy,
        *,
        interval: float = 1.0,
        http: httpx.Client | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.log = log_
        self.policy = policy
        self.interval = interval
        self.max_backoff = max_backoff
        self._http = http or http_client(timeout=10.0)
        self.clients: dict[str, WitnessClient] = {}
        self.state: dict[str, WitnessState] = {}
        for w in policy.witnesses.values():
            if w.url:
                self.clients[w.name] = WitnessClient(w.url, w.verifier, http=self._http)
                self.state[w.name] = WitnessState(w.name, w.url)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Called after each add-checkpoint push: (witness name, result) (metrics).
        self.on_push: Callable[[str, str], None] | None = None
        self._thread: threading.Thread | None = None
        # What the API hands out: fed by the rounds below, started and stopped with them.
        self.published = Witnessed(
            log_,
            policy,
            start=lambda: self.start(),
            stop=lambda: self.stop(),
            witnesses=lambda: self._witness_status(),
        )

    # -- the published state, for callers that hold the pusher ------------------------------

    def note_for(self, pub: Published) -> str:
        return self.published.note_for(pub)

    @property
    def cosigned(self) -> Published | None:
        return self.published.cosigned

    def checkpoint(self) -> str:
        return self.published.checkpoint()

    def _record(self, pub: Published, sigs: tuple[Signature, ...]) -> None:
        self.published.record(pub, sigs)

    def status(self) -> dict[str, Any]:
        status = self.published.status()
        assert status is not None
        return status

    # -- pushing ---------------------------------------------------------------------------

    def notify(self, size: int) -> None:
        """Called after each published checkpoint (from the sequencer's writer)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None and self.clients:
            self._thread = threading.Thread(target=self._run, name="tlog-witness", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.interval)  # a new checkpoint, or time to retry
            self._wake.clear()
            # Rounds, not per-witness timers: every witness in a round gets the *same*
            # checkpoint, so cosignatures add up to a quorum on one checkpoint even while
            # the log grows. At most one round per interval (the rate promised to witnesses).
            delay = last + self.interval - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            last = time.monotonic()
            try:
                self.push_once()
            except Exception:  # pragma: no cover - keep pushing whatever happens
                log.exception("witness push round failed")

    def push_once(self) -> None:
        """One round: push the latest checkpoint to every witness not backing off, at once."""
        pub = self.log.latest
        if pub.size == 0:
            return
        now = time.monotonic()
        due = [
            (self.state[name], client)
            for name, client in self.clients.items()
            if self.state[name].cosigned_size < pub.size and now >= self.state[name].next_attempt
        ]
        if len(due) == 1:
            self._push(due[0][0], due[0][1], pub)
        elif due:
            # In parallel: a slow witness must not delay the others' cosignatures.
            with ThreadPoolExecutor(max_workers=len(due)) as pool:
                for f in [pool.submit(self._push, st, c, pub) for st, c in due]:
                    f.result()

    def _push(self, st: WitnessState, client: WitnessClient, pub: Published) -> None:
        now = time.monotonic()
        try:
            sigs = self._submit(st, client, pub)
        except WitnessBusy as exc:
            st.backoff = min(self.max_backoff, max(exc.retry_after or 0, st.backoff * 2 or 1))
            st.next_attempt = now + st.backoff
            st.last_error = f"busy ({exc.status}), retrying in {st.backoff:.0f} s"
            log.warning(
                "witness %s: push of checkpoint %d failed: %s", st.name, pub.size, st.last_error
            )
            self._pushed(st.name, "busy")
            return
        except SplitViewAlarm as exc:
            self.log.halt(
                f"witness {st.name} holds a checkpoint inconsistent with this log's checkpoint "
                f"{pub.size} (HTTP {exc.status}): the log's history forked"
            )
            alarm = {
                "time": int(time.time()),
                "witness": st.name,
                "tree_size": pub.size,
                "status": exc.status,
                "detail": str(exc)[:500],
            }
            st.alarms.append(alarm)
            del st.alarms[:-20]
            log.critical(
                "SPLIT-VIEW ALARM: witness %s answered %s to checkpoint %d: %s",
                st.name,
                exc.status,
                pub.size,
                str(exc)[:200],
            )
            st.last_error = f"split-view alarm ({exc.status})"
            st.next_attempt = now + self.max_backoff
            self._pushed(st.name, "split_view")
            return
        except WitnessConflict as exc:
            if exc.size <= pub.size or exc.size <= self._database_size():
                # Not a rollback: another frontend on the shared database pushed a newer
                # checkpoint than this one has loaded (it pushes when it catches up), or the
                # witness repeated the size we sent (submit() gives up then).
                if exc.size > pub.size:  # pushed again once this frontend is past it
                    st.cosigned_size = max(st.cosigned_size, exc.size)
                    st.last_error = (
                        f"witness is at size {exc.size}: this frontend (at {pub.size}) is "
                        "behind another one"
                    )
                else:
                    st.backoff = min(self.max_backoff, st.backoff * 2 or 1)
                    st.next_attempt = now + st.backoff
                    st.last_error = f"witness answered 409 with size {exc.size} again"
                log.warning("witness %s: %s", st.name, st.last_error)
                self._pushed(st.name, "conflict")
                return
            st.last_error = f"witness is at size {exc.size}, beyond this log's checkpoint"
            st.next_attempt = now + self.max_backoff
            self.log.halt(
                f"witness {st.name} cosigned tree size {exc.size}, but this log is at "
                f"{pub.size}: the store lost published entries (rolled back or replaced)"
            )
            self._pushed(st.name, "conflict")
            return
        except (WitnessError, VerificationError, FormatError) as exc:
            if isinstance(exc, WitnessRejected) and exc.status in (403, 404):
                # tlog-witness: 404 (Sunlight) or 403 (litewitness) = the witness does not
                # know this log or this key: an operator's job, not a split view. Slowly.
                what = "does not witness this log" if exc.status == 404 else "refuses our key"
                st.last_error = (
                    f"witness {what} (HTTP {exc.status}): give its operator this log's "
                    "entry (`tlog log-entry`)"
                )
                st.backoff = self.max_backoff
                st.next_attempt = now + self.max_backoff
                return
            st.backoff = min(self.max_backoff, st.backoff * 2 or 1)
            st.next_attempt = now + st.backoff
            st.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "witness %s: push of checkpoint %d failed (retry in %.0f s): %s",
                st.name,
                pub.size,
                st.backoff,
                st.last_error,
            )
            self._pushed(st.name, "error")
            return
        self._pushed(st.name, "ok")
        st.backoff = 0.0
        st.last_error = None
        st.cosigned_size = pub.size
        st.next_attempt = 0.0
        self._record(pub, sigs)

    def _submit(
        self, st: WitnessState, client: WitnessClient, pub: Published
    ) -> tuple[Signature, ...]:
        try:
            return client.submit(pub.note, self.log.consistency_proof)
        finally:
            back = client.went_back.pop(self.log.origin, None)
            if back is not None:
                # The witness told us (cosigned, or via 409) a size, and now a smaller one.
                log.critical(
                    "WITNESS STATE ROLLED BACK: witness %s had cosigned tree size %d of this "
                    "log and now holds %d: its state was restored from an old copy or lost, "
                    "and it can now be made to cosign a fork of what it cosigned. Tell its "
                    "operator (a witness must never go back: docs/witnesses.md)",
                    st.name,
                    back[0],
                    back[1],
                )
                self._pushed(st.name, "witness_rolled_back")

    def _database_size(self) -> int:
        """The tree size in the store now (other frontends on a shared database included)."""
        with self.log.storage.read() as rv:
            return rv.tree_size()

    def _pushed(self, witness: str, result: str) -> None:
        hook = self.on_push
        if hook is not None:
            hook(witness, result)

    def check_at_startup(self) -> None:
        """Ask every witness what it cosigned for this log before the log signs anything.

        One ``add-checkpoint`` per witness with ``old`` = our latest size and no proof: a
        witness at that size with the same root cosigns it; one at another size answers 409
        with its size; one holding a different root at our size answers 409/422. Raises
        :class:`RollbackDetected` if a witness holds a larger size or a different root;
        an unreachable witness is logged and skipped (the push loop keeps asking).
        """
        pub = self.log.latest
        for name, client in self.clients.items():
            st = self.state[name]
            try:
                sigs = client.add_checkpoint(pub.note, pub.size, ())
            except WitnessConflict as exc:
                if exc.size > pub.size and exc.size > self._database_size():
                    raise RollbackDetected(
                        f"witness {name} has cosigned tree size {exc.size} of this log, but "
                        f"the store ends at {pub.size}: the store was emptied, truncated or "
                        "restored from an older backup. " + RECOVER_HINT
                    ) from None
                continue
            except SplitViewAlarm as exc:
                raise RollbackDetected(
                    f"witness {name} holds a different checkpoint of this log at tree size "
                    f"{pub.size} (HTTP {exc.status}): the store is not the history the "
                    "witnesses saw. " + RECOVER_HINT
                ) from None
            except (WitnessError, VerificationError, FormatError) as exc:
                log.warning(
                    "witness %s could not be asked at start-up (%s); the rollback check "
                    "relies on the remembered checkpoint until it answers",
                    name,
                    exc,
                )
                continue
            st.cosigned_size = pub.size
            if pub.size:
                self._record(pub, sigs)

    def _witness_status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": st.name,
                "url": st.url,
                "cosigned_size": st.cosigned_size,
                "last_error": st.last_error,
                "alarms": st.alarms,
            }
            for st in self.state.values()
        ]
