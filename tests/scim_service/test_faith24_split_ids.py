"""faith24: which request a part of a split request belongs to, by the eid of its part 0
(``x.first`` of every later part, the part's own eid at part 0), not only by ``corr.req``.

Found (failed before):

* **a client reusing one ``X-Request-Id``** for two split requests in a row: the second's
  part 0 came right after the first's last part and was taken for a late part of the first
  (red team 23's rule), so the second request was marked not known. Its part 0 has another
  eid than the first's: a new request, judged as one (the same as with another id);
* **a part 0 delivered after other events**, its later parts seen before it: judged a new
  request, its steps applied after the events that came between, though the SP applied them
  before (``[add u1]`` then ``[remove u1]``, delivered remove first, then a PUT stating the
  members ``[u2]``, then the add: the set was called known ``{u1, u2}`` while the SP holds
  ``{u2}``). A part 0 that a later part named before it came is a part out of line now:
  everything forgotten, the members not known.

Events without ``x.first`` (the tests' split model, an adapter's record without it) are
judged as before, by ``corr.req`` and ``x.part`` alone."""

from __future__ import annotations

from typing import Any

from . import members_model
from .members_model import group_event, judge, linked_parts


def _start(*rids: str) -> Any:
    body = {"displayName": "g", "members": [{"value": r} for r in rids]}
    return judge(None, group_event("create", body, "c"))[1]


def _not_known(effect: dict[str, Any]) -> bool:
    return any(c.get("attr") == "members" and "op" not in c for c in effect.get("changes", ()))


def test_two_split_requests_reusing_one_request_id_are_each_judged() -> None:
    state = _start("u1")
    first = linked_parts([("add", ["u2"]), ("add", ["u3"])], "same", [1])
    second = linked_parts([("remove", ["u2"]), ("add", ["u4"])], "same", [1])
    assert len(first) == len(second) == 2
    for ev in first:
        effect, state = judge(state, ev)
        assert not _not_known(effect), effect
    for ev in second:
        effect, state = judge(state, ev)
        assert not _not_known(effect), effect
    assert "members" in state["full"]
    assert state["members"] == members_model.members({"u1", "u3", "u4"})


def test_a_part_0_after_other_events_is_a_late_part() -> None:
    state = _start()
    late = linked_parts([("add", ["u1"]), ("remove", ["u1"])], "r", [1])
    assert len(late) == 2
    _, state = judge(state, late[1])  # the remove first: part 0 missing
    put = group_event("replace", {"displayName": "g", "members": [{"value": "u2"}]}, "p")
    _, state = judge(state, put)
    assert state["members"] == members_model.members({"u2"}) and "members" in state["full"]
    effect, state = judge(state, late[0])  # the add, late
    # the SP holds {u2}: the log must not claim {u1, u2} known whole
    if "members" in state["full"]:
        assert state["members"] == members_model.members({"u2"}), state
    assert "members" not in state["full"] or _not_known(effect), effect


def test_a_part_0_again_right_after_the_last_part_stays_late() -> None:
    """Red team 23's case with the eids: the same part 0 (its own eid) after the last part
    is still a part out of line."""
    state = _start()
    parts = linked_parts([("clear", []), ("add", ["u1"])], "r", [1])
    for ev in [*parts, parts[0]]:
        _, state = judge(state, ev)
    assert "members" not in state["full"], state
