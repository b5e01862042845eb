"""``/healthz``, ``/readyz`` and ``/metrics`` of ``tlog-witness serve``.

* ``/healthz``: the event loop answers; touches nothing.
* ``/readyz``: the state database answers a read (the witness cannot cosign without it),
  and the last push did not fail on the state's disk (an I/O error, a file system gone
  read-only: ``Witness.write_fault``, until a push is stored again), and no commit was
  found in doubt (``WitnessStore.in_doubt``: until a restart); 503 otherwise.
* ``/metrics``: Prometheus text: ``add-checkpoint`` requests by status with a latency
  histogram, and, read from the state when scraped, the newest cosigned size and its age per
  witnessed log and the number of split-view evidence records kept.

  A damaged record never takes the whole scrape down: a log whose stored checkpoint is
  damaged (its size or root columns disagree with its signed note, or a column is not of
  its type) is left out of the per-log gauges and counted in
  ``tlog_witness_state_damaged_records{kind="checkpoint"}``; a state that cannot be read at
  all sets ``tlog_witness_state_readable`` to 0 and leaves the state gauges out. The request
  counters are served either way. Each new damage is logged once at ERROR (no origin: the
  operator runs ``tlog-witness check``, which names it). Nothing is repaired or hidden:
  pushes for a damaged log are still refused (503) and ``tlog-witness check`` still fails.

  ``tlog_witness_state_rolled_back_total{origin}`` counts, since the process started, the
  times the witness met its own cosignature on a larger tree size than its state held (its
  state was put back from an old copy) and adopted that checkpoint
  (:meth:`client.witness.core.Witness.observe_own`); the CRITICAL line comes once per log.

``prometheus_client`` is imported when this module is, which only the server does; the
verification core of ``client.witness`` stays free of it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from client.witness.core import Witness
from client.witness.store import StateDamaged

__all__ = ["CONTENT_TYPE_LATEST", "WitnessMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


_log = logging.getLogger("tlog.witness")

# What one damaged row raises when read: its columns disagree with its note (StateDamaged),
# or a column is not of its type (SQLite is dynamically typed). SQLite's own errors (a
# damaged page, I/O) are the state being unreadable, not one record.
_ROW_DAMAGE = (StateDamaged, ValueError, TypeError, UnicodeError)


class StateScan:
    """One read of the state for the scrape-time gauges, a damaged record at a time: what
    can be read is reported, what cannot is counted (module docstring)."""

    def __init__(self, witness: Witness) -> None:
        now = time.time()
        self.readable = True
        self.logs: list[tuple[str, int, float]] = []  # (origin, cosigned size, age)
        self.damaged = {"checkpoint": 0}
        self.evidence: int | None = None
        try:
            logs = self.witness_logs(witness)
        except sqlite3.Error:
            self.readable = False
            return
        for origin in logs:
            try:
                stored = witness.latest(origin)
            except _ROW_DAMAGE:  # this row only
                self.damaged["checkpoint"] += 1
                continue
            except sqlite3.Error:  # the table or the file (a damaged page, I/O, locked)
                self.readable = False
                continue
            if stored is not None:
                self.logs.append((origin, stored.size, max(0.0, now - stored.updated_at)))
        try:
            self.evidence = len(witness.evidence())
        except sqlite3.Error:
            self.readable = False

    @staticmethod
    def witness_logs(witness: Witness) -> list[str]:
        return [log.origin for log in witness.all_logs()]


class _State(Collector):
    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self._lock = threading.Lock()
        self._logged: dict[str, int] = {}  # damaged records per kind, as last logged
        self._logged_unreadable = False

    def scan(self) -> StateScan:
        """The state as read now; new damage (or the state becoming unreadable) is logged
        once at ERROR, without identifiers."""
        scan = StateScan(self.witness)
        with self._lock:
            for kind, n in scan.damaged.items():
                if n > self._logged.get(kind, 0):
                    _log.error(
                        "the state database is damaged: %d stored %s record(s) cannot be "
                        "used (left out of /metrics; pushes for them are refused): run "
                        "'tlog-witness check' and restore the state from a backup",
                        n,
                        kind,
                    )
                self._logged[kind] = n
            if not scan.readable and not self._logged_unreadable:
                _log.error("the state database cannot be read for /metrics")
            self._logged_unreadable = not scan.readable
        return scan

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rolled = CounterMetricFamily(
            "tlog_witness_state_rolled_back",
            "times this witness met its own cosignature on a larger tree size than its state "
            "held (a state put back from an old copy) and adopted that checkpoint, per log",
            labels=["origin"],
        )
        counts = dict(self.witness.rolled_back)
        for origin in sorted(set(self.witness.logs) | set(counts)):
            rolled.add_metric([origin], counts.get(origin, 0))
        yield rolled
        scan = self.scan()
        yield GaugeMetricFamily(
            "tlog_witness_state_readable",
            "1 when the state database could be read for this scrape",
            value=1 if scan.readable else 0,
        )
        damaged = GaugeMetricFamily(
            "tlog_witness_state_damaged_records",
            "stored records that could not be used (damaged), by kind: see tlog-witness check",
            labels=["kind"],
        )
        for kind, n in scan.damaged.items():
            damaged.add_metric([kind], n)
        yield damaged
        size = GaugeMetricFamily(
            "tlog_witness_log_cosigned_tree_size",
            "newest tree size this witness cosigned, per log",
            labels=["origin"],
        )
        age = GaugeMetricFamily(
            "tlog_witness_log_checkpoint_age_seconds",
            "seconds since that checkpoint was last updated, per log",
            labels=["origin"],
        )
        for origin, n, seconds in scan.logs:
            size.add_metric([origin], n)
            age.add_metric([origin], seconds)
        yield size
        yield age
        if scan.evidence is not None:
            yield GaugeMetricFamily(
                "tlog_witness_evidence_records",
                "split-view evidence records kept",
                value=scan.evidence,
            )


class WitnessMetrics:
    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "tlog_witness_add_checkpoint_requests",
            "add-checkpoint requests by status",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tlog_witness_add_checkpoint_duration_seconds",
            "add-checkpoint latency",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._state = _State(witness)
        self.registry.register(self._state)

    def observe(self, status: int, seconds: float) -> None:
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def ready(self) -> tuple[bool, str]:
        """Ready while the state database reads. One damaged checkpoint record leaves the
        witness ready for the other logs (pushes for that log are refused with 503) and is
        named in the detail and in /metrics; a damaged table or file is not ready, nor a
        state in doubt (:class:`~client.witness.store.StateInDoubt`) until a restart."""
        if self.witness.store.in_doubt is not None:
            return False, self.witness.store.in_doubt
        try:
            self.witness.all_logs()
            self.witness.evidence()
            try:
                self.witness.store.all_latest()  # the cosigned checkpoints (one row per log)
            except _ROW_DAMAGE:  # a column not of its type: counted per row below
                pass
        except Exception as exc:  # the state database cannot be read
            return False, type(exc).__name__
        if self.witness.write_fault is not None:  # it reads, but the disk refuses writes
            return False, self.witness.write_fault
        scan = self._state.scan()
        if not scan.readable:
            return False, "DatabaseError"
        n = scan.damaged["checkpoint"]
        if n:
            return True, f"ok; {n} damaged checkpoint record(s): run tlog-witness check"
        return True, "ok"
