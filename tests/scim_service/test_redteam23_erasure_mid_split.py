"""Red team 23, held (a guard): a member's erasure while a split request on its group is
half-delivered, the request's path-less clear waiting in the group's state for its place
(faith22's ``pclear``, ``pclear_i``, ``maybe_members``). Every later part is taken (no 5xx,
which a relay retries for ever), the group's state encodes and decrypts, and the erased
member, named again by its new pseudonym, is not judged against the old one: its removal
is no ``noop``."""

from __future__ import annotations

import base64
from typing import Any

from client.scim.event import uuid7_text

from . import members_model
from .actors import erase
from .conftest import T1, Harness, user_event

ALICE, BOB = "u-alice-23", "u-bob-23"


def _pids(h: Harness, *rids: str) -> dict[str, bytes]:
    r = h.client.post(
        "/v1/scim/pseudonyms",
        headers=h.h("sub1"),
        json={"refs": [{"rt": "User", "id": rid} for rid in rids]},
    )
    assert r.status_code == 200, r.text
    return {
        rid: base64.b64decode(got["pid"]) for rid, got in zip(rids, r.json()["refs"], strict=True)
    }


def _group_event(op: str, body: Any, req: str, pids: dict[str, bytes]) -> dict[str, Any]:
    return members_model.group_event_of(T1, op, body, req, "g-23", pids)


def _patch(*ops: tuple[str, list[str]]) -> dict[str, Any]:
    return {
        "schemas": [members_model.PATCH_OP],
        "Operations": [members_model.form_op(op, rids) for op, rids in ops],
    }


def test_redteam23_a_member_erased_while_a_split_request_waits_is_taken(
    harness: Harness,
) -> None:
    h = harness
    for rid in (ALICE, BOB):
        assert h.post_event(user_event(rid, req=f"c-{rid}", op="create")).status_code == 200
    old = _pids(h, ALICE, BOB)
    body = {"displayName": "g", "members": [{"value": ALICE}, {"value": BOB}]}
    assert h.post_event(_group_event("create", body, "g0", old)).status_code == 200
    whole = _group_event(
        "patch", _patch(("add", [BOB]), ("pclear", []), ("remove", [ALICE])), "big", old
    )
    n = len(members_model.split_items(whole))
    parts, _ = members_model.split_parts(whole, list(range(1, n)))  # one item a part
    assert len(parts) >= 3
    for part in parts:
        part["eid"] = uuid7_text()  # each part its own event, as the adapter's split
    for part in parts[:-1]:  # the path-less clear waits from its mods entry on
        assert h.post_event(part).status_code == 200
    erase(h, ALICE)
    r = h.post_event(parts[-1])
    assert r.status_code == 200, r.text
    new = _pids(h, ALICE)
    assert new[ALICE] != old[ALICE]
    remove = _group_event("patch", _patch(("remove", [ALICE])), "after", new)
    assert h.post_event(remove).status_code == 200
    found = h.auditor().search(rid="g-23").results
    assert all(f.event is not None for f in found)  # no group event lost to the erasure
    (last,) = [f for f in found if f.event["corr"]["req"] == "after"]
    assert last.effect is not None
    assert [a["a"] for a in last.effect["acts"]] != ["group.noop"], last.effect
