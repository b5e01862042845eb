"""An access event's query digest (``req.dig``) is one only the log can recompute, and no
two different queries share it.

The query was joined as ``k=v&k=v`` unescaped, so ``rid=a&b=c`` as one value and two
parameters gave the same text; and for a tenant with no keys yet the digest was
SHA-256(tn ‖ query), where ``tn`` is public (``GET /v1/scim/tenant-ref``, the public
leaves): anyone reading the access event could check a guessed query (a userName, an
e-mail) against it."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qsl

import pytest

import tlog.scim.access as access_module
from tlog.scim.access import query_text
from tlog.scim.store import Overlay

from .conftest import T1, user_event

ALICE = "u-alice-7f3a"


def test_no_two_queries_share_a_text() -> None:
    one = query_text([("rid", "a&since=1")])
    two = query_text([("rid", "a"), ("since", "1")])
    assert one != two
    assert query_text([("rid", "a=b")]) != query_text([("rid=a", "b")])
    assert query_text([("since", "1"), ("rid", "a")]) == query_text([("rid", "a"), ("since", "1")])


def _access_dig(harness: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes, bytes]:
    """The digest of the first search's access event, the text it is over (as the log
    made it), and the tenant's public tn."""
    texts: list[bytes] = []

    def recorded(query: Any) -> bytes:
        texts.append(query_text(query))
        return texts[-1]

    monkeypatch.setattr(access_module, "query_text", recorded)
    a = harness.auditor()
    a.search(rid=ALICE)
    monkeypatch.undo()
    (found,) = a.search(action="tlog.access.search").results
    ev = found.event
    assert ev is not None and ev["x"]["what"] == "search"
    r = harness.client.get("/v1/scim/tenant-ref", headers=harness.h("aud1"))
    assert texts and ALICE.encode() in texts[0]
    return ev["req"]["dig"], texts[0], base64.b64decode(r.json()["tn"])


def test_a_tenant_without_keys_gets_a_digest_nobody_else_can_recompute(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read of a tenant with no events: its query digest is not computable from
    the public tn and the query, whatever the encoding."""
    dig, text, tn = _access_dig(harness, monkeypatch)
    old = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(text.decode()))).encode()
    for t in (old, text):
        assert dig != hashlib.sha256(tn + t).digest()
    assert dig == harness.service.keys.unkeyed_tenant_digest(T1, text)


def test_a_tenant_with_keys_keeps_the_index_key_digest(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the tenant has keys, the digest is HMAC under its index key, as before."""
    assert harness.post_event(user_event(ALICE)).status_code == 200
    dig, text, _ = _access_dig(harness, monkeypatch)
    svc = harness.service
    with svc.storage.read() as rv:
        tk = svc.keys.tenant(Overlay(rv), T1)
    assert tk is not None
    assert dig == tk.keyed_digest(text)
