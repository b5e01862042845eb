"""Group PATCH events as the adapter records them, and the same with a ``mods[].form``
misplaced (shared by the tests of the intake's form rule: red team 19, faith20, red
team 21)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from client.scim import new_event
from client.scim.actions import parse_request

from .conftest import T1

__all__ = ["form_event", "misplace_form", "user_misplaced_form"]

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def form_event(req: str) -> dict[str, Any]:
    """A PATCH of a group as the adapter records it: its members cleared by path (the
    entry with ``form``), then one added."""
    body = {
        "schemas": [PATCH_OP],
        "Operations": [
            {"op": "replace", "path": "members"},
            {"op": "add", "path": "members", "value": [{"value": "u1"}]},
        ],
    }
    intent = parse_request(
        "patch", "Group", body, ref_pid=lambda _rt, rid: hashlib.sha256(rid.encode()).digest()[:16]
    )
    return new_event(  # type: ignore[no-any-return]
        tenant=T1, sp="app-1", op="patch", rt="Group", rid="g-1",
        actor={"kind": "user", "id": "admin-1"}, corr=req,
        req={"m": "PATCH", "p": "/Groups/g-1", "dig": bytes(32), "len": 10},
        res=200, outcome="success", **intent.event_fields(),
    )  # fmt: skip


def misplace_form(ev: dict[str, Any], how: str) -> dict[str, Any]:
    ev = json.loads(json.dumps(ev, default=bytes.hex))  # a copy (bytes restored below)
    ev["req"]["dig"] = bytes(32)
    ev["refs"] = [{**r, "pid": bytes.fromhex(r["pid"])} for r in ev["refs"]]
    mods = ev["mods"]
    assert mods[0].get("form") == "path" and "form" not in mods[1], mods
    if how == "on the add":
        mods[1]["form"] = "path"
    elif how == "with an old side":
        mods[0]["old"] = '[{"value":"x"}]'
    elif how == "on another attribute":
        mods[0]["attr"] = "displayName"
    elif how == "on a remove":
        mods[0]["op"] = "remove"
    return ev


def user_misplaced_form(rid: str, req: str) -> dict[str, Any]:
    """A PATCH of User ``rid`` clearing its roles by path then adding one, with a ``form``
    misplaced on the add (what the intake refuses unless the log already holds it)."""
    body = {
        "schemas": [PATCH_OP],
        "Operations": [
            {"op": "replace", "path": "roles"},
            {"op": "add", "path": "roles", "value": [{"value": "a"}]},
        ],
    }
    fields = parse_request("patch", "User", body).event_fields()
    fields["mods"][1]["form"] = "path"
    return new_event(  # type: ignore[no-any-return]
        tenant=T1, sp="app-1", op="patch", rt="User", rid=rid,
        actor={"kind": "user", "id": "admin-1"}, corr=req,
        req={"m": "PATCH", "p": f"/Users/{rid}", "dig": bytes(32), "len": 10},
        res=200, outcome="success", **fields,
    )  # fmt: skip
