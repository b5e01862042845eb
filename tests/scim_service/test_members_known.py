"""A group's member set is known whole only under the tenant KEK generation it was learnt
at (tlog.scim.effects.members_known): after an erasure in the tenant, a removal of a pid
the set has never seen is named as asked, not judged a noop."""

from __future__ import annotations

from typing import Any

from client.scim import new_event
from tlog.scim.effects import MEMBERS_KNOWN, classify, mark_members_known, members_known

OLD, NEW = "0123456789abcdef", "fedcba9876543210"


def _group(op: str, refs: list[dict[str, Any]], req: str) -> dict[str, Any]:
    ev: dict[str, Any] = new_event(
        tenant="acme", sp="app-1", op=op, rt="Group", rid="g-1",
        actor={"kind": "user", "id": "admin-1"}, corr=req,
        req={"m": {"create": "POST", "patch": "PATCH"}.get(op, "PUT"), "p": "/Groups/g-1",
             "dig": bytes(32), "len": 10},
        res=200, outcome="success", refs=refs,
    )  # fmt: skip
    return ev


def _pid(n: int) -> bytes:
    return bytes([n]) * 16


def _step(state: Any, ev: dict[str, Any], gen: str) -> tuple[dict[str, Any], Any]:
    """What the service does with one event (ScimService._effect)."""
    effect, new, _ = classify(members_known(state, gen), ev)
    assert effect is not None
    mark_members_known(new, gen)
    return effect, new


def _acts(effect: dict[str, Any]) -> list[str]:
    return [a["a"] for a in effect["acts"]]


def test_a_removal_of_an_unseen_member_is_a_noop_only_under_the_same_generation() -> None:
    _, state = _step(None, _group("create", [{"rt": "User", "pid": _pid(1)}], "r0"), OLD)
    assert state[MEMBERS_KNOWN] == OLD and "members" in state["full"]
    remove = _group("patch", [{"rt": "User", "pid": _pid(2), "op": "remove"}], "r1")
    # Same generation: the set is known whole, so removing a non-member changed nothing.
    effect, _ = _step(state, remove, OLD)
    assert _acts(effect) == ["group.noop"]
    assert effect["noop"] == [{"attr": "members", "op": "remove", "n": 1}]
    # Another generation (an erasure in the tenant since): the removal is named as asked.
    effect, after = _step(state, remove, NEW)
    assert _acts(effect) == ["group.member.remove"], effect
    assert "noop" not in effect
    assert "members" not in after["full"] and MEMBERS_KNOWN not in after
    # ... and stays so until the members are stated whole again (a PUT), under NEW.
    effect, again = _step(after, remove, NEW)
    assert _acts(effect) == ["group.member.remove"]
    put = _group("replace", [{"rt": "User", "pid": _pid(3)}], "r2")
    _, whole = _step(again, put, NEW)
    assert whole[MEMBERS_KNOWN] == NEW and "members" in whole["full"]
    effect, _ = _step(whole, remove, NEW)
    assert _acts(effect) == ["group.noop"]


def test_a_state_from_before_generations_is_not_known_whole() -> None:
    _, state = _step(None, _group("create", [{"rt": "User", "pid": _pid(1)}], "r0"), OLD)
    del state[MEMBERS_KNOWN]
    remove = _group("patch", [{"rt": "User", "pid": _pid(2), "op": "remove"}], "r1")
    effect, _ = _step(state, remove, OLD)
    assert _acts(effect) == ["group.member.remove"]


def test_only_groups_are_marked() -> None:
    user = new_event(
        tenant="acme", sp="app-1", op="create", rt="User", rid="u-1",
        actor={"kind": "user", "id": "admin-1"}, corr="r0",
        req={"m": "POST", "p": "/Users", "dig": bytes(32), "len": 10},
        res=201, outcome="success",
    )  # fmt: skip
    _, state = _step(None, user, OLD)
    assert "members" in state["full"] and MEMBERS_KNOWN not in state
    assert members_known(state, NEW) == {**state, "full": ["entitlements", "roles"]}
