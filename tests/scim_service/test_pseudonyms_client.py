"""Adapters' member pseudonyms come from the log, under each member's own key."""

from __future__ import annotations

import httpx
import pytest

from client.adapters.pseudonyms import LogPseudonyms
from client.scim.actions import parse_request
from client.scim.cbor import EventFormatError

from .conftest import T1, URL, Harness


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
