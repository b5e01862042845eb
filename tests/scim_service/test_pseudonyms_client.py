"""Adapters' member pseudonyms come from the log, under each member's own key."""

from __future__ import annotations

import httpx
import pytest

from client.adapters.pseudonyms import LogPseudonyms
from client.scim.actions import parse_request
from client.scim.cbor import EventFormatError

from .conftest import T1, URL, Harness, user_event


def test_pids_come_from_the_log_and_keep_ids_out(harness: Harness) -> None:
    pids = LogPseudonyms(URL, harness.tok["sub1"], http=harness.client)
    a = pids("User", "u-alice-7f3a")
    assert len(a) == 16
    assert pids("User", "u-alice-7f3a") == a  # stable (and cached)
    assert pids("User", "u-bob") != a
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": "u-alice-7f3a"}]}],
    }
    intent = parse_request("patch", "Group", body, ref_pid=pids)
    assert "u-alice-7f3a" not in repr(intent)
    assert any(r["pid"] == a for r in intent.refs)
    assert harness.service.keys is not None and T1


def test_log_down_means_no_plaintext_fallback() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    pids = LogPseudonyms(
        "http://log.invalid", "tlog_x", http=httpx.Client(transport=httpx.MockTransport(down))
    )
    with pytest.raises(EventFormatError):
        pids("User", "u-carol")
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": "u-carol"}]}],
    }
    with pytest.raises(EventFormatError):
        parse_request("patch", "Group", body, ref_pid=pids)


def test_a_cached_pid_of_an_erased_user_expires(harness: Harness) -> None:
    """After Alice is erased, a user created again with her id has another pid at the log.
    The adapter's cache hands out the erased one's pid for at most its TTL, then the new one
    (else the new user's group events would link to the erased user's for ever)."""
    h = harness
    assert h.post_event(user_event()).status_code == 200  # u-alice-7f3a
    now = [0.0]
    pids = LogPseudonyms(URL, h.tok["sub1"], http=h.client, cache_ttl=60, clock=lambda: now[0])
    old = pids("User", "u-alice-7f3a")
    r = h.request_erasure("u-alice-7f3a")
    assert r.status_code == 201, r.text
    r = h.client.post(f"/v1/scim/erasures/{r.json()['id']}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done", r.text
    fresh = LogPseudonyms(URL, h.tok["sub1"], http=h.client)("User", "u-alice-7f3a")
    assert fresh != old  # a new key at the log
    now[0] = 59.0
    assert pids("User", "u-alice-7f3a") == old  # cached, within the TTL
    now[0] = 61.0
    assert pids("User", "u-alice-7f3a") == fresh
    assert pids.calls == 2
