"""Crypto-shredding with dual control: after approval the subject's bodies are unreadable for
good, the erasure is itself logged without personal data, and the public tree (root, proofs,
tiles, checkpoints) is byte-identical."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from client.formats.merkle import leaf_hash
from client.scim import event_to_json
from tlog.scim import store
from tlog.scim.keys import SubjectId

from .conftest import BASE_TS, T1, T2, Harness, group_event, user_event

ALICE = "u-alice-7f3a"
BOB = "u-bob-55c1"
MONTH_MS = 31 * 24 * 3600 * 1000


def snapshot(h: Harness, size: int) -> dict[str, Any]:
    """Everything public about the tree of ``size``."""
    c = h.client
    out: dict[str, Any] = {
        "entries": c.get(f"/tile/entries/000.p/{size}").content,
        "tile0": c.get(f"/tile/0/000.p/{size}").content,
        "proofs": [
            c.get(f"/v1/proof/inclusion?index={i}&tree_size={size}").content for i in range(size)
        ],
        "bundles": [c.get(f"/v1/bundle/{i}?tree_size={size}").content for i in range(size)],
        "consistency": [
            c.get(f"/v1/proof/consistency?old_size={m}&tree_size={size}").content
            for m in range(size + 1)
        ],
    }
    assert out["entries"] and out["tile0"] and b"error" not in out["entries"]
    return out


def setup_subjects(h: Harness) -> dict[str, Any]:
    svc = h.service
    # Alice: two events in June 2024 and one in July 2024 (two retention epochs, two DEKs).
    ticks = iter([BASE_TS, BASE_TS + 1000, BASE_TS + MONTH_MS])
    svc.clock = lambda: next(ticks)
    alice = [user_event(ALICE, req=f"req-a{i}") for i in range(3)]
    for ev in alice:
        assert h.post_event(ev).status_code == 200
    counter = iter(range(10_000))
    svc.clock = lambda: BASE_TS + 2 * MONTH_MS + 1000 * next(counter)
    bob = user_event(BOB, xid="bob.builder@example.org", req="req-b1")
    assert h.post_event(bob).status_code == 200
    pids = h.client.post(
        "/v1/scim/pseudonyms", headers=h.h("sub1"), json={"refs": [{"rt": "User", "id": ALICE}]}
    ).json()["refs"]
    pid_alice = base64.b64decode(pids[0]["pid"])
    group = group_event([pid_alice])
    assert h.post_event(group).status_code == 200
    other = user_event(ALICE, tenant=T2, req="req-t2")  # same rid, another tenant
    assert h.post_event(other, "sub2").status_code == 200
    return {"alice": alice, "bob": bob, "group": group, "other": other, "pid": pid_alice}


def test_shredding_end_to_end(harness: Harness) -> None:
    h = harness
    ctx = setup_subjects(h)
    a = h.auditor()
    assert len(a.search(rid=ALICE).results) == 3
    size_before = h.log.latest.size
    before = snapshot(h, size_before)
    svc = h.service
    with svc.storage.read() as rv:
        tx = store.Overlay(rv)
        tk = svc.keys.tenant(tx, T1)
        assert tk is not None
        sk = svc.keys.subject(tx, tk, SubjectId("User", "rid", ALICE))
        assert sk is not None
        kid = sk.kid
        assert len(list(rv.aux_range(store.dek_prefix(kid)))) == 2
        assert len(list(rv.aux_range(store.subject_events_prefix(kid)))) == 3
        assert rv.aux(store.state_key(kid)) is not None

    r = h.request_erasure(ALICE)
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["state"] == "pending" and req["requested_by"] == h.ids["po_a"]
    # Nothing is destroyed by a request alone.
    assert len(a.search(rid=ALICE).results) == 3
    r = h.client.post(f"/v1/scim/erasures/{req['id']}/approve", headers=h.h("po_a"))
    assert r.status_code == 403
    assert len(a.search(rid=ALICE).results) == 3

    r = h.client.post(f"/v1/scim/erasures/{req['id']}/approve", headers=h.h("po_b"))
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["state"] == "done"
    # Officers cannot read bodies, so the answer does not say how much (if anything) went.
    assert not {"deks", "events", "index_records"} & set(done)
    assert done["approved_by"] == h.ids["po_b"]
    receipt = done["receipt"]
    assert set(receipt) >= {
        "eid",
        "index",
        "leaf_hash",
        "checkpoint",
        "inclusion_proof",
        "tlog_proof",
    }

    # The public tree of the old size is byte-identical; the log only grew.
    assert snapshot(h, size_before) == before
    assert h.log.latest.size > size_before

    # Bodies are gone for good: not findable by id, shown as erased in listings and receipts.
    assert a.search(rid=ALICE).results == []
    assert a.search(xid="alice.liddell@example.org").results == []
    assert a.search(ref=ALICE).results == []
    listing = list(a.search_all())
    erased = [r for r in listing if r.erased]
    assert sorted(r.leaf.ts for r in erased) == [BASE_TS, BASE_TS + 1000, BASE_TS + MONTH_MS]
    for ev in ctx["alice"]:
        (rc,) = a.receipts(eid=ev["eid"])
        assert rc.erased and rc.index is not None
        r = h.client.get(f"/v1/scim/receipts?eid={ev['eid']}", headers=h.h("sub1"))
        assert r.json()["receipts"][0]["erased"] is True
    # Others are untouched: Bob, the group (its reference to Alice is now unlinkable), and
    # the same rid in another tenant.
    assert [r.event["rid"] for r in a.search(rid=BOB).results] == [BOB]
    (g,) = a.search(rid="g-engineering-42").results
    assert g.event["refs"][0]["pid"] == ctx["pid"]
    assert len(h.auditor("aud2").search(rid=ALICE).results) == 1
    new_pid = h.client.post(
        "/v1/scim/pseudonyms", headers=h.h("sub1"), json={"refs": [{"rt": "User", "id": ALICE}]}
    ).json()["refs"][0]
    assert base64.b64decode(new_pid["pid"]) != ctx["pid"]

    # The erasure (and the request) are logged, without personal data.
    (ev_req,) = [r.event for r in a.search(action="tlog.erasure.request").results]
    (ev_done,) = [r.event for r in a.search(action="tlog.erasure.approve").results]
    assert ev_done["eid"] == receipt["eid"]
    assert ev_done["actor"]["id"] == h.ids["po_b"]
    x = ev_done["x"]
    assert x["requested_by"] == h.ids["po_a"] and x["approved_by"] == h.ids["po_b"]
    assert x["reason"] == "gdpr-art17" and "events" not in x
    assert x["kid_hash"] == ev_req["x"]["kid_hash"]
    for ev in (ev_req, ev_done):
        text = event_to_json(ev)
        for ident in (ALICE, "alice.liddell@example.org", "admin-bob-9921", "req-a0"):
            assert ident not in text

    # In the store: no DEK, no subject record, no index record, no ciphertext is left.
    with svc.storage.read() as rv:
        assert list(rv.aux_range(store.dek_prefix(kid))) == []
        assert list(rv.aux_range(store.subject_events_prefix(kid))) == []
        assert rv.aux(store.state_key(kid)) is None  # the resource state went with it
        tx = store.Overlay(rv)
        # (the pseudonym asked for above made a new subject, with a new random kid)
        new_sk = svc.keys.subject(tx, tk, SubjectId("User", "rid", ALICE))
        assert new_sk is not None and new_sk.kid != kid
        for fld, value in ((b"r", ALICE.encode()), (b"x", b"alice.liddell@example.org")):
            cond = fld + tk.index_hash(fld, value)
            assert list(rv.aux_range(store.index_prefix(tk.tn, cond))) == []
        for ev in ctx["alice"]:
            leaf = rv.aux(store.eid_key(tk.tn, ev["eid"]))
            assert leaf is not None
            env = store.decode_envelope(rv.aux(store.envelope_key(leaf_hash(leaf))) or b"")
            assert isinstance(env, store.Tombstone)

    # Approving again is idempotent: the same erasure receipt.
    r = h.client.post(f"/v1/scim/erasures/{req['id']}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["receipt"]["eid"] == receipt["eid"]
    # A new event for the same user after erasure is a new subject, readable again.
    assert h.post_event(user_event(ALICE, req="req-after")).status_code == 200
    assert [r.event["corr"]["req"] for r in a.search(rid=ALICE).results] == ["req-after"]
    # A second request for the old keys finds nothing pending... the new subject only.
    r = h.request_erasure(ALICE)
    assert r.status_code == 201


def test_erasure_with_stale_or_missing_subject(harness: Harness) -> None:
    h = harness
    # Issue 10 part 5: an unknown subject is answered like a known one.
    unknown = h.request_erasure(ALICE)
    assert unknown.status_code == 201
    h.post_event(user_event(ALICE))
    first = h.request_erasure(ALICE)
    second = h.request_erasure(ALICE).json()["id"]
    assert set(unknown.json()) == set(first.json())
    for k in ("state", "tenant", "rt", "kind", "reason", "requested_by"):
        assert unknown.json()[k] == first.json()[k]
    first_id = first.json()["id"]
    ok = h.client.post(f"/v1/scim/erasures/{first_id}/approve", headers=h.h("po_b"))
    assert ok.status_code == 200
    # The other request refers to destroyed keys; the unknown one to none: both "done",
    # indistinguishable from the real one.
    for rid in (second, unknown.json()["id"]):
        r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
        assert r.status_code == 200 and r.json()["state"] == "done"
        assert set(r.json()) == set(ok.json())
    # Once the subject has new keys, a stale request does not touch them.
    stale = h.request_erasure(ALICE).json()["id"]
    assert (
        h.client.post(f"/v1/scim/erasures/{stale}/approve", headers=h.h("po_b")).json()["state"]
        == "done"
    )
    h.post_event(user_event(ALICE, req="req-new"))
    assert len(h.auditor().search(rid=ALICE).results) == 1


def test_erasure_request_expires(harness: Harness) -> None:
    h = harness
    h.post_event(user_event(ALICE))
    rid = h.request_erasure(ALICE).json()["id"]
    now = h.service.clock()
    h.service.clock = lambda: now + 8 * 24 * 3600 * 1000
    r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
    assert r.status_code == 409 and "expired" in r.json()["error"]


def test_erasure_by_external_id_for_events_without_rid(harness: Harness) -> None:
    h = harness
    failed = user_event(None, xid="carl.nobody@example.org", op="create", outcome="failure")
    h.post_event(failed)
    body = {"tenant": T1, "rt": "User", "xid": "carl.nobody@example.org", "reason": "dsar"}
    rid = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a")).json()["id"]
    r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
    assert r.status_code == 200
    assert h.auditor().search(xid="carl.nobody@example.org").results == []
    (rc,) = h.auditor().receipts(eid=failed["eid"])
    assert rc.erased


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"tenant": T1, "rt": "User", "rid": ALICE}, 400),
        ({"tenant": T1, "rt": "User", "rid": ALICE, "xid": "x", "reason": "a"}, 400),
        ({"tenant": T1, "rt": "User", "rid": ALICE, "reason": "Because Alice asked"}, 400),
        ({"tenant": T1, "rt": "User", "rid": 5, "reason": "gdpr"}, 400),
        ({"tenant": T1, "rt": "tlog.access", "rid": "x", "reason": "gdpr"}, 400),
        ({"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr", "extra": 1}, 400),
        ({"tenant": T1, "rt": "User", "rid": "u-unknown", "reason": "gdpr"}, 201),  # no leak
    ],
)
def test_bad_erasure_requests(harness: Harness, body: dict[str, Any], status: int) -> None:
    harness.post_event(user_event(ALICE))
    r = harness.client.post("/v1/scim/erasures", json=body, headers=harness.h("po_a"))
    assert r.status_code == status, r.text
    r = harness.client.post(
        "/v1/scim/erasures",
        content=json.dumps(body) + "x",
        headers={**harness.h("po_a"), "Content-Type": "application/json"},
    )
    assert r.status_code == 400


@pytest.mark.parametrize("rid", ["zz", "0" * 31, "0" * 32, "A" * 32, "0" * 33])
def test_unknown_erasure_ids_are_404(harness: Harness, rid: str) -> None:
    r = harness.client.post(f"/v1/scim/erasures/{rid}/approve", headers=harness.h("po_b"))
    assert r.status_code == 404
    r = harness.client.get(f"/v1/scim/erasures/{rid}", headers=harness.h("po_b"))
    assert r.status_code == 404
