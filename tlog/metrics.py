"""Health, readiness and Prometheus metrics of ``tlog serve`` (documented in
docs/operations.md, "Monitoring").

* ``GET /healthz`` (in :mod:`tlog.app`): liveness, touches nothing.
* ``GET /readyz``: readiness, one check per part that a write needs: the writer thread, the
  store (a read transaction; on LMDB, failed while the last write found the file system
  under it read-only), the remembered checkpoint's file (``checkpoint_file``, only while
  the last checkpoint could not be written to it), the store's operator lock (``tlog
  serve`` of a PostgreSQL store: ``store_lock``), the backlog, the log not halted, and
  (with a witness policy) the witness quorum. 200 when every check passes, 503 with the
  failing ones otherwise, so a load balancer stops sending writes exactly when writes would
  get 503. The witness quorum is reported but only fails readiness while the log has never
  been cosigned.
* ``GET /metrics``: Prometheus text format, from a registry of this app only (several apps
  in one process, as in the tests, never mix their numbers).

The request path pays for one ``perf_counter`` pair, a dictionary lookup of the label
children and two lock-protected additions; everything else (tree size, checkpoint age,
backlog, witness state) is computed when scraped.
"""

from __future__ import annotations

import collections
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from tlog.http import Endpoint
from tlog.reads import ReadPool

if TYPE_CHECKING:
    from tlog.log import Log
    from tlog.pg import OperatorHold
    from tlog.published import PublishedState
    from tlog.sequencer import Sequencer

__all__ = ["LATENCY_BUCKETS", "Metrics", "ops_routes"]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
# Paths answered before Starlette's router (no route object in the scope).
_FAST = {"/v1/proof/inclusion": "/v1/proof/inclusion", "/v1/entries": "/v1/entries"}
OTHER = "other"  # unmatched paths: one label, so a scanner cannot grow the label set


def route_of(scope: Scope) -> str:
    """The route template of a request (``/v1/entries/{index}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    raw: str = scope.get("path", "")
    if raw in _FAST:
        return _FAST[raw]
    if raw.startswith("/tile/"):
        return "/tile/{path:path}"
    return OTHER


class _RequestCollector(Collector):
    """Request counts and latency histograms from :meth:`Metrics.observe_request`'s sums."""

    def __init__(self, acc: dict[tuple[str, str, int], list[Any]]) -> None:
        self.acc = acc

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        counts = CounterMetricFamily(
            "tlog_http_requests",
            "HTTP requests by route template, method and status",
            labels=["route", "method", "status"],
        )
        by_route: dict[tuple[str, str], tuple[float, list[int]]] = {}
        for (route, method, status), (n, total, buckets) in list(self.acc.items()):
            counts.add_metric([route, method, str(status)], n)
            s, b = by_route.get((route, method), (0.0, [0] * len(buckets)))
            b = [x + y for x, y in zip(b, buckets, strict=True)]
            by_route[(route, method)] = (s + total, b)
        yield counts
        latency = HistogramMetricFamily(
            "tlog_http_request_duration_seconds",
            "HTTP request latency by route template",
            labels=["route", "method"],
        )
        for labels, (total, buckets) in by_route.items():
            cumulative, out = 0, []
            for le, n in zip([*LATENCY_BUCKETS, float("inf")], buckets, strict=True):
                cumulative += n
                out.append(("+Inf" if le == float("inf") else repr(le), cumulative))
            latency.add_metric(list(labels), out, total)
        yield latency


