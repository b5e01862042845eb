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

from .members_model import PATCH_OP, judge, user_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
VALUES = st.lists(st.sampled_from("abc"), max_size=2).map(lambda v: sorted(set(v)))
STEP = st.one_of(
    st.tuples(st.sampled_from(["add", "remove"]), VALUES.filter(bool)),
    st.tuples(st.just("clear"), st.just([])),
    st.tuples(st.sampled_from(["path-replace", "pathless-replace"]), VALUES),
)
WRITE = st.one_of(
    st.tuples(st.just("patch"), st.lists(STEP, min_size=1, max_size=3)),
    st.tuples(st.just("put"), st.one_of(st.none(), VALUES)),
)


def _operation(key: str, kind: str, vals: list[str]) -> dict[str, Any]:
    items = [{"value": v} for v in vals]
    if kind == "clear":
        return {"op": "remove", "path": key}
    if kind == "pathless-replace":
        return {"op": "replace", "value": {key: items}}
    return {"op": kind.removeprefix("path-"), "path": key, "value": items}


def _sp(held: set[str], kind: str, vals: list[str], merges: bool) -> set[str]:
    if kind == "add":
        return held | set(vals)
    if kind == "remove":
        return held - set(vals)
    if kind == "clear":
        return set()
    if kind == "pathless-replace" and merges:
        return held | set(vals)
    return set(vals)


@pytest.mark.parametrize("key", ["roles", "entitlements"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answer=st.sampled_from([None, "merging", "replacing"]),
    first=VALUES,
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
        if kind == "patch":
            for step, vals in arg:
                merging = _sp(merging, step, vals, True)
                replacing = _sp(replacing, step, vals, False)
            ops = [_operation(key, step, vals) for step, vals in arg]
            ev = user_event("patch", {"schemas": [PATCH_OP], "Operations": ops}, f"r{n}")
        else:
            put: dict[str, Any] = {"schemas": [USER], "userName": "u9"}
            if arg is not None:
                put[key] = [{"value": v} for v in arg]
            merging = replacing = set(arg or ())
            ev = user_event("replace", put, f"r{n}")
        if answer is not None:
            told = merging if answer == "merging" else replacing
            ev.setdefault("x", {})["result"] = {key: sorted(told)}
            merging = replacing = set(told)
        effect, state = judge(state, ev)
        named = [c for c in effect.get("changes", ()) if c.get("attr") == key]
        why = (answer, first, program, effect, sorted(merging), sorted(replacing))
        if not any(len(c) == 1 for c in named):  # none says "not known"
            added = {v for c in named for v in c.get("added", ())}
            removed = {v for c in named for v in c.get("removed", ())}
            assert all(v in merging and v in replacing for v in added - removed), why
            assert not (removed - added) & (merging | replacing), why
        if key in state.get("full", ()):
            assert set(state.get(key, ())) == merging == replacing, why
