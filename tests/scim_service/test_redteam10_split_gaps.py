"""Red team 10, part 2: a request split into linked parts, with a part missing, repeated or
out of order.

A membership change too large for one event travels as linked events (``x.part`` of
``x.parts``, one ``corr.req``). review15 made a later part count as "first to touch the
attribute" only right after the last part marked, but a part that never came (or came twice,
or out of order) still left the group's member set claimed known: the log never saw that
part's changes, and a later event was judged against a wrong set ("removed u4: changed
nothing"). Now the state follows the parts (``split``, ``split_next``): a gap (the next part
seen is not the one expected, or another event on the resource comes before the last part)
forgets what the state knew, the event says so (``changes``), and the request's remaining
parts leave the members not known. The log may say "not known", never a wrong "known".

Found on the way, and fixed with it: a split create's later part started the member set
again (the earlier parts' members lost, the set claimed known), and a split PUT's later
part, which names no roles, revoked them all.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from .members_model import (
    MEMBER_OPS,
    POOL,
    b64,
    changes,
    group_event,
    judge,
    members,
    patch_ops,
    pid_of,
    scim_event,
    sp_apply,
    split_parts,
)


def _group(start: set[str]) -> Any:
    body = {"displayName": "g", "members": [{"value": r} for r in sorted(start)]}
    _, state = judge(None, group_event("create", body, "c"))
    return state


def _adds_in_parts() -> tuple[Any, list[dict[str, Any]]]:
    """A group holding u1, and ``add [u2, u3, u4]`` as one request in four parts: the patch
    and mods, then one member's reference each."""
    whole = group_event("patch", patch_ops([("add", ["u2", "u3", "u4"])]), "big")
    n = len(whole["patch"]) + len(whole["mods"])
    parts, _ = split_parts(whole, [n, n + 1, n + 2])
    assert len(parts) == 4 and [len(p.get("refs", ())) for p in parts] == [0, 1, 1, 1]
    return _group({"u1"}), parts


def _remove(rid: str, req: str) -> dict[str, Any]:
    return group_event("patch", patch_ops([("remove", [rid])]), req)


def _acts(effect: dict[str, Any]) -> list[str]:
    return [a["a"] for a in effect["acts"]]


def test_a_last_part_that_never_came_is_no_noop_later() -> None:
    """The part adding u4 never came; the SP has u4. The next event removes u4: the log
    names the removal (it no longer claims to know the set), and says at that event that
    it forgot the members."""
    state, parts = _adds_in_parts()
    for ev in parts[:3]:
        _, state = judge(state, ev)
    effect, state = judge(state, _remove("u4", "next"))
    assert "noop" not in effect, effect
    assert ("remove", b64(pid_of("User", "u4"))) in changes(effect)
    assert {"attr": "members"} in effect["changes"]  # the gap, said
    assert "members" not in state["full"]
    # and later: an add of u2 (a member the log saw added) is named, not hidden
    effect, state = judge(state, group_event("patch", patch_ops([("add", ["u2"])]), "n2"))
    assert "noop" not in effect and "members" not in state["full"]


def test_a_missing_middle_part_leaves_the_members_not_known() -> None:
    """Parts 0, 1 and 3 of four: part 2 (adding u3) never came."""
    state, parts = _adds_in_parts()
    for ev in (parts[0], parts[1]):
        _, state = judge(state, ev)
    effect, state = judge(state, parts[3])
    assert {"attr": "members"} in effect["changes"]
    assert "members" not in state["full"]
    effect, state = judge(state, _remove("u3", "next"))
    assert "noop" not in effect and ("remove", b64(pid_of("User", "u3"))) in changes(effect)


def test_a_part_judged_twice_or_out_of_order_is_a_gap() -> None:
    for order in ([0, 1, 1, 2, 3], [0, 2, 1, 3], [0, 1, 3, 2], [1, 2, 3], [0, 0, 1, 2, 3]):
        state, parts = _adds_in_parts()
        for i in order:
            _, state = judge(state, parts[i])
        sp = members({"u1", "u2", "u3", "u4"})
        assert "members" not in state["full"] or state["members"] == sp, (order, state)
        if order != [0, 1, 2, 3]:
            assert "members" not in state["full"], order