class Metrics:
    """The log server's metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Per request: plain counters updated on the event loop (no locks, no label
        # lookups), turned into tlog_http_requests_total and
        # tlog_http_request_duration_seconds when scraped (_RequestCollector).
        self._acc: dict[tuple[str, str, int], list[Any]] = {}
        r.register(_RequestCollector(self._acc))
        self.batch_entries = Histogram(
            "tlog_batch_entries",
            "entries per committed batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "tlog_commit_duration_seconds",
            "time to integrate, fsync and sign one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_failures = Counter(
            "tlog_commit_failures",
            "batches that could not be committed (none acknowledged)",
            registry=r,
        )
        self.witness_pushes = Counter(
            "tlog_witness_pushes",
            "add-checkpoint requests to each witness by result",
            ["witness", "result"],
            registry=r,
        )
        self.scim_events = Counter(
            "tlog_scim_events",
            "SCIM events logged by action and outcome",
            ["action", "outcome"],
            registry=r,
        )
        self.scim_fence_claims = Counter(
            "tlog_scim_writer_fence_claims",
            "claims of the SCIM writer fence on a shared database, by why: 'start' (the "
            "first write) or 'taken' (another frontend had taken it: its writes staged again)",
            ["why"],
            registry=r,
        )
        self.last_publish: float | None = None
        # (op, outcome) -> its labelled counter: labels() takes a lock and builds a key on
        # every call, and single events call observe_events once each.
        self._scim_children: dict[tuple[str, str], Any] = {}

    # -- hooks -------------------------------------------------------------------------------

    def observe_request(self, scope: Scope, status: int, seconds: float) -> None:
        """After each HTTP request, on the event loop (scrapes run there too)."""
        key = (route_of(scope), scope.get("method", ""), status)
        acc = self._acc.get(key)
        if acc is None:
            if len(self._acc) > 4096:  # pragma: no cover - bounded by routes x statuses
                return
            acc = self._acc[key] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
        acc[0] += 1
        acc[1] += seconds
        acc[2][bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def observe_batch(self, entries: int, seconds: float, ok: bool) -> None:
        """Called by the sequencer's writer after each batch."""
        if ok:
            self.batch_entries.observe(entries)
            self.commit_seconds.observe(seconds)
            self.last_publish = time.time()
        else:
            self.commit_failures.inc()

    def observe_fence_claim(self, taken: bool) -> None:
        """The SCIM service claimed the writer fence (on its writer thread)."""
        self.scim_fence_claims.labels("taken" if taken else "start").inc()

    def observe_push(self, witness: str, result: str) -> None:
        self.witness_pushes.labels(witness, result).inc()

    def observe_events(self, events: Sequence[Any]) -> None:
        # Counted per (op, outcome) first: one labelled increment per pair, not per event
        # (a single event's pair without building a Counter).
        pairs = ((str(ev.get("op", "?")), str(ev.get("outcome", "?"))) for ev in events)
        counts = {next(pairs): 1} if len(events) == 1 else collections.Counter(pairs)
        for key, n in counts.items():
            child = self._scim_children.get(key)
            if child is None:
                child = self.scim_events.labels(*key)
                if len(self._scim_children) < 1024:  # bounded by the event schema's values
                    self._scim_children[key] = child
            child.inc(n)

    def attach(self, log_: Log, seq: Sequencer, published: PublishedState) -> None:
        """Register the scrape-time gauges of this log (and of its witnessing, if any)."""
        self.registry.register(_StateCollector(self, log_, seq, published))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, m: Metrics, log_: Log, seq: Sequencer, published: PublishedState) -> None:
        self.m = m
        self.log = log_
        self.seq = seq
        self.published = published
        self.started = time.time()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        latest = self.log.latest
        yield GaugeMetricFamily(
            "tlog_tree_size", "entries in the latest published checkpoint", value=latest.size
        )
        since = self.m.last_publish or self.started
        yield GaugeMetricFamily(
            "tlog_checkpoint_age_seconds",
            "seconds since the latest checkpoint was published (or since start-up)",
            value=max(0.0, time.time() - since),
        )
        yield GaugeMetricFamily(
            "tlog_backlog_entries", "entries waiting for the writer", value=self.seq.backlog
        )
        yield GaugeMetricFamily(
            "tlog_backlog_limit_entries",
            "backlog beyond which submissions get 503",
            value=self.seq.max_backlog,
        )
        yield GaugeMetricFamily(
            "tlog_halted",
            "1 when the log refuses to sign (see /readyz)",
            value=1 if self.log.halted else 0,
        )
        hold = operator_hold(self.log)
        if hold is not None:  # tlog serve of a PostgreSQL store (tlog.pg.OperatorHold)
            yield GaugeMetricFamily(
                "tlog_store_lock_held",
                "1 while this frontend holds the store's operator lock (0: writes get 503, "
                "see /readyz)",
                value=1 if hold.lost is None else 0,
            )
            yield CounterMetricFamily(
                "tlog_store_lock_losses",
                "times this frontend lost the store's operator lock (its connection ended)",
                value=hold.losses,
            )
        down = store_outage(self.log)
        if down is not None:  # a PostgreSQL store: the database known down (503 at once)
            yield GaugeMetricFamily(
                "tlog_store_reachable",
                "0 while the database is known down (reads and writes answer 503 at once, "
                "see /readyz), else 1",
                value=0 if down[0] is not None else 1,
            )
            yield CounterMetricFamily(
                "tlog_store_outages",
                "times the database became known down (a connection attempt failed)",
                value=down[1],
            )
        damaged = CounterMetricFamily(
            "tlog_store_damaged_reads",
            "reads that met a damaged stored record, by kind (each refused or left out, "
            "never served; run tlog fsck)",
            labels=["kind"],
        )
        for kind in ("checkpoint", "entry", "dedup", "tile"):
            damaged.add_metric([kind], self.log.damaged_reads.get(kind, 0))
        yield damaged
        st = self.published.status()
        if st is None:  # no witnesses
            return
        cos = st.get("cosigned_size")
        yield GaugeMetricFamily(
            "tlog_cosigned_tree_size",
            "size of the newest checkpoint cosigned by a witness quorum",
            value=-1 if cos is None else cos,
        )
        size = GaugeMetricFamily(
            "tlog_witness_cosigned_tree_size",
            "newest size each witness cosigned",
            labels=["witness"],
        )
        up = GaugeMetricFamily(
            "tlog_witness_up", "1 when the last push to the witness succeeded", labels=["witness"]
        )
        alarms = GaugeMetricFamily(
            "tlog_witness_alarms",
            "split-view alarms raised by each witness (kept: last 20)",
            labels=["witness"],
        )
        for w in st.get("witnesses", []):
            size.add_metric([w["name"]], w.get("cosigned_size") or 0)
            up.add_metric([w["name"]], 0 if w.get("last_error") else 1)
            alarms.add_metric([w["name"]], len(w.get("alarms") or []))
        yield size
        yield up
        yield alarms


