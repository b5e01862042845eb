"""Review 9: the nonce goes to the submitter of an event, not with the log's own events.

The submit answers carry each event's commitment nonce for its submitter
(``test_answer_nonce``). The log's own events (an erasure's request and approval, a hold
placed or released) are staged by the log itself; ``Accepted.nonce`` is documented as None
for them, but their receipts in the officers' answers carried the nonce: an officer (who
cannot read bodies) got the opening of a commitment to an event body. The approval's
nonce is meant to be public only inside the erasure certificate, which has its own route.
"""

from __future__ import annotations

from .conftest import T1, Harness, user_event


def test_officer_answers_carry_no_nonce(harness: Harness) -> None:
    h = harness
    assert h.post_event(user_event("u-own")).status_code == 200
    r = h.request_erasure("u-own")
    assert r.status_code == 201, r.text
    req = r.json()
    assert "receipt" in req and "nonce" not in req["receipt"], req["receipt"]
    r = h.client.post(f"/v1/scim/erasures/{req['id']}/approve", headers=h.h("po_b"))
    assert r.status_code == 200, r.text
    assert "nonce" not in r.json()["receipt"]
    r = h.client.post(
        "/v1/scim/holds", json={"tenant": T1, "reason": "litigation-42"}, headers=h.h("po_a")
    )
    assert r.status_code in (200, 201), r.text
    hold = r.json()
    assert "nonce" not in hold.get("receipt", {}), hold
    # The certificate still proves the approval with its nonce (its own, public route).
    cert = h.client.get(f"/v1/scim/erasures/{req['id']}/certificate", headers=h.h("po_a"))
    assert cert.status_code == 200 and "nonce" in cert.json()