def test_all_parts_in_order_stay_known() -> None:
    state, parts = _adds_in_parts()
    for ev in parts:
        effect, state = judge(state, ev)
        assert {"attr": "members"} not in effect.get("changes", ())
    assert "members" in state["full"]
    assert state["members"] == members({"u1", "u2", "u3", "u4"})
    assert not {"split", "split_next", "split_lost"} & set(state)
    effect, state = judge(state, _remove("u9", "next"))
    assert effect["noop"] == [{"attr": "members", "op": "remove", "n": 1}]  # still exact


def test_a_split_create_keeps_the_members_of_every_part() -> None:
    body = {"displayName": "g", "members": [{"value": r} for r in POOL]}
    whole = group_event("create", body, "c")
    n = len(whole.get("patch", ())) + len(whole["mods"])
    parts, _ = split_parts(whole, [n + 2])
    state = None
    for ev in parts:
        _, state = judge(state, ev)
    assert "members" in state["full"] and state["members"] == members(set(POOL))


def test_a_split_put_does_not_revoke_the_roles_its_first_part_stated() -> None:
    body = {"userName": "a", "roles": [{"value": "admin"}], "emails": [{"value": "a@x"}]}
    _, state = judge(None, scim_event("User", "u-1", "create", body, "c0"))
    whole = scim_event("User", "u-1", "replace", body, "p")
    parts, _ = split_parts(whole, [len(whole.get("patch", ())) + 2])
    assert len(parts) == 2 and not any(m["attr"] == "roles" for m in parts[1]["mods"])
    for ev in parts:
        effect, state = judge(state, ev)
        assert "user.role.revoke" not in _acts(effect), effect
    assert state["roles"] == ["admin"] and "roles" in state["full"]
    # a split PUT without roles in any part (an event without the adapter's marks): what
    # the SP kept of them is not known, said at its last part (before faith26: cleared,
    # every held role named revoked, whatever a merging SP kept)
    bare = scim_event("User", "u-1", "replace", {"userName": "a", "emails": []}, "p2")
    parts, _ = split_parts(bare, [1])
    assert len(parts) == 2
    _, state = judge(state, parts[0])
    assert state["roles"] == ["admin"]
    effect, state = judge(state, parts[1])
    assert "user.role.revoke" not in _acts(effect), effect
    assert {"attr": "roles"} in effect["changes"], effect  # changed, values not known
    assert "roles" not in state and "roles" not in state["full"], state


@settings(max_examples=400, deadline=None)
@given(
    start=st.sets(st.sampled_from(POOL)),
    ops=MEMBER_OPS,
    cuts=st.lists(st.integers(0, 40), max_size=6),
    delivered=st.lists(st.integers(0, 9), max_size=9),
    then=st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(POOL)),
)
def test_the_log_never_claims_a_wrong_member_set_whatever_parts_came(
    start: set[str],
    ops: list[tuple[str, list[str]]],
    cuts: list[int],
    delivered: list[int],
    then: tuple[str, str],
) -> None:
    """The SP applied the whole request; the log saw some of its parts (at least one), in
    any order, some twice or never; then one more request (``then``: add or remove one
    member). After it, the log's member set is the SP's whenever it claims to know it; no
    noop it names is false; every membership the last request changed is named."""
    state = _group(start)
    whole = group_event("patch", patch_ops(ops), "big")
    parts, _ = split_parts(whole, cuts)
    if len(parts) == 1 or not delivered:
        # a request the log never saw at all, or saw whole twice, is no split's gap
        delivered = [0]
    for i in delivered:
        _, state = judge(state, parts[i % len(parts)])
    sp = sp_apply(set(start), ops)
    op, rid = then
    effect, state = judge(state, group_event("patch", patch_ops([(op, [rid])]), "then"))
    after = sp_apply(sp, [(op, [rid])])
    if "members" in state["full"]:
        assert state["members"] == members(after), (ops, delivered)
    for n in effect.get("noop", ()):
        assert n["attr"] == "members"
        assert (rid in sp) == (n["op"] == "add"), (ops, delivered, effect)
    pid = b64(pid_of("User", rid))
    if after != sp:
        assert (op, pid) in changes(effect), (ops, delivered, effect)
