"""faith25: a group's split requests after more than 16 late part 0s.

Red team 26 made a part 0 that may have been pushed out of the 16 early eids
(``split_early``) late too, so that it is never taken for a new request: but every part 0
was judged so from then on, and each later split request of the group stayed "not known"
until the group was created again. The bound is the greatest eid pushed out now: the
adapter's eids are UUIDv7, so a request made after them is judged as any other, and one
pushed out is still never a new request.

Programs of a group's writes, judged against an SP that merges a path-less replace
(SCIMMY) and one that replaces on it (scim2-server): split requests whose part 0 is held
back (delivered later, or never), floods of other requests' later parts whose part 0s never
come, held part 0s delivered, a later part recorded again under another eid (a buggy
adapter, red team 26's trigger), PUTs of the members and requests in line. Never a member
set called known that either SP does not hold; and a request made after all of them,
delivered in line after a PUT, is known whole.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.scim.event import uuid7_text

from . import members_model
from .members_model import FORM_OPS, group_event, judge, linked_parts, members, sp_forms

T0 = 1_800_000_000_000  # ms: each request is made a millisecond after the one before

STEP = st.one_of(
    st.tuples(st.just("late"), FORM_OPS, st.integers(1, 4)),
    st.tuples(st.just("flood"), st.integers(1, 20), st.sampled_from(members_model.POOL)),
    # a request held back, then enough others to push its part 0 out (red team 26's edge)
    st.tuples(st.just("late+flood"), FORM_OPS, st.integers(15, 18)),
    # a held part 0 delivered, and (``True``) its next part recorded again after it under
    # another eid (a buggy adapter: red team 26's trigger)
    st.tuples(st.just("deliver"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("again"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("put"), st.sets(st.sampled_from(members_model.POOL)), st.just(0)),
    st.tuples(st.just("inline"), FORM_OPS, st.integers(1, 4)),
)


class _Run:
    """A program's requests as made (each applied by both SPs when made) and its events as
    they reach the log (each judged, checked against both SPs)."""

    def __init__(self) -> None:
        self.ts = T0
        self.state = judge(None, group_event("create", members_model.members_body(set()), "c"))[1]
        self.merging: set[str] = set()
        self.replacing: set[str] = set()
        self.held: list[list[dict[str, Any]]] = []  # requests whose part 0 is not delivered
        self.later: list[dict[str, Any]] = []  # later parts delivered (for "again")

    def eids(self) -> Callable[[], str]:
        """The eids of the next request's parts: UUIDv7 of the moment it is made."""
        self.ts += 1
        ts = self.ts
        return lambda: uuid7_text(ts)

    def made(self, ops: list[tuple[str, list[str]]], cut: int) -> list[dict[str, Any]]:
        parts = linked_parts(ops, f"r{self.ts}", [cut], self.eids())
        self.merging = sp_forms(self.merging, ops, merges=True)
        self.replacing = sp_forms(self.replacing, ops, merges=False)
        return parts

    def judge(self, ev: dict[str, Any]) -> None:
        _, self.state = judge(self.state, ev)

    def check(self, why: Any) -> None:
        """After a step's events (a request's parts judged so far claim only so far)."""
        if "members" in self.state["full"]:
            assert self.state["members"] == members(self.merging), (why, self.state)
            assert self.state["members"] == members(self.replacing), (why, self.state)

    def step(self, kind: str, arg: Any, more: Any) -> None:
        why = (kind, arg, more)
        if kind in ("late", "inline"):
            parts = self.made(arg, more)
            if kind == "late" and len(parts) > 1:
                self.held.append(parts)
                parts = parts[1:]
                self.later += parts
            for ev in parts:
                self.judge(ev)
        elif kind == "late+flood":
            self.step("late", arg, 1)
            self.step("flood", more, "u4")
        elif kind == "flood":
            for _ in range(arg):  # [add u | remove u], its part 0 never delivered
                parts = self.made([("add", [more]), ("remove", [more])], 1)
                self.judge(parts[1])
        elif kind == "deliver" and self.held:
            parts = self.held.pop(arg % len(self.held))
            self.judge(parts[0])
            if more:
                self.judge({**parts[1], "eid": str(uuid.uuid4())})
        elif kind == "again" and self.later:
            self.judge({**self.later[arg % len(self.later)], "eid": str(uuid.uuid4())})
        elif kind == "put":
            self.ts += 1
            self.merging, self.replacing = set(arg), set(arg)
            self.judge(group_event("replace", members_model.members_body(arg), f"p{self.ts}"))
        self.check(why)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(program=st.lists(STEP, max_size=10), seed=st.integers(0, 3))
def test_faith25_split_requests_around_many_late_part_0s(program: list[Any], seed: int) -> None:
    run = _Run()
    for kind, arg, more in program:
        run.step(kind, arg, more)
    # whatever is still held back comes now, in some order
    random.Random(seed).shuffle(run.held)
    for parts in run.held:
        run.judge(parts[0])
        run.check("held")
    # a PUT, then a request made after all of them, in line: known whole
    run.step("put", {"u1"}, 0)
    run.step("inline", [("add", ["u2"]), ("add", ["u3"])], 1)
    assert "members" in run.state["full"], (program, run.state)
    assert run.state["members"] == members({"u1", "u2", "u3"}), run.state


def test_faith25_after_more_than_16_late_part_0s_a_new_request_is_known() -> None:
    """Found: 17 requests' later parts whose part 0s never came, then a PUT and a request
    made after them delivered in line: not known (red team 26's caution, for good)."""
    run = _Run()
    run.step("flood", 17, "u4")
    assert isinstance(run.state.get("split_early_over"), str), run.state
    run.step("put", {"u1"}, 0)
    run.step("inline", [("add", ["u2"]), ("add", ["u3"])], 1)
    assert "members" in run.state["full"], run.state
    assert run.state["members"] == members({"u1", "u2", "u3"}), run.state


def test_faith25_a_part_0_pushed_out_is_still_late() -> None:
    """Red team 26's delivery with made-in-order eids: the late part 0 (pushed out by 16
    others, its eid below the bound) is never a new request."""
    run = _Run()
    run.step("late", [("add", ["u1"]), ("remove", ["u2"])], 1)
    run.step("flood", 16, "u3")
    run.step("put", {"u2"}, 0)
    run.step("deliver", 0, 0)
    run.step("again", 0, 0)
    assert "members" not in run.state["full"] or run.state["members"] == members({"u2"})
