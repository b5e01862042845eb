"""mend12 (found by review13): an event whose envelope is still there but whose own DEK is
gone (the subject's data key of that month shredded, without the envelope having been
replaced by a tombstone) cannot be read by anyone: a search lists it as erased, but
``/v1/scim/receipts`` said ``"erased": false`` for it. The receipt now says what the search
says, by event id and by request id, for the submitter and the auditor; the events of
another subject keep their keys and stay not erased."""

from __future__ import annotations

from tlog.scim import store
from tlog.scim.keys import SubjectId

from .actors import search_raw
from .conftest import T1, Harness, user_event

ALICE, BOB = "u-alice-m12", "u-bob-m12"


def _receipts(h: Harness, who: str, **q: str) -> list[dict[str, object]]:
    r = h.client.get("/v1/scim/receipts", params=q, headers=h.h(who))
    assert r.status_code == 200, r.text
    return r.json()["receipts"]  # type: ignore[no-any-return]


def _drop_deks(h: Harness, rid: str) -> int:
    """Delete every DEK of User ``rid`` and nothing else (its envelopes stay envelopes)."""

    def stage(tx: store.Overlay) -> int:
        tk = h.service.keys.tenant(tx, T1)
        assert tk is not None
        sk = h.service.keys.subject(tx, tk, SubjectId("User", "rid", rid))
        assert sk is not None
        deks = [k for k, _ in tx.scan(store.dek_prefix(sk.kid))]
        for k in deks:
            tx.delete(k)
        return len(deks)

    return h.service.write(stage)


def test_an_envelope_whose_dek_is_gone_is_erased_in_its_receipt(harness: Harness) -> None:
    h = harness
    alice = user_event(ALICE, xid="alice.m12@example.org", req="req-m12-a")
    bob = user_event(BOB, xid="bob.m12@example.org", req="req-m12-b")
    for ev in (alice, bob):
        assert h.post_event(ev).status_code in (200, 201)
    for who in ("sub1", "aud1"):
        assert [r["erased"] for r in _receipts(h, who, eid=alice["eid"])] == [False]
    assert _drop_deks(h, ALICE) >= 1
    (found,) = search_raw(h, rid=ALICE)["results"]
    assert found["erased"] is True and "event" not in found
    for who in ("sub1", "aud1"):
        (rc,) = _receipts(h, who, eid=alice["eid"])
        assert rc["erased"] is True, rc
        assert rc["eid"] == alice["eid"] and "pending" not in rc
        assert [r["erased"] for r in _receipts(h, who, req="req-m12-a")] == [True]
        assert [r["erased"] for r in _receipts(h, who, eid=bob["eid"])] == [False]
    (rc_client,) = h.auditor().receipts(eid=alice["eid"])
    assert rc_client.erased and rc_client.index is not None
    (live,) = search_raw(h, rid=BOB)["results"]
    assert "event" in live
