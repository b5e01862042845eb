"""The relay verifies the log's receipts before it marks anything delivered.

Against a real ``tlog serve``: receipts verify under the log's key (new events and
duplicates). Through a hostile front (an ``httpx`` transport in front of the real log that
rewrites its answers): a bad checkpoint signature, a receipt's leaf hash moved to another
index, a tampered hash tile (the inclusion proof's nodes), a checkpoint older than one
already verified, a tree size that is not the checkpoint's (a receipt for an event that was
not sent is a malformed answer already: tests/adapters/test_relay.py). Each time nothing is
marked delivered, the failure is logged at ERROR without the events' identifiers and
counted, and the events are delivered once the log answers honestly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.adapters.outbox import Outbox
from client.adapters.relay import DeliveryError
from harness.scim import event_record

from ..support import wait_for
from .logserver import Log
from .receipt_front import CASES, Front, drain, on_batch, relay_behind


def test_receipts_of_the_real_log_verify(tmp_path: Path, log: Log) -> None:
    """New events in several batches, then the same events again (duplicates: their old
    indices, full tiles), with another relay's events in between: every receipt verifies
    (by growing the last tree, or from the tiles), all delivered, nothing counted."""
    sub, _ = log.tokens("t1")
    front = Front()
    recs = [event_record(i) for i in range(300)]  # more than one level-0 tile
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front, batch_size=70)
    relay.start()
    try:
        outbox.put(recs)
        drain(outbox, relay, "the outbox drained")
        again = Outbox(tmp_path / "again.sqlite")
        relay2 = relay_behind(again, log, sub, Front(), batch_size=50)
        relay2.start()
        try:
            again.put(recs[::3] + [event_record(i) for i in range(300, 320)])
            drain(again, relay2, "the duplicates delivered")
        finally:
            relay2.stop()
            again.close()
        outbox.put([event_record(i) for i in range(320, 340)])  # after relay2's leaves
        drain(outbox, relay, "the next events delivered")
        outbox.put([event_record(i) for i in range(340, 345)])
        drain(outbox, relay, "the last events delivered")
    finally:
        relay.stop()
        counts = outbox.counts()
        outbox.close()
    assert counts == {"pending": 0, "delivered": 325, "rejected": 0}
    assert relay.unverified == 0 and relay2.unverified == 0
    assert relay.delivered == 325 and relay2.delivered == 120


@pytest.mark.parametrize("case", list(CASES))
def test_a_receipt_that_fails_is_never_marked_delivered(
    tmp_path: Path, log: Log, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    rewrite, reason = CASES[case]
    sub, _ = log.tokens("t1")
    front = Front()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front)
    relay.start()
    try:
        outbox.put([event_record(i) for i in range(3)])  # honest: the relay knows a tree
        drain(outbox, relay, "the first events delivered")
        if "tile" in case:
            # Someone else's event first: the batch is then not all the log appended since
            # the relay's last checkpoint, and is proven from the tiles, not by growing it.
            other = event_record(99)
            r = httpx.post(
                log.url + "/v1/scim/events",
                content=other.body.encode(),
                headers={"Authorization": f"Bearer {sub}", "Content-Type": "application/json"},
            )
            assert r.status_code == 200, r.text
        later = [event_record(i) for i in range(3, 8)]
        front.rewrite = rewrite
        with caplog.at_level(logging.ERROR, logger="client.adapters.relay"):
            outbox.put(later)
            relay.kick()
            wait_for(lambda: relay.unverified >= 3, 30, "three answers refused")
            assert outbox.counts()["pending"] == 5, case
            assert relay.delivered == 3 and not relay.healthy
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        # The first refusal says why (later tries of the same events are duplicates).
        assert errors and reason in errors[0].getMessage(), errors[0].getMessage()
        for r in errors:
            msg = r.getMessage()
            assert "do not verify" in msg
            assert not any(x.eid in msg or x.req in msg for x in later), msg
        front.rewrite = None
        drain(outbox, relay, "delivered once the log answers honestly")
    finally:
        relay.stop()
        counts = outbox.counts()
        outbox.close()
    assert counts == {"pending": 0, "delivered": 8, "rejected": 0}
    assert relay.delivered == 8 and relay.healthy


def test_a_retry_answered_without_its_nonce_is_included_but_counted(
    tmp_path: Path, log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    """A new event answered without its nonce is refused (its content cannot be checked).
    Its retry is then a duplicate; answered without a nonce too (what the log does once the
    body is erased) it is delivered on its proven inclusion alone, and that is said (a
    WARNING) and counted (``erased_retries``), so monitoring sees a log that leans on it."""
    sub, _ = log.tokens("t1")
    front = Front()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front)

    def drop(doc: dict[str, Any]) -> None:
        for item in doc["results"]:
            item.pop("nonce", None)

    front.rewrite = on_batch(drop)
    relay.start()
    try:
        with caplog.at_level(logging.WARNING, logger="client.adapters.relay"):
            outbox.put([event_record(i) for i in range(2)])
            drain(outbox, relay, "delivered as retries")
        said = [r.getMessage() for r in caplog.records]
        assert any("without its commitment nonce" in m for m in said), said
        assert any("answered as logged before and erased since" in m for m in said), said
        assert relay.unverified >= 1 and relay.erased_retries == 2
    finally:
        relay.stop()
        outbox.close()


def test_a_rolled_back_checkpoint_is_refused(tmp_path: Path, log: Log) -> None:
    """The log answers a later batch with a checkpoint older than one the relay verified
    (a log restored from an old backup, or one showing different clients different trees)."""
    sub, _ = log.tokens("t1")
    front = Front()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front)
    relay.start()
    try:
        outbox.put([event_record(0)])
        drain(outbox, relay, "the first event delivered")
        old = httpx.get(log.url + "/checkpoint").text
        outbox.put([event_record(1)])
        drain(outbox, relay, "the second event delivered")
        old_size = int(old.split("\n")[1])

        def rollback(doc: dict[str, Any]) -> None:
            doc["checkpoint"], doc["tree_size"] = old, old_size

        front.rewrite = on_batch(rollback)
        outbox.put([event_record(2)])
        relay.kick()
        wait_for(lambda: relay.unverified >= 2, 30, "two answers refused")
        assert "rollback" in relay.last_error, relay.last_error
        assert outbox.counts()["pending"] == 1 and relay.delivered == 2
        front.rewrite = None
        drain(outbox, relay, "delivered once the log answers honestly")
    finally:
        relay.stop()
        outbox.close()


def test_direct_delivery_verifies_too(tmp_path: Path, log: Log) -> None:
    """:meth:`Relay.deliver_now` (the outbox is unwritable) raises on receipts that fail."""
    sub, _ = log.tokens("t1")
    front = Front()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front)
    try:
        got = relay.deliver_now([event_record(0), event_record(1)], timeout=10)
        assert len(got) == 2
        front.rewrite = CASES["bad signature"][0]
        with pytest.raises(DeliveryError, match="do not verify"):
            relay.deliver_now([event_record(2), event_record(3)], timeout=10)
        assert relay.unverified == 1
    finally:
        relay.stop()
        outbox.close()


def test_a_relay_with_another_key_delivers_nothing(tmp_path: Path, log: Log) -> None:
    sub, _ = log.tokens("t1")
    from client.formats.note import Ed25519Signer

    other = Ed25519Signer.generate(log.vkey.split("+")[0]).verifier().vkey()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, Front(), log_key=other)
    relay.start()
    try:
        outbox.put([event_record(0)])
        relay.kick()
        wait_for(lambda: relay.unverified >= 2, 30, "two answers refused")
        assert outbox.counts()["pending"] == 1 and relay.delivered == 0
    finally:
        relay.stop()
        outbox.close()


def test_trust_on_first_use_pins_the_logs_key(
    tmp_path: Path, log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    sub, _ = log.tokens("t1")
    front = Front()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front, log_key=None, trust_on_first_use=True)
    with caplog.at_level(logging.WARNING, logger="client.adapters.relay"):
        relay.start()
        try:
            outbox.put([event_record(0)])
            drain(outbox, relay, "delivered")
            assert relay.log_key == log.vkey
            assert any(
                "trust" in r.getMessage() and log.vkey in r.getMessage() for r in caplog.records
            )
            front.rewrite = CASES["bad signature"][0]
            outbox.put([event_record(1)])
            relay.kick()
            wait_for(lambda: relay.unverified >= 1, 30, "an answer refused")
            assert outbox.counts()["pending"] == 1
        finally:
            relay.stop()
            outbox.close()
