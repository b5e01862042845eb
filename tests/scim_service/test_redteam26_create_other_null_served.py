"""A create's ``x.result.other`` null (its answer stored values otherwise than asked in a
form the event cannot hold, red team 26) is an event the log accepts, logs and judges: the
create, then a PUT stating the asked values, is an update, not a noop, on both backends."""

from __future__ import annotations

from tests.adapters.recorded import exchange_event

from .conftest import T1, Harness

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def test_a_create_whose_other_is_null_is_logged_and_judged(harness: Harness) -> None:
    name = {"givenName": "Ann", "familyName": "Lee"}
    body = {"schemas": [USER], "userName": "ann", "active": True, "name": name}
    stored = {**body, "id": "A", "name": {"givenName": 2**60, "familyName": "Lee"}}
    created = exchange_event("POST", "/Users", body, 201, stored)
    assert created["x"]["result"]["other"] is None
    created["tenant"] = T1  # the adapter's test config names another
    r = harness.post_event(created)
    assert r.status_code in (200, 201), r.text
    put = exchange_event("PUT", "/Users/A", body, 200, {**body, "id": "A"})
    put["tenant"] = T1
    r = harness.post_event(put)
    assert r.status_code in (200, 201), r.text
    found = harness.auditor().search(rid="A").results
    assert [f.event["op"] for f in found if f.event is not None] == ["create", "replace"]
    assert found[0].event is not None and found[0].event["x"]["result"]["other"] is None
    effect = found[1].effect
    assert effect is not None and [a["a"] for a in effect["acts"]] == ["user.update"], effect
