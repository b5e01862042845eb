"""faith31 (review F6): an officer's direct write whose event's leaf is stored in the tree
but in no published checkpoint yet.

The log committed the leaf and then stopped signing before it published a checkpoint that
covers it (the checkpoint could not be remembered, or a witness refused it: ``Log.halt``).
Before, the write and each retry were answered with neither a receipt nor ``"event":
"pending"`` (the leaf was found in the tree, so it was taken as logged), although no
checkpoint proves it; now they are answered 202 pending while no published checkpoint
covers it, and after a restart (the log signs again) with the receipt of the one event.

Both store backends (the ``database`` fixture)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from tlog.scim import store

from .conftest import BASE_TS, T1, Harness, open_harness, reopened_harness, user_event

ALICE = "u-alice-f31"
KINDS = ["request", "approve", "hold", "release", "retention"]


def _unlogged(h: Harness) -> int:
    with h.log.storage.read() as rv:
        return sum(1 for _ in rv.aux_range(store.unlogged_prefix()))


def _halt_at_next_publish(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log's next publication fails and it stops signing: the batch's leaves are
    committed in the tree, in no published checkpoint."""

    def refused(pub: Any) -> None:
        h.log.halt("witness w1 answered 422 (faith31 test)")
        raise RuntimeError("the checkpoint could not be remembered (faith31 test)")

    monkeypatch.setattr(h.log, "publish", refused)


def _prepare(h: Harness, kind: str) -> dict[str, str]:
    assert h.post_event(user_event(ALICE, req="r-f31")).status_code == 200
    ids: dict[str, str] = {}
    if kind == "approve":
        body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr"}
        r = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a"))
        assert r.status_code == 201, r.text
        ids["erasure"] = r.json()["id"]
    if kind == "release":
        r = h.client.post(
            "/v1/scim/holds", json={"tenant": T1, "reason": "litigation"}, headers=h.h("po_a")
        )
        assert r.status_code == 201, r.text
        ids["hold"] = r.json()["id"]
    return ids


def _write(h: Harness, kind: str, ids: dict[str, str]) -> Any:
    c = h.client
    if kind == "request":
        body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr"}
        return c.post("/v1/scim/erasures", json=body, headers=h.h("po_a"))
    if kind == "approve":
        return c.post(f"/v1/scim/erasures/{ids['erasure']}/approve", headers=h.h("po_b"))
    if kind == "hold":
        body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "litigation"}
        return c.post("/v1/scim/holds", json=body, headers=h.h("po_a"))
    if kind == "release":
        return c.post(f"/v1/scim/holds/{ids['hold']}/release", headers=h.h("po_a"))
    return c.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))


def _state(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("receipt", "event")}


@pytest.mark.parametrize("kind", KINDS)
def test_a_direct_write_in_the_tree_and_no_published_checkpoint_is_pending(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with open_harness(tmp_path, database=database) as h:
        ids = _prepare(h, kind)
        size = h.log.latest.size
        _halt_at_next_publish(h, monkeypatch)
        first = _write(h, kind, ids)
        # the leaf is in the tree (committed), no published checkpoint covers it
        assert h.log.halted is not None and h.log.latest.size == size
        with h.log.storage.read() as rv:
            assert rv.tree_size() == size + 1
        # pending (before: neither a receipt nor "pending", as if it were logged)
        for answer in (first, _write(h, kind, ids)):  # the write, then its retry
            assert answer.status_code == 202, answer.text
            assert answer.json()["event"] == "pending", answer.json()
            assert "receipt" not in answer.json(), answer.json()
            assert _state(answer.json()) == _state(first.json())
        tok = h.tok
    with reopened_harness(tmp_path, database, tok) as h:
        deadline = time.monotonic() + 60
        while _unlogged(h) or h.log.latest.size < size + 1:
            assert time.monotonic() < deadline, "no checkpoint ever covered the event"
            time.sleep(0.05)
        ticks = itertools.count()
        h.service.clock = lambda: BASE_TS + 10**7 + 1000 * next(ticks)
        done = _write(h, kind, ids)
        assert done.status_code == 200, done.text
        assert "event" not in done.json(), done.json()
        if kind != "retention":  # (a retention period's answer has no receipt)
            receipt = done.json()["receipt"]
            assert receipt["index"] == size and receipt["tree_size"] == size + 1, receipt
        assert h.log.latest.size == size + 1
