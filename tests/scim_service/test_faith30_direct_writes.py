"""faith30: an officer's direct write (an erasure request or approval, a legal hold placed
or released, a retention period) on a log that stops signing between the write's "is the
log signing" check and its commit (red team 28's window, docs/design.md).

The write is done (committed with its event's leaf as a ``Q`` record) and its event cannot
be sequenced now. Before, the officer was answered 503 "not signing", as if nothing had
happened, for a shred that did; and a retry of an erasure request or a hold added a second
record and a second event, a retry of a release answered 404 (the hold was deleted), a
retry of a retention period logged it again. Now the answer is 202 with the write's state
and ``"event": "pending"``; a retry finds the first write and answers its state (202 while
the log does not sign: still pending), with nothing done or logged twice; restarted on a
log that signs, the event reaches the log exactly once.

The halt is the log's own (``Log.halt``, what a witness's 409 or 422 calls), made right
after the write's commit on both backends."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tlog.scim import store

from .conftest import BASE_TS, T1, Harness, open_harness, reopened_harness, user_event

ALICE = "u-alice-f30"
KINDS = ["request", "approve", "hold", "release", "retention"]


def _unlogged(h: Harness) -> int:
    with h.log.storage.read() as rv:
        return sum(1 for _ in rv.aux_range(store.unlogged_prefix()))


def _halt_after_next_commit(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log stops signing right after the next commit of SCIM records (once)."""
    storage = h.service.storage
    real = storage.put_aux
    done: list[bool] = []

    def put_then_halt(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        if not done:
            done.append(True)
            h.log.halt("witness w1 answered 422 (faith30 test)")
        return out

    monkeypatch.setattr(storage, "put_aux", put_then_halt)


def _prepare(h: Harness, kind: str) -> dict[str, str]:
    """What the write of ``kind`` needs, made while the log signs."""
    assert h.post_event(user_event(ALICE, req="r-f30")).status_code == 200
    ids: dict[str, str] = {}
    if kind == "approve":
        body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr"}
        r = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a"))
        assert r.status_code == 201, r.text
        ids["erasure"] = r.json()["id"]
    if kind == "release":
        body = {"tenant": T1, "reason": "litigation"}
        r = h.client.post("/v1/scim/holds", json=body, headers=h.h("po_a"))
        assert r.status_code == 201, r.text
        ids["hold"] = r.json()["id"]
    return ids


def _write(h: Harness, kind: str, ids: dict[str, str]) -> httpx.Response:
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
def test_a_direct_write_done_on_a_log_that_stopped_signing_says_so_and_a_retry_finds_it(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with open_harness(tmp_path, database=database) as h:
        ids = _prepare(h, kind)
        size, q0 = h.log.latest.size, _unlogged(h)  # (q0: the preparation's, in the log)
        _halt_after_next_commit(h, monkeypatch)
        first = _write(h, kind, ids)
        # done, its event pending (before: 503 "not signing" for a write that happened)
        assert first.status_code == 202, first.text
        assert first.json()["event"] == "pending" and "receipt" not in first.json()
        assert h.log.halted is not None
        assert _unlogged(h) == q0 + 1
        # the officer retries: the first write is found and its state answered, still
        # pending (the log still does not sign); nothing done or recorded again
        again = _write(h, kind, ids)
        assert again.status_code == 202, again.text
        assert _state(again.json()) == _state(first.json())
        assert _unlogged(h) == q0 + 1
        if kind == "approve":
            assert first.json()["state"] == "done"
        if kind == "request":
            listed = h.client.get("/v1/scim/erasures", headers=h.h("po_a")).json()
            assert [e["id"] for e in listed["erasures"]] == [first.json()["id"]], listed
        if kind == "hold":
            listed = h.client.get("/v1/scim/holds", headers=h.h("po_a")).json()
            assert [x["id"] for x in listed["holds"]] == [first.json()["id"]], listed
        if kind == "release":
            listed = h.client.get("/v1/scim/holds", headers=h.h("po_a")).json()
            assert listed["holds"] == [], listed
        tok = h.tok
    # restarted on a log that signs: the event reaches the log once
    with reopened_harness(tmp_path, database, tok) as h:
        deadline = time.monotonic() + 60
        while _unlogged(h):  # sequenced at start (in the background)
            assert time.monotonic() < deadline, "the pending event never reached the log"
            time.sleep(0.05)
        assert h.log.latest.size == size + 1
        # and a retry now is answered with the receipt of that one event (the harness's
        # clock again: on the real one the request would have expired)
        ticks = itertools.count()
        h.service.clock = lambda: BASE_TS + 10**7 + 1000 * next(ticks)
        done = _write(h, kind, ids)
        assert done.status_code == 200, done.text
        assert "event" not in done.json(), done.json()
        if kind != "retention":  # (a retention period's answer has no receipt)
            assert "receipt" in done.json(), done.json()
        assert h.log.latest.size == size + 1


def test_a_released_hold_keeps_nothing_that_links_to_its_subject_after_the_erasure(
    tmp_path: Path, database: str | None
) -> None:
    """review 39 F1: released holds are kept (so that a retry of the release finds it), and
    they kept the subject's keyed hash ``h``; after that subject's erasure, which removes
    ``h`` from the erasure request on purpose, the released hold still linked back to it."""
    with open_harness(tmp_path, database=database) as h:
        assert h.post_event(user_event(ALICE, req="r-f30h")).status_code == 200
        subject = {"rt": "User", "rid": ALICE}
        r = h.client.post(
            "/v1/scim/holds",
            json={"tenant": T1, **subject, "reason": "litigation"},
            headers=h.h("po_a"),
        )
        assert r.status_code == 201, r.text
        hold = r.json()["id"]
        r = h.client.post(f"/v1/scim/holds/{hold}/release", headers=h.h("po_a"))
        assert r.status_code == 200, r.text
        assert r.json()["rt"] == "User" and "released" in r.json()
        body = {"tenant": T1, **subject, "reason": "gdpr"}
        r = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a"))
        assert r.status_code == 201, r.text
        r = h.client.post(f"/v1/scim/erasures/{r.json()['id']}/approve", headers=h.h("po_b"))
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
        with h.log.storage.read() as rv:
            holds = [
                store.decode_record(raw, "legal hold")
                for _, raw in rv.aux_range(store.PREFIX + b"H")
            ]
        assert holds and all("released" in rec for rec in holds), holds
        assert all("h" not in rec for rec in holds), holds
        # the release's retry still finds it
        r = h.client.post(f"/v1/scim/holds/{hold}/release", headers=h.h("po_a"))
        assert r.status_code == 200, r.text
