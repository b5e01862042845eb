"""A clear that is a request's first operation on members or the manager, in a request
split into linked parts: the adapter does not number it (it comes first, so a whole request
is exact without a number), and the split may put its ``mods`` entry in any part. The log
knows it is first when no earlier part of the same request touched the attribute, and the
result is then exact; when the log cannot know that, it says so (the set is not known)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim import new_event
from client.scim.actions import parse_request
from tlog.scim.effects import classify, mark_members_known, members_known

GEN = 1
POOL = ("u1", "u2", "u3", "u4")
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def pid_of(_rt: str, rid: str) -> bytes:
    return hashlib.sha256(rid.encode()).digest()[:16]


def event(rt: str, rid: str, op: str, body: Any, req: str) -> dict[str, Any]:
    intent = parse_request(op, rt, json.dumps(body).encode(), ref_pid=pid_of)
    ev: dict[str, Any] = new_event(
        tenant="acme", sp="app-1", op=op, rt=rt, rid=rid,
        actor={"kind": "user", "id": "admin-1"}, corr=req,
        req={"m": "POST" if op == "create" else "PATCH", "p": f"/{rt}s/{rid}",
             "dig": bytes(32), "len": 10},
        res=200, outcome="success", patch=intent.patch, mods=intent.mods, refs=intent.refs,
        acts=intent.acts,
    )  # fmt: skip
    return ev


def judge(state: Any, ev: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    effect, new, _ = classify(members_known(state, GEN), ev)
    assert effect is not None
    mark_members_known(new, GEN)
    return effect, new


def split(whole: dict[str, Any], cuts: list[int]) -> list[dict[str, Any]]:
    """``whole`` as the adapter's split sends it: patch, mods, refs items in that order,
    cut at ``cuts``."""
    items = [(kind, item) for kind in ("patch", "mods", "refs") for item in whole.get(kind, ())]
    bounds = sorted({c for c in cuts if 0 < c < len(items)})
    chunks = [items[a:b] for a, b in itertools.pairwise([0, *bounds, len(items)])]
    parts = []
    for n, chunk in enumerate(chunks):
        ev = {k: v for k, v in whole.items() if k not in ("patch", "mods", "refs")}
        for kind, item in chunk:
            ev.setdefault(kind, []).append(item)
        ev["x"] = {"part": n, "parts": len(chunks)}
        parts.append(ev)
    return parts


def mods_part(parts: list[dict[str, Any]], attr: str) -> int:
    """The part that carries the clear's ``mods`` entry."""
    for n, ev in enumerate(parts):
        if any(m.get("new") == "null" and m["attr"].endswith(attr) for m in ev.get("mods", ())):
            return n
    raise AssertionError("no clear")


_MEMBER_OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "replace"]),
        st.lists(st.sampled_from(POOL), min_size=1, max_size=3),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    start=st.sets(st.sampled_from(POOL)),
    clear=st.sampled_from(["remove", "replace"]),
    ops=_MEMBER_OPS,
    other=st.integers(0, 3),
    cuts=st.lists(st.integers(0, 30)),
)
def test_a_first_clear_of_members_in_any_part_is_exact(
    start: set[str], clear: str, ops: list[tuple[str, list[str]]], other: int, cuts: list[int]
) -> None:
    """``[displayName ×other, clear members, then member operations]``, cut anywhere: the
    group's members are known afterwards, and are the SP's."""
    _, state = judge(
        None,
        event("Group", "g-1", "create",
              {"displayName": "g", "members": [{"value": r} for r in sorted(start)]}, "c"),
    )  # fmt: skip
    operations: list[dict[str, Any]] = [
        {"op": "replace", "path": "displayName", "value": f"g{n}"} for n in range(other)
    ]
    operations.append(
        {"op": "remove", "path": "members"}
        if clear == "remove"
        else {"op": "replace", "path": "members", "value": []}
    )
    sp: set[str] = set()
    for op, rids in ops:
        operations.append({"op": op, "path": "members", "value": [{"value": r} for r in rids]})
        sp = set(rids) if op == "replace" else sp | set(rids) if op == "add" else sp - set(rids)
    whole = event("Group", "g-1", "patch", {"schemas": [PATCH_OP], "Operations": operations}, "big")
    for ev in split(whole, cuts):
        _, state = judge(state, ev)
    assert "members" in state["full"], (operations, cuts)
    assert state["members"] == sorted(b64(pid_of("User", r)) for r in sp)
    assert not {k for k in state if k.startswith(("cleared", "touched", "forgot"))}


@settings(max_examples=200, deadline=None)
@given(
    start=st.one_of(st.none(), st.sampled_from(POOL)),
    then=st.one_of(st.none(), st.sampled_from(POOL)),
    other=st.integers(0, 3),
    cuts=st.lists(st.integers(0, 12)),
)
def test_a_first_clear_of_the_manager_in_any_part_is_exact(
    start: str | None, then: str | None, other: int, cuts: list[int]
) -> None:
    """``[title ×other, remove manager, (set manager)]`` cut anywhere: the manager is the
    SP's afterwards, or none."""
    body: dict[str, Any] = {"userName": "u9"}
    if start is not None:
        body[ENTERPRISE] = {"manager": {"value": start}}
    _, state = judge(None, event("User", "u-9", "create", body, "c"))
    path = f"{ENTERPRISE}:manager"
    operations: list[dict[str, Any]] = [
        {"op": "replace", "path": "title", "value": f"t{n}"} for n in range(other)
    ]
    operations.append({"op": "remove", "path": path})
    if then is not None:
        operations.append({"op": "add", "path": path, "value": {"value": then}})
    whole = event("User", "u-9", "patch", {"schemas": [PATCH_OP], "Operations": operations}, "big")
    for ev in split(whole, cuts):
        _, state = judge(state, ev)
    want = None if then is None else b64(pid_of("User", then))
    assert state.get("manager") == want, (operations, cuts)
    if start is not None or then is not None:
        assert "manager" in state.get("full", ()) or state.get("manager") == want


def test_a_clear_in_a_later_part_after_the_attribute_was_touched_is_not_known() -> None:
    """An adapter from before the numbering sends ``[add u1, remove members]`` unnumbered;
    cut so that the add's ``mods`` entry is in part 0 and the clear's in part 1, the log
    cannot tell the clear came second: the set is not known (never claimed wrongly)."""
    _, state = judge(
        None,
        event("Group", "g-1", "create", {"displayName": "g", "members": [{"value": "u3"}]}, "c"),
    )
    whole = event(
        "Group", "g-1", "patch",
        {"schemas": [PATCH_OP], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": "u1"}]},
            {"op": "remove", "path": "members"},
        ]},
        "old",
    )  # fmt: skip
    for m in whole.get("mods", ()):
        m.pop("i", None)  # as the older adapter sent it
    for r in whole.get("refs", ()):
        r.pop("i", None)
    n_patch = len(whole["patch"])
    parts = split(whole, [n_patch + 1])  # part 0: patch + the add's mods entry
    assert mods_part(parts, "members") == 1
    for ev in parts:
        _, state = judge(state, ev)
    assert "members" not in state["full"]
