"""The submitter's answer carries the leaf's commitment nonce, so whoever submitted an event
can check that the leaf the log proves commits to exactly that event (``c`` =
HMAC(nonce, det_cbor(event))): single and batch answers, retries (the original's nonce), and
a retry after the subject's erasure (no nonce: the body is gone)."""

from __future__ import annotations

import base64
import json

import pytest

from client.formats.merkle import VerificationError, leaf_hash
from client.scim.event import event_to_json
from client.scim.leaf import verify_commitment

from .conftest import Harness, user_event
from .helpers import stored_event


def _check(ev: dict, leaf_b64: str, nonce_b64: str, lh_b64: str) -> None:
    leaf = base64.b64decode(leaf_b64)
    assert base64.b64encode(leaf_hash(leaf)).decode() == lh_b64
    verify_commitment(leaf, ev, base64.b64decode(nonce_b64))


def test_single_answer_nonce_proves_the_leaf_commits_to_the_event(harness: Harness) -> None:
    h = harness
    ev = user_event("u-nonce", req="r-1")
    d = h.post_event(ev).json()
    _check(stored_event(ev, d), d["leaf"], d["nonce"], d["leaf_hash"])
    other = user_event("u-other", req="r-1")
    with pytest.raises(VerificationError):
        verify_commitment(base64.b64decode(d["leaf"]), other, base64.b64decode(d["nonce"]))
    again = h.post_event(ev).json()  # a retry: the original leaf and its nonce
    assert again["duplicate"] is True and again["nonce"] == d["nonce"]
    assert again["actor"] == d["actor"]  # and the actor as stored
    assert again["leaf"] == d["leaf"]


def test_batch_answer_nonces(harness: Harness) -> None:
    h = harness
    evs = [user_event(f"u-b{i}", req=f"r-b{i}") for i in range(3)]
    body = {"events": [json.loads(event_to_json(e)) for e in evs]}
    r = h.client.post("/v1/scim/events/batch", headers=h.h("sub1"), json=body)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["eid"] for x in results] == [e["eid"] for e in evs]
    for ev, x in zip(evs, results, strict=True):
        _check(stored_event(ev, x), x["leaf"], x["nonce"], x["leaf_hash"])
    # the same batch again: duplicates with the originals' nonces
    again = h.client.post("/v1/scim/events/batch", headers=h.h("sub1"), json=body).json()
    assert [x["nonce"] for x in again["results"]] == [x["nonce"] for x in results]
    assert all(x["duplicate"] for x in again["results"])


def test_no_nonce_once_the_body_is_erased(harness: Harness) -> None:
    h = harness
    ev = user_event("u-gone", req="r-g")
    assert "nonce" in h.post_event(ev).json()
    req = h.request_erasure("u-gone").json()
    done = h.client.post(f"/v1/scim/erasures/{req['id']}/approve", headers=h.h("po_b"))
    assert done.status_code == 200, done.text
    again = h.post_event(ev).json()
    assert again["duplicate"] is True and "nonce" not in again
