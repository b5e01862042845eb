"""Numbered member operations (``i`` on refs and on clearing mods) through the real log.

A PATCH with two replaces of the members, or a clear after other member operations, is
numbered by the adapter so the log can apply it exactly (tests/scim_service/
test_members_in_order.py checks the judging against a model). Here: such events are
accepted by every ingestion path (single JSON and CBOR, batch JSON), the effect the
auditor reads (and verifies against the leaf's commitment) is the exact one, and the
members' pseudonyms find the event.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from client.scim import event_to_json

from . import members_model
from .conftest import T1, Harness

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
NAMES = ("u1", "u2", "u3", "u4", "u5")


def pseudonyms(h: Harness) -> dict[str, bytes]:
    """The members' pseudonyms, as an adapter gets them from the log."""
    r = h.client.post(
        "/v1/scim/pseudonyms",
        headers=h.h("sub1"),
        json={"refs": [{"rt": "User", "id": n} for n in NAMES]},
    )
    assert r.status_code == 200, r.text
    return {n: base64.b64decode(x["pid"]) for n, x in zip(NAMES, r.json()["refs"], strict=True)}


def group_event(op: str, body: Any, req: str, rid: str, pids: dict[str, bytes]) -> dict[str, Any]:
    return members_model.group_event_of(T1, op, body, req, rid, pids)


def ops(*pairs: tuple[str, list[str]]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for op, rids in pairs:
        if op == "clear":
            out.append({"op": "remove", "path": "members"})
        else:
            out.append({"op": op, "path": "members", "value": [{"value": r} for r in rids]})
    return {"schemas": [PATCH_OP], "Operations": out}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("how", ["json", "cbor", "batch"])
def test_numbered_member_operations_are_judged_exactly_by_the_log(
    harness: Harness, how: str
) -> None:
    h = harness
    rid = f"g-num-{how}"
    pids = pseudonyms(h)
    create = group_event(
        "create", {"displayName": "g", "members": [{"value": "u3"}]}, "c", rid, pids
    )
    assert h.post_event(create).status_code == 200
    # [add u1, remove all, add u2], then [replace [u1, u4], replace [u5]]
    first = group_event(
        "patch", ops(("add", ["u1"]), ("clear", []), ("add", ["u2"])), "p1", rid, pids
    )
    second = group_event(
        "patch", ops(("replace", ["u1", "u4"]), ("replace", ["u5"])), "p2", rid, pids
    )
    assert any("i" in r for r in first["refs"]) and any("i" in r for r in second["refs"])
    if how == "batch":
        body = {"events": [json.loads(event_to_json(e)) for e in (first, second)]}
        r = h.post_raw(json.dumps(body).encode(), "application/json", path="/v1/scim/events/batch")
        assert r.status_code == 200, r.text
    else:
        for ev in (first, second):
            r = h.post_event(ev, cbor=how == "cbor")
            assert r.status_code == 200, r.text
    # u2 is the only member after p1; a removal of u3 afterwards would change nothing.
    third = group_event("patch", ops(("remove", ["u2"])), "p3", rid, pids)
    assert h.post_event(third).status_code == 200
    found = sorted(h.auditor().search_all(rid=rid), key=lambda f: f.index)
    assert [f.event["corr"]["req"] for f in found if f.event] == ["c", "p1", "p2", "p3"]
    effects = {f.event["corr"]["req"]: f.effect for f in found if f.event}
    assert all(f.effect_attested for f in found)
    named = sorted((r["op"], r["pid"]) for r in effects["p1"]["refs"])
    u = {n: b64(p) for n, p in pids.items()}
    assert named == sorted(
        [("add", u["u1"]), ("remove", u["u1"]), ("remove", u["u3"]), ("add", u["u2"])]
    )
    named = sorted((r["op"], r["pid"]) for r in effects["p2"]["refs"])
    # replace [u1, u4] over {u2}, then replace [u5]: u2 goes, u1 and u4 come and go, u5 stays
    assert ("remove", u["u2"]) in named and ("add", u["u5"]) in named
    assert ("remove", u["u5"]) not in named
    # p3 removes u2, who is no longer a member: the log says it changed nothing.
    assert [a["a"] for a in effects["p3"]["acts"]] == ["group.noop"]
    # Every member named in a request finds it by pseudonym (u4 only in p2).
    by_u4 = [f.event["corr"]["req"] for f in h.auditor().search_all(ref="u4") if f.event]
    assert by_u4 == ["p2"]
