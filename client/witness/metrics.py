"""``/healthz``, ``/readyz`` and ``/metrics`` of ``tlog-witness serve``.

* ``/healthz``: the event loop answers; touches nothing.
* ``/readyz``: the state database answers a read (the witness cannot cosign without it);
  503 otherwise.
* ``/metrics``: Prometheus text: ``add-checkpoint`` requests by status with a latency
  histogram, and, read from the state when scraped, the newest cosigned size and its age per
  witnessed log and the number of split-view evidence records kept.

``prometheus_client`` is imported when this module is, which only the server does; the
verification core of ``client.witness`` stays free of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from client.witness.core import Witness

__all__ = ["CONTENT_TYPE_LATEST", "WitnessMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _State(Collector):
    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
        now = time.time()
        for log in self.witness.all_logs():
            stored = self.witness.latest(log.origin)
            if stored is None:
                continue
            size.add_metric([log.origin], stored.size)
            age.add_metric([log.origin], max(0.0, now - stored.updated_at))
        yield size
        yield age
        yield GaugeMetricFamily(
            "tlog_witness_evidence_records",
            "split-view evidence records kept",
            value=len(self.witness.evidence()),
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
        self.registry.register(_State(witness))

    def observe(self, status: int, seconds: float) -> None:
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def ready(self) -> tuple[bool, str]:
        try:
            self.witness.all_logs()
            self.witness.evidence()
            self.witness.store.all_latest()  # the cosigned checkpoints (one row per log)
        except Exception as exc:  # the state database cannot be read
            return False, type(exc).__name__
        return True, "ok"
