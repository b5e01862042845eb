"""The relay when something that is not the log's verdict answers for the log.

A 400/413/422 moves an event out of the queue for good (rejected, kept for inspection,
with no way back into the queue). Only the log's own refusal of an event may do that: the
log's JSON error. A front proxy, load balancer or WAF that answers every request with its
own HTML 400 or 413 for a while must not reject the whole outbox: that is a failed delivery,
retried, and every event reaches the log once it is reachable again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from client.adapters.outbox import Outbox, OutboxRecord
from client.adapters.relay import Relay
from harness.scim import event_record

from ..support import wait_for
from .helpers import FakeLog, relay_for


def _eight_events_through(
    tmp_path: Path, log: FakeLog, handler: Callable[[httpx.Request], httpx.Response]
) -> tuple[Outbox, list[OutboxRecord], Relay]:
    """An outbox of eight events and a started relay with a fast back-off that sends them
    to ``log`` through ``handler`` (a front proxy in front of the log)."""
    outbox = Outbox(tmp_path / "o.sqlite")
    recs = [event_record(i) for i in range(8)]
    outbox.put(recs)
    relay = relay_for(
        outbox,
        log,
        transport=httpx.MockTransport(handler),
        backoff_min=0.001,
        backoff_max=0.005,
        idle=0.01,
    )
    relay.start()
    return outbox, recs, relay


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_front_proxy_refusal_rejects_nothing(tmp_path: Path, status: int) -> None:
    log = FakeLog()
    lock = threading.Lock()
    refusals = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            if refusals[0] < 40:
                refusals[0] += 1
                return httpx.Response(
                    status,
                    headers={"Content-Type": "text/html"},
                    content=b"<html><body><h1>%d Bad Request</h1>nginx</body></html>" % status,
                )
        return log(request)

    outbox, recs, relay = _eight_events_through(tmp_path, log, handler)
    try:
        wait_for(lambda: outbox.counts()["pending"] == 0, 20, "the outbox drained")
    finally:
        relay.stop()
        counts = outbox.counts()
        outbox.close()
    assert counts == {"pending": 0, "delivered": 8, "rejected": 0}
    assert {e["eid"] for e in log.events} == {r.eid for r in recs}


def test_a_front_proxy_body_limit_still_splits_batches(tmp_path: Path) -> None:
    """nginx in front of the log with a small ``client_max_body_size`` answers its own HTML
    413 to a large batch: halving still fits the batches under it (nothing rejected); an
    event that alone is over it stays queued, not rejected."""
    log = FakeLog()
    limit = 1500  # bytes of a request body the front proxy lets through: ~2 events

    def handler(request: httpx.Request) -> httpx.Response:
        if len(request.content) > limit:
            return httpx.Response(413, headers={"Content-Type": "text/html"}, content=b"<html>")
        return log(request)

    outbox, recs, relay = _eight_events_through(tmp_path, log, handler)
    try:
        wait_for(lambda: outbox.counts()["pending"] == 0, 20, "the outbox drained")
        limit = 10  # now not even one event fits
        big = event_record(99)
        outbox.put([big])
        relay.kick()
        wait_for(lambda: relay.attempts > 30, 20, "retried")
    finally:
        relay.stop()
        counts = outbox.counts()
        outbox.close()
    assert counts == {"pending": 1, "delivered": 8, "rejected": 0}
    assert {e["eid"] for e in log.events} == {r.eid for r in recs}
