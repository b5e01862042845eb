"""Red team 20, a guard (held): random PATCH and PUT programs on a user's roles and
entitlements, judged by the log (``classify``) against two models of an SP: one that
replaces on a path-less ``replace`` (scim2-server) and one that merges it, keeping what an
empty one names (SCIMMY); both clear what a PUT leaves out, as both SPs tried do. Each
program runs without answers, with the merging SP's answers (``x.result``) and with the
replacing SP's. The promise: where the log's state says it knows the set, it is the set
both SPs (or the answering one) hold; a value an effect names added is held by both
afterwards, a value named removed by neither, unless the effect says the set is not known
(a change without values). 3,000 random programs held; 300 are kept here."""

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

WRITE = st.one_of(
    st.tuples(st.just("patch"), st.lists(ROLE_STEP, min_size=1, max_size=3)),
    st.tuples(st.just("put"), st.one_of(st.none(), ROLE_VALUES)),
)


@pytest.mark.parametrize("key", ["roles", "entitlements"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answer=st.sampled_from([None, "merging", "replacing"]),
    first=ROLE_VALUES,
    program=st.lists(WRITE, min_size=1, max_size=4),
)
def test_the_log_claims_no_role_either_sp_contradicts(
    key: str,
    answer: str | None,
    first: list[str],
    program: list[tuple[str, Any]],
) -> None:
    body: dict[str, Any] = {"userName": "u9", key: [{"value": v} for v in first]}
    state = judge(None, user_event("create", body, "c"))[1]
    merging, replacing = set(first), set(first)
    for n, (kind, arg) in enumerate(program):
        ev, merging, replacing = role_write(key, kind, arg, n, merging, replacing)
        if answer is not None:
            told = merging if answer == "merging" else replacing
            ev.setdefault("x", {})["result"] = {key: sorted(told)}
            merging = replacing = set(told)
        effect, state = judge(state, ev)
        why = (answer, first, program, effect, sorted(merging), sorted(replacing))
        check_role_effect(key, effect, state, merging, replacing, why)
