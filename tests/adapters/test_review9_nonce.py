"""Review 9: a log cannot drop an event by answering it as the erased duplicate of an old leaf.

A retry the log answers as logged before but without a nonce (its subject erased since) is
delivered on its proven inclusion alone (``test_relay_receipts_verified``). A log could lean
on that to acknowledge any event with the proof of a leaf already in the tree: call the event
a duplicate and leave the nonce out. The relay cannot open such a leaf, but it can date it:
the leaf's ``ts`` is when the log first took the event, which cannot be before the event was
made (its own ``ts``, less the clock skew the relay allows). An older leaf is refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from client.adapters.outbox import Outbox
from harness.scim import event_record

from ..support import wait_for
from .logserver import Log
from .receipt_front import Front, drain, on_batch, relay_behind


def test_an_old_leaf_passed_off_as_an_erased_duplicate_is_refused(
    tmp_path: Path, log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    sub, _ = log.tokens("t1")
    front = Front()
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, front)
    first: list[dict[str, Any]] = []

    def keep(doc: dict[str, Any]) -> None:
        first.extend(doc["results"])

    front.rewrite = on_batch(keep)
    relay.start()
    try:
        now = int(time.time() * 1000)
        outbox.put([event_record(i, now) for i in range(3)])
        drain(outbox, relay, "the first events delivered")
        old = first[0]

        def old_leaf(doc: dict[str, Any]) -> None:
            a = doc["results"][0]
            for k in ("index", "leaf_hash", "leaf"):
                a[k] = old[k]
            a.pop("nonce", None)
            a["duplicate"] = True

        front.rewrite = on_batch(old_leaf)
        later = now + 2 * 3600 * 1000  # made two hours after the old leaf was logged
        with caplog.at_level(logging.ERROR, logger="client.adapters.relay"):
            outbox.put([event_record(i, later) for i in range(3, 5)])
            relay.kick()
            wait_for(
                lambda: relay.unverified >= 2 or outbox.counts()["pending"] == 0, 30, "answers"
            )
        assert outbox.counts()["pending"] == 2
        assert relay.erased_retries == 0
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("predates the event" in m for m in said), said
        front.rewrite = None  # honest again: delivered
        drain(outbox, relay, "the later events delivered")
    finally:
        relay.stop()
        outbox.close()