# --- readiness ------------------------------------------------------------------------------


def operator_hold(log_: Log) -> OperatorHold | None:
    """The store's operator lock hold of a ``tlog serve`` of a PostgreSQL store, or None."""
    return getattr(log_.storage, "operator_hold", None)


def store_outage(log_: Log) -> tuple[str | None, int] | None:
    """For a PostgreSQL store: why the database is known down (None when it is not) and
    how many times it became so (``tlog.pg.PgStorage.outage``); None for other stores."""
    count = getattr(log_.storage, "outages", None)
    if count is None:
        return None
    why: str | None = getattr(log_.storage, "outage", None)
    return why, int(count)


def stored_size(log_: Log) -> int:
    with log_.storage.read() as rv:
        return rv.tree_size()


def readiness(
    log_: Log, seq: Sequencer, published: PublishedState, stored: int | Exception | None = None
) -> tuple[bool, dict[str, Any]]:
    """Every check with its state; ready when none failed. ``stored``: the store's tree
    size (or the failure reading it), read here when not given."""
    checks: dict[str, dict[str, Any]] = {}
    alive = seq.running
    checks["writer"] = {"ok": alive, "detail": "running" if alive else "stopped"}
    if stored is None:
        try:
            stored = stored_size(log_)
        except Exception as exc:  # any storage failure means not ready
            stored = exc
    if isinstance(stored, Exception):
        checks["storage"] = {"ok": False, "detail": type(stored).__name__}
    else:
        checks["storage"] = {"ok": True, "tree_size": stored}
    write_fault = getattr(log_.storage, "write_fault", None)
    if write_fault is not None:  # LMDB: the file system under the store went read-only
        checks["storage"] = {"ok": False, "detail": write_fault}
    hold = operator_hold(log_)
    if hold is not None:
        lost = hold.lost
        checks["store_lock"] = {"ok": lost is None, "detail": lost or "held"}
    halted = log_.halted
    checks["signing"] = {"ok": halted is None, "detail": halted or "signing"}
    if log_.remember_fault is not None:  # every write is refused until it is remembered
        checks["checkpoint_file"] = {"ok": False, "detail": log_.remember_fault}
    full = seq.backlog >= seq.max_backlog
    checks["backlog"] = {"ok": not full, "entries": seq.backlog, "limit": seq.max_backlog}
    st = published.status()
    if st is not None:  # witnessed
        cos = st.get("cosigned_size")
        ok_w = sum(1 for w in st.get("witnesses", []) if not w.get("last_error"))
        never = cos is None and log_.latest.size > 0
        checks["witnesses"] = {
            "ok": not never,
            "cosigned_size": cos,
            "tree_size": log_.latest.size,
            "witnesses_ok": ok_w,
            "witnesses": len(st.get("witnesses", [])),
        }
    return all(c["ok"] for c in checks.values()), checks


def ops_routes(
    metrics: Metrics,
    log_: Log,
    seq: Sequencer,
    published: PublishedState,
    reads: ReadPool | None = None,
) -> list[Endpoint]:
    """``GET /readyz`` and ``GET /metrics`` (public, like the rest of the read API)."""
    pool = reads or ReadPool()

    async def readyz(request: Request) -> Response:
        # The store is read off the event loop and for at most the storage timeout: a
        # stalled store makes /readyz 503 (storage: StorageStalled), never hang.
        stored: int | Exception
        try:
            stored = await pool.run(lambda: stored_size(log_), "the readiness read")
        except Exception as exc:
            stored = exc
        ok, checks = readiness(log_, seq, published, stored)
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(
            metrics.exposition(),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )

    return [
        Endpoint("GET", "/readyz", readyz),
        Endpoint("GET", "/metrics", metrics_endpoint),
    ]
