"""Adding events the outbox already holds (same eid) stores nothing and uses up no quota.

``INSERT OR IGNORE`` skips an event already stored, but the quota counter counted its bytes
anyway: every such add pushed the counter up for good (until a restart recounted), and the
outbox soon refused every new event as "full" with next to nothing queued: a fail-closed
adapter then answers 503 to every SCIM write. Found by tests/adapters/test_model_pipeline.py
(rule ``enqueue_again``).
"""

from __future__ import annotations

from pathlib import Path

from client.adapters.outbox import _MAX_ROWS_PER_INSERT, Outbox, Receipt
from harness.scim import event_record


def test_adding_stored_events_again_leaves_the_quota_alone(tmp_path: Path) -> None:
    recs = [event_record(i) for i in range(3)]
    size = sum(len(r.body) for r in recs)
    # Room for the queued events twice over (an add is checked against the quota before
    # the outbox knows which of its events it holds already).
    with Outbox(tmp_path / "o.sqlite", max_bytes=2 * size + 100) as o:
        o.put(recs)
        for _ in range(5):
            o.put(recs[:1])  # stored already: ignored
        o.put([recs[1], recs[1]])  # twice in one add: stored once
        assert o.backlog()["pending_bytes"] == size
        o.mark_delivered([Receipt(recs[0].eid, 0, "AA==", 1, "cp")]).result()
        o.put(recs[:1])  # delivered already: ignored
        o.put([event_record(3), event_record(4), event_record(5)])  # refused as "full" before
        assert o.counts() == {"pending": 5, "delivered": 1, "rejected": 0}


def test_a_large_add_again_leaves_the_quota_alone(tmp_path: Path) -> None:
    """The same through the general commit path (an add of more rows than one INSERT)."""
    recs = [event_record(i) for i in range(_MAX_ROWS_PER_INSERT + 1)]
    size = sum(len(r.body) for r in recs)
    with Outbox(tmp_path / "o.sqlite", max_bytes=2 * size + 1000) as o:
        o.put(recs)
        o.put(recs)  # all stored already
        o.put(recs)
        o.put([event_record(1000)])
        assert o.counts()["pending"] == len(recs) + 1
