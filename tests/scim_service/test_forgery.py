"""Issue 7 part 5: tenants cannot forge each other (or the log) in the public tree.

* A raw submitter cannot put a leaf shaped like a SCIM leaf into the tree (any tenant's
  ``tn``, backdated): the CBOR-map space is refused on ``/v1/entries`` and the batch path, so
  a monitor classifies every entry offline by its first byte (``entry_domain``).
* The ``tlog.`` namespace of the log's own events is refused in every spelling that
  normalises to it, and an auditor can tell the log's events from look-alikes offline.
"""

from __future__ import annotations

import base64

import pytest

from client.formats.merkle import leaf_hash
from client.scim.leaf import entry_domain, make_leaf, parse_leaf
from client.scim.reserved import event_origin, is_reserved, normalise_name

from .conftest import BASE_TS, T2, Harness, user_event


def _tree_entries(h: Harness) -> list[bytes]:
    size = h.log.latest.size
    with h.log.storage.read() as rv:
        return rv.entries(0, size)


def _forged_leaf(h: Harness) -> bytes:
    # A leaf for tenant T2 (its real tn), backdated a year, with a made-up commitment.
    tn = h.service.tenant_ref(T2)
    return make_leaf(BASE_TS - 365 * 24 * 3600 * 1000, tn, bytes(range(32)))


def test_raw_entry_shaped_like_a_scim_leaf_is_refused(harness: Harness) -> None:
    h = harness
    assert h.post_event(user_event(tenant=T2), "sub2").status_code == 200
    forged = _forged_leaf(h)
    parse_leaf(forged)  # it is a perfectly valid SCIM leaf
    size = h.log.latest.size
    r = h.client.post("/v1/entries", content=forged, headers=h.h("sub1"))
    assert r.status_code == 400, r.text
    assert "CBOR map" in r.json()["error"]
    b64 = base64.b64encode(forged).decode()
    r = h.client.post("/v1/entries/batch", json={"entries": ["aGVsbG8=", b64]}, headers=h.h("sub1"))
    assert r.status_code == 400 and "entry 1" in r.json()["error"]
    framed = len(forged).to_bytes(2, "big") + forged
    r = h.client.post(
        "/v1/entries/batch",
        content=framed,
        headers={**h.h("sub1"), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 400
    assert h.log.latest.size == size  # nothing of it was logged
    assert leaf_hash(forged) not in {leaf_hash(e) for e in _tree_entries(h)}


@pytest.mark.parametrize("first", range(0xA0, 0xC0))
def test_every_cbor_map_header_is_refused_on_the_raw_path(harness: Harness, first: int) -> None:
    # Not only the exact v1 prefix: a lenient reader must not find a map there either.
    body = bytes([first]) + b"\x62tn\x50" + bytes(16)
    r = harness.client.post("/v1/entries", content=body, headers=harness.h("sub1"))
    assert r.status_code == 400


@pytest.mark.parametrize("body", [b"hello", b"\x00", b"\x9f", b"\xc0\xa4", b"scim-event-1"])
def test_other_raw_entries_still_accepted(harness: Harness, body: bytes) -> None:
    r = harness.client.post("/v1/entries", content=body, headers=harness.h("sub1"))
    assert r.status_code == 200, r.text


def test_monitor_classifies_every_entry_offline(harness: Harness) -> None:
    h = harness
    scim_hashes = set()
    for i in range(3):
        r = h.post_event(user_event(f"u-{i}", req=f"req-{i}"))
        assert r.status_code == 200
        scim_hashes.add(base64.b64decode(r.json()["leaf_hash"]))
        raw = h.client.post("/v1/entries", content=f"raw-{i}".encode(), headers=h.h("sub1"))
        assert raw.status_code == 200
    for bad in (_forged_leaf(h), b"\xa4garbage"):
        assert h.client.post("/v1/entries", content=bad, headers=h.h("sub1")).status_code == 400
    domains = {leaf_hash(e): entry_domain(e) for e in _tree_entries(h)}
    assert {lh for lh, d in domains.items() if d == "scim"} == scim_hashes
    assert sorted(domains.values()).count("raw") == 3
    assert "invalid" not in domains.values()
    # What a monitor flags if a log ever broke the rule:
    assert entry_domain(b"\xa4garbage") == "invalid"
    assert entry_domain(_forged_leaf(h)) == "scim"
    assert entry_domain(b"raw") == "raw"


LOOKALIKES = [
    "tlog.access",
    "TLOG.access",
    "Tlog.erasure",
    "tlog\u2024access",  # ONE DOT LEADER
    "tlog\uff0eaccess",  # FULLWIDTH FULL STOP
    "tlog\u3002access",  # IDEOGRAPHIC FULL STOP
    "tlog\uff61access",  # HALFWIDTH IDEOGRAPHIC FULL STOP
    "tlog\ufe52access",  # SMALL FULL STOP
    "tlog\u00b7access",  # MIDDLE DOT
    "\uff34\uff2c\uff2f\uff27.access",  # fullwidth letters
    "t\u200blog.access",  # zero-width space
    "tl\u043eg.access",  # Cyrillic o
    "tlog.",
    "tlog",
]


@pytest.mark.parametrize("rt", LOOKALIKES)
def test_reserved_namespace_refused_in_every_spelling(harness: Harness, rt: str) -> None:
    assert is_reserved(rt)
    ev = user_event()
    ev["rt"] = rt
    r = harness.post_event(ev)
    assert r.status_code == 400, (rt, r.text)
    assert "reserved" in r.json()["error"]


@pytest.mark.parametrize("action", ["tlog.access.search", "tlog.erasure.approve", "t1og.access.x"])
def test_reserved_actions_refused(harness: Harness, action: str) -> None:
    # Action names are lowercase ASCII (event validation); within that, look-alikes remain.
    ev = user_event()
    ev["acts"] = [{"a": action, "ocsf": [6003, 2]}]
    r = harness.post_event(ev)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("name", ["User", "Group", "tlogger", "tlog_x", "xtlog.access", "Tlogs"])
def test_ordinary_names_are_not_reserved(name: str) -> None:
    assert not is_reserved(name), normalise_name(name)


def test_auditor_tells_the_logs_events_from_lookalikes(harness: Harness) -> None:
    h = harness
    assert h.post_event(user_event()).status_code == 200
    a = h.auditor()
    a.search(rid="u-alice-7f3a")  # appends a tlog.access event
    page = a.search(action="tlog.access.search")
    assert page.results and all(r.origin == "log" for r in page.results)
    tenant_ev = a.search(rid="u-alice-7f3a").results[0]
    assert tenant_ev.origin == "tenant"
    # Offline, on an event a log from before this rule may still hold:
    forged = dict(page.results[0].event or {})
    forged["rt"] = "TLOG.access"
    assert event_origin(forged) == "lookalike"
    forged["rt"] = "tlog.access"
    forged["acts"] = [{"a": "tlog\uff0eaccess.search", "ocsf": [6003, 2]}]
    assert event_origin(forged) == "lookalike"
