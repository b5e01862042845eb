"""SCIM events for the tests and the benchmarks that feed an adapter's outbox directly."""

from __future__ import annotations

from client.adapters.outbox import OutboxRecord
from client.scim.event import event_to_json, new_event

__all__ = ["event_record"]


def event_record(i: int, ts: int | None = None) -> OutboxRecord:
    """The outbox record of a small valid event, numbered ``i`` (its rid and request id),
    made at ``ts`` (ms; default now)."""
    ev = new_event(
        tenant="t1",
        sp="sp",
        op="delete",
        rt="User",
        rid=f"u{i}",
        ts=ts,
        actor={"kind": "anonymous"},
        corr=f"req-{i}",
        req={"m": "DELETE", "p": f"/Users/u{i}", "dig": b"\0" * 32, "len": 0},
        res=204,
        outcome="success",
    )
    return OutboxRecord(ev["eid"], f"req-{i}", event_to_json(ev))
