"""review15: a later part of a split request is judged "first to touch the attribute" only
when every earlier part of that request was judged before it, in order. A part that never
came (refused, or left out by a crafted writer) may have touched the attribute: the log
must not then place an unnumbered clear first and claim the member set known."""

from __future__ import annotations

from typing import Any

from tests.scim_service.test_members_in_order import (
    group_event,
    judge,
    members,
    patch_ops,
)


def _parts() -> tuple[Any, list[dict[str, Any]]]:
    """A group holding u3, and ``[add u1, remove all, add u2]`` on it as one request split
    in three: the patch alone, the add's mods entry, then the clear's entry and the refs,
    without the numbers that place a clear among the refs."""
    _, state = judge(
        None, group_event("create", {"displayName": "g", "members": [{"value": "u3"}]}, "c")
    )
    whole = group_event(
        "patch", patch_ops([("add", ["u1"]), ("clear-remove", []), ("add", ["u2"])]), "big"
    )
    base = {k: v for k, v in whole.items() if k not in ("patch", "mods", "refs")}
    # unnumbered, as an adapter before the numbers wrote them (or a crafted writer)
    mods = [{k: v for k, v in m.items() if k != "i"} for m in whole["mods"]]
    refs = [{k: v for k, v in r.items() if k != "i"} for r in whole["refs"]]
    assert len(mods) == 3, mods
    chunks = [
        {"patch": whole["patch"]},
        {"mods": mods[:1]},
        {"mods": mods[1:], "refs": refs},
    ]
    out = []
    for n, chunk in enumerate(chunks):
        ev = dict(base, **chunk)
        ev["x"] = {"part": n, "parts": len(chunks)}
        out.append(ev)
    return state, out


def test_all_parts_in_order_end_known_or_not_but_never_wrong() -> None:
    state, parts = _parts()
    for ev in parts:
        _, state = judge(state, ev)
    if "members" in state["full"]:
        assert state["members"] == members({"u2"})


def test_a_missing_middle_part_leaves_the_members_not_known() -> None:
    """Part 1 (the add before the clear) never comes: part 2's clear cannot be known to be
    the request's first operation on members, and its refs include the add's u1."""
    state, parts = _parts()
    _, state = judge(state, parts[0])
    _, state = judge(state, parts[2])
    assert "members" not in state["full"] or state["members"] == members({"u2"}), state
    assert not {"touched", "touched_attrs", "touched_part"} & set(state)


def test_a_repeated_part_zero_does_not_stand_for_the_missing_parts() -> None:
    """Part 0 twice (a re-sent copy), then the last part: still a part missing."""
    state, parts = _parts()
    _, state = judge(state, parts[0])
    _, state = judge(state, parts[0])
    _, state = judge(state, parts[2])
    assert "members" not in state["full"] or state["members"] == members({"u2"}), state


def test_parts_out_of_order_leave_the_members_not_known() -> None:
    """The last part before the middle one: not judged first either."""
    state, parts = _parts()
    _, state = judge(state, parts[0])
    _, state = judge(state, parts[2])
    _, state = judge(state, parts[1])
    assert "members" not in state["full"] or state["members"] == members({"u2"}), state
