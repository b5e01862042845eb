"""SCIM audit events as OCSF records (Open Cybersecurity Schema Framework 1.1).

One record per action of an event (``acts[]``: each already names its OCSF class and
activity, e.g. ``user.deactivate`` is Account Change 3001 / Disable 5, ``group.member.add``
Group Management 3006 / Add User 3). An event without actions (a failed or skipped request)
gets one record whose class follows its resource type: ``User`` Account Change (3001),
``Group`` Group Management (3006), anything else Entity Management (3004), with the activity
from the operation. An erased event has no body left: it becomes one Base Event (class 0)
that only carries its references.

Every record points back to its proof: ``metadata.uid`` is the event id, ``metadata.log_name``
the log's origin, ``metadata.logged_time`` the log time from the public leaf, and
``unmapped.tlog`` holds the leaf index, leaf hash, tree size, root hash and the signed
checkpoint note the event was verified against (``tlog-client verify`` can check a receipt
built from them).
"""

from __future__ import annotations

from typing import Any

from client.formats.note import b64encode
from client.net.scim_audit import AuditedEvent

__all__ = ["OCSF_VERSION", "to_ocsf"]

OCSF_VERSION = "1.1.0"

CLASSES: dict[int, tuple[str, int, str]] = {
    0: ("Base Event", 0, "Uncategorized"),
    3001: ("Account Change", 3, "Identity & Access Management"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    3004: ("Entity Management", 3, "Identity & Access Management"),
    3005: ("User Access Management", 3, "Identity & Access Management"),
    3006: ("Group Management", 3, "Identity & Access Management"),
    6003: ("API Activity", 6, "Application Activity"),
}
ACTIVITIES: dict[int, dict[int, str]] = {
    3001: {
        1: "Create",
        2: "Enable",
        3: "Password Change",
        4: "Password Reset",
        5: "Disable",
        6: "Delete",
        7: "Attach Policy",
        8: "Detach Policy",
        9: "Lock",
        10: "MFA Factor Enable",
        11: "MFA Factor Disable",
    },
    3004: {1: "Create", 2: "Read", 3: "Update", 4: "Delete"},
    3006: {
        1: "Assign Privileges",
        2: "Revoke Privileges",
        3: "Add User",
        4: "Remove User",
        5: "Delete",
        6: "Create",
    },
    6003: {1: "Create", 2: "Read", 3: "Update", 4: "Delete"},
}
_FALLBACK = {
    "User": (3001, {"create": 1, "delete": 6}),
    "Group": (3006, {"create": 6, "delete": 5}),
}
_ENTITY = {"create": 1, "replace": 3, "patch": 3, "delete": 4}
_STATUS = {"success": (1, "Success"), "failure": (2, "Failure")}


def _classes(ev: dict[str, Any]) -> list[tuple[int, int, str | None]]:
    acts = ev.get("acts")
    if acts:
        return [(a["ocsf"][0], a["ocsf"][1], a["a"]) for a in acts]
    cls, ops = _FALLBACK.get(ev["rt"], (3004, _ENTITY))
    return [(cls, ops.get(ev["op"], 99), None)]


def _tlog_ref(ae: AuditedEvent) -> dict[str, Any]:
    return {
        "index": ae.index,
        "leaf_hash": b64encode(ae.leaf_hash),
        "tree_size": ae.tree_size,
        "root_hash": b64encode(ae.checkpoint.root_hash),
        "checkpoint": ae.checkpoint_note,
    }


def _base(cls: int, activity: int, ts: int, origin: str, tenant: str) -> dict[str, Any]:
    name, cat, cat_name = CLASSES.get(cls, ("Unknown", cls // 1000, "Unknown"))
    act_name = ACTIVITIES.get(cls, {}).get(activity, "Other" if activity == 99 else "Unknown")
    return {
        "class_uid": cls,
        "class_name": name,
        "category_uid": cat,
        "category_name": cat_name,
        "activity_id": activity,
        "activity_name": act_name,
        "type_uid": cls * 100 + activity,
        "time": ts,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "tlog", "vendor_name": "tlog"},
            "log_name": origin,
            "tenant_uid": tenant,
        },
    }


def to_ocsf(ae: AuditedEvent, *, origin: str, tenant: str) -> list[dict[str, Any]]:
    """The OCSF records of one verified event (erased: one Base Event without a body)."""
    if ae.event is None:
        rec = _base(0, 0, ae.leaf.ts, origin, tenant)
        rec["metadata"]["logged_time"] = ae.leaf.ts
        rec.update(
            severity_id=1,
            status_id=0,
            message="event erased (crypto-shredded); only its proof remains",
            unmapped={"tlog": {**_tlog_ref(ae), "erased": True}},
        )
        return [rec]
    ev = ae.event
    out = []
    status_id, status = _STATUS.get(ev["outcome"], (99, ev["outcome"].capitalize()))
    for cls, activity, action in _classes(ev):
        rec = _base(cls, activity, ev["ts"], origin, tenant)
        md = rec["metadata"]
        md.update(uid=ev["eid"], correlation_uid=ev["corr"]["req"], logged_time=ae.leaf.ts)
        # Who acted: the actor as submitted (opened from under the actor's own keys when
        # the log stored it as a pseudonym), or only its kind once the actor was erased.
        actor = ae.who or {"kind": ev["actor"]["kind"]}
        user: dict[str, Any] = {"type": actor["kind"]}
        if "id" in actor:
            user["uid"] = actor["id"]
        if "name" in actor:
            user["name"] = actor["name"]
        if ae.who is None:
            user["name"] = "(unlinked: the actor was erased)"
        rec["actor"] = {"user": user}
        if "src" in ev:
            if "ip" in ev["src"]:
                rec["src_endpoint"] = {"ip": ev["src"]["ip"]}
        req = ev["req"]
        http: dict[str, Any] = {"http_method": req["m"], "url": {"path": req["p"]}}
        if "src" in ev and "ua" in ev["src"]:
            http["user_agent"] = ev["src"]["ua"]
        rec["http_request"] = http
        rec["http_response"] = {"code": ev["res"]["st"]}
        target: dict[str, Any] = {"type": ev["rt"]}
        if "rid" in ev:
            target["uid"] = ev["rid"]
        if "xid" in ev:
            target["name"] = ev["xid"]
        if cls == 3001:
            rec["user"] = target
        elif cls == 3006:
            rec["group"] = target
        elif cls in (3004, 0):
            rec["entity"] = target
        else:
            rec["resources"] = [target]
        rec["severity_id"] = 1 if ev["outcome"] == "success" else 3
        rec["status_id"] = status_id
        rec["status"] = status
        if "err" in ev:
            rec["status_detail"] = ev["err"].get("reason") or ev["err"].get("scim_type", "")
        what = action or f"{ev['op']} {ev['rt']}"
        rec["message"] = f"{what} {ev.get('rid') or ev.get('xid') or ''}".strip()
        rec["unmapped"] = {
            "tlog": {
                **_tlog_ref(ae),
                "eid": ev["eid"],
                "op": ev["op"],
                "rt": ev["rt"],
                "action": action,
                "outcome": ev["outcome"],
            },
        }
        out.append(rec)
    return out
