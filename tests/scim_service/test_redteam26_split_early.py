"""Red team 26: a part 0 arriving after more than 16 other split requests' later parts.

faith24 keeps the eids of the last 16 part 0s that later parts named before they came
(``split_early``): such a part 0, when it comes, is a part out of line (everything
forgotten, the members not known), not a new request. Found: the 17th eid pushed the first
out, and that request's part 0 was then judged a new request. ``[add u1 | remove u2]``
delivered remove first, 16 other requests' later parts, a PUT stating ``[u2]``, the add,
then the remove recorded again under another eid (a buggy adapter; the same eid is a
duplicate the log answers before judging): the set was called known ``{u1}`` while the SP,
which applied both before the PUT, holds ``{u2}``. With 15 others it held (faith24). Once an
eid is pushed out, a part 0 not in the list is judged late too, until the group is created
again."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from .members_model import group_event, judge, linked_parts, members


def _start() -> Any:
    return judge(None, group_event("create", {"displayName": "g", "members": []}, "c"))[1]


def _never_known_wrongly(state: Any, sp: set[str]) -> None:
    if "members" in state["full"]:
        assert state["members"] == members(sp), state


@pytest.mark.parametrize("others", [15, 16, 40])
def test_redteam26_a_part_0_pushed_out_of_the_early_list_is_never_a_new_request(
    others: int,
) -> None:
    state = _start()
    late = linked_parts([("add", ["u1"]), ("remove", ["u2"])], "r", [1])
    assert len(late) == 2
    _, state = judge(state, late[1])  # the remove first: part 0 missing
    for n in range(others):  # other requests' later parts, their part 0s not seen (yet)
        other = linked_parts([("add", ["u3"]), ("remove", ["u3"])], f"o{n}", [1])
        _, state = judge(state, other[1])
    put = group_event("replace", {"displayName": "g", "members": [{"value": "u2"}]}, "p")
    _, state = judge(state, put)
    _never_known_wrongly(state, {"u2"})
    # the add, late, and the remove recorded again under another eid (a buggy adapter: the
    # log answers the same eid as a duplicate): the SP applied both before the PUT, so it
    # holds {u2}; the add judged a new request, the set was called known {u1}
    again = {**late[1], "eid": str(uuid.uuid4())}
    for ev in (late[0], again):
        _, state = judge(state, ev)
        _never_known_wrongly(state, {"u2"})


def test_redteam26_the_caution_ends_when_the_group_is_created_again() -> None:
    state = _start()
    for n in range(17):  # 17 later parts whose part 0s never come: one eid pushed out
        _, state = judge(state, linked_parts([("add", ["u3"]), ("add", ["u4"])], f"o{n}", [1])[1])
    assert state.get("split_early_over")  # (the greatest eid pushed out: faith25)
    state = judge(state, _start_event())[1]  # the group deleted and created again
    assert "split_early_over" not in state, state
    parts = linked_parts([("add", ["u1"]), ("add", ["u2"])], "r", [1])
    for ev in parts:
        _, state = judge(state, ev)
    assert "members" in state["full"] and state["members"] == members({"u1", "u2"}), state


def _start_event() -> dict[str, Any]:
    return group_event("create", {"displayName": "g", "members": []}, "c2")
