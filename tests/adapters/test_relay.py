"""The relay against a fake of the log's batch contract: batching, backoff, dedup, poison."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox
from client.adapters.relay import DeliveryError, Relay
from harness.scim import event_record

from ..support import wait_for
from .helpers import FakeLog, relay_for


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    ob = Outbox(tmp_path / "o.sqlite")
    yield ob
    ob.close()


def test_delivers_in_batches_of_at_most_1000(outbox: Outbox) -> None:
    log = FakeLog()
    outbox.put([event_record(i) for i in range(2500)])
    relay = relay_for(outbox, log)
    relay.start()
    try:
        assert relay.flush(30)
    finally:
        relay.stop()
    assert len(log.events) == 2500
    assert max(log.requests) == 1000
    assert outbox.counts() == {"pending": 0, "delivered": 2500, "rejected": 0}
    r = outbox.receipt(log.events[7]["eid"])
    assert r is not None and r.index == 7 and r.tree_size >= 8


def test_redelivery_after_a_lost_answer_makes_no_duplicate(outbox: Outbox) -> None:
    log = FakeLog()
    recs = [event_record(i) for i in range(10)]
    outbox.put(recs)
    # The log commits the first batch but the answer never reaches the relay (a crash
    # between the log's commit and mark_delivered): simulated by delivering behind its back.
    for r in recs[:6]:
        log(
            __import__("httpx").Request(
                "POST",
                "http://log.test/v1/scim/events/batch",
                headers={"authorization": "Bearer tok"},
                content=('{"events":[' + r.body + "]}").encode(),
            )
        )
    relay = relay_for(outbox, log)
    relay.start()
    try:
        assert relay.flush(10)
    finally:
        relay.stop()
    assert len(log.events) == 10  # by eid: 6 were duplicates, none became a second entry
    assert len({e["eid"] for e in log.events}) == 10


def test_backs_off_on_503_and_network_errors_then_delivers(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "client.adapters.relay")
    log = FakeLog()
    log.fail.extend(["down", 503, 500, "down", 429])
    outbox.put([event_record(i) for i in range(3)])
    relay = relay_for(outbox, log)
    relay.start()
    try:
        wait_for(lambda: not relay.healthy or len(log.events) == 3, 5, "three events or unhealthy")
        assert relay.flush(10)
        # flush sees the queue empty once the batch is marked delivered; the relay's thread
        # says it is healthy again right after that
        wait_for(lambda: relay.healthy, 5, "healthy again after the delivery")
    finally:
        relay.stop()
    assert len(log.events) == 3
    assert relay.attempts >= 6
    # The end of the failures is said once, after the warnings that announced them.
    said = [r.getMessage() for r in caplog.records]
    assert sum("delivery to the log failed" in m for m in said) == 5
    resumed = [m for m in said if "delivery to the log resumed" in m]
    assert len(resumed) == 1 and "after 5 failed attempt(s) since 20" in resumed[0]
    assert said.index(resumed[0]) == len(said) - 1


def test_a_malformed_event_is_isolated_and_rejected(outbox: Outbox) -> None:
    log = FakeLog()
    recs = [event_record(i) for i in range(9)]
    log.reject.add(recs[4].eid)
    outbox.put(recs)
    relay = relay_for(outbox, log)
    relay.start()
    try:
        assert relay.flush(10)
    finally:
        relay.stop()
    assert {e["eid"] for e in log.events} == {r.eid for r in recs} - {recs[4].eid}
    assert outbox.counts() == {"pending": 0, "delivered": 8, "rejected": 1}


def test_watchers_get_receipts(outbox: Outbox) -> None:
    log = FakeLog()
    relay = relay_for(outbox, log)
    relay.start()
    try:
        recs = [event_record(i) for i in range(3)]
        futs = relay.watch([r.eid for r in recs])
        outbox.put(recs)
        relay.kick()
        got = [f.result(5) for f in futs]
        assert [g.eid for g in got] == [r.eid for r in recs]
        assert [g.index for g in got] == [0, 1, 2]
    finally:
        relay.stop()


def test_deliver_now_bypasses_the_outbox(outbox: Outbox) -> None:
    log = FakeLog()
    relay = relay_for(outbox, log)
    got = relay.deliver_now([event_record(1)], timeout=2)
    assert got[0].index == 0 and outbox.counts()["pending"] == 0
    log.down = True
    with pytest.raises(DeliveryError):
        relay.deliver_now([event_record(2)], timeout=2)
    relay.stop()


def test_an_oversized_or_garbled_answer_is_a_failed_delivery(outbox: Outbox) -> None:
    """The relay reads the log through the shared HTTP core: an answer beyond its bound is
    not buffered whole, and neither it nor a non-JSON answer marks anything delivered."""
    import httpx

    from client.adapters.relay import ANSWER_LIMIT

    answers = [b"x" * (ANSWER_LIMIT + 1), b"<html>", b"[]"]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answers.pop(0) if answers else b"[]")

    outbox.put([event_record(1)])
    relay = Relay(
        outbox,
        "http://log.test",
        "tok",
        transport=httpx.MockTransport(handler),
        backoff_min=0.01,
        backoff_max=0.02,
        idle=0.02,
    )
    relay.start()
    try:
        wait_for(lambda: not answers, 5, "every answer taken")
    finally:
        relay.stop()
    assert not relay.healthy and "bad answer from the log" in relay.last_error
    assert outbox.counts()["pending"] == 1 and relay.delivered == 0
    with pytest.raises(DeliveryError, match="bad answer"):
        Relay(
            outbox,
            "http://log.test",
            "tok",
            transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"[")),
        ).deliver_now([event_record(2)], timeout=1)


def test_a_refused_batch_is_halved_between_two_writes(tmp_path: Path) -> None:
    """A batch the log refuses (413: too large) is cut in two at the boundary between two
    writes nearest its middle, not inside a write's events (the parts of a split request
    must reach the log in one batch, which it commits whole): events of request a (three)
    and b (two) go as 3 + 2, where the middle cut them 2 + 3 (intent19)."""
    log = FakeLog()
    log.fail.append(413)
    with Outbox(tmp_path / "o.sqlite") as ob:
        recs = [event_record(i) for i in range(5)]
        ob.put([type(r)(r.eid, "req-a" if i < 3 else "req-b", r.body) for i, r in enumerate(recs)])
        relay = relay_for(ob, log)
        relay.start()
        try:
            wait_for(lambda: len(log.events) == 5, 10, "the five events delivered")
        finally:
            relay.stop()
    assert log.requests == [3, 2]
