"""Red team 24, roles and entitlements: random PATCH (add, remove, a path or path-less
replace, a clear) and PUT programs, each write answered (``x.result``) or not on its own,
against an SP that merges a path-less replace and one that replaces. Red team 20's guard
answers every write of a program or none, so faith22's answer on a set the log does not
know whole (``result_set``) was never reached there. The promise: an effect names no value
granted (``added``, or a grant act) that the SP does not hold after it, nor revoked that it
does; an unanswered write is held to both SPs, an answered one to the one that answered;
"not known" (a change without values) is always allowed; a set the state calls known whole
is the SP's."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .members_model import (
    ROLE_STEP,
    ROLE_VALUES,
    check_role_effect,
    judge,
    role_write,
    user_event,
)

WRITE = st.tuples(
    st.sampled_from(["no", "yes", "other"]),  # answered (other: only the other set)
    st.one_of(
        st.tuples(st.just("patch"), st.lists(ROLE_STEP, min_size=1, max_size=3)),
        st.tuples(st.just("put"), st.one_of(st.none(), ROLE_VALUES)),
    ),
)


@pytest.mark.parametrize("key", ["roles", "entitlements"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    merges=st.booleans(),
    first=st.one_of(st.none(), ROLE_VALUES),
    program=st.lists(WRITE, min_size=1, max_size=5),
)
def test_redteam24_an_answer_on_a_set_not_known_names_nothing_the_sp_contradicts(
    key: str, merges: bool, first: list[str] | None, program: list[tuple[str, Any]]
) -> None:
    body: dict[str, Any] = {"userName": "u9"}
    if first is not None:
        body[key] = [{"value": v} for v in first]
    state = judge(None, user_event("create", body, "c"))[1]
    # the set each SP holds: the real one (merges or not) and the other the log cannot rule out
    merging, replacing = set(first or ()), set(first or ())
    for n, (answered, (kind, arg)) in enumerate(program):
        ev, merging, replacing = role_write(key, kind, arg, n, merging, replacing)
        if answered == "yes":
            told = merging if merges else replacing
            ev.setdefault("x", {})["result"] = {key: sorted(told, reverse=True) * 2}
            merging = replacing = set(told)
        elif answered == "other":  # an answer saying nothing of this set
            other = "roles" if key == "entitlements" else "entitlements"
            ev.setdefault("x", {})["result"] = {other: []}
        effect, state = judge(state, ev)
        why = (merges, first, program[: n + 1], effect, sorted(merging), sorted(replacing))
        check_role_effect(key, effect, state, merging, replacing, why)
