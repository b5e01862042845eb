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

from .members_model import PATCH_OP, judge, user_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
VALUES = st.lists(st.sampled_from("abc"), max_size=2).map(lambda v: sorted(set(v)))
STEP = st.one_of(
    st.tuples(st.sampled_from(["add", "remove"]), VALUES.filter(bool)),
    st.tuples(st.just("clear"), st.just([])),
    st.tuples(st.sampled_from(["path-replace", "pathless-replace"]), VALUES),
)
WRITE = st.tuples(
    st.sampled_from(["no", "yes", "other"]),  # answered (other: only the other set)
    st.one_of(
        st.tuples(st.just("patch"), st.lists(STEP, min_size=1, max_size=3)),
        st.tuples(st.just("put"), st.one_of(st.none(), VALUES)),
    ),
)
VERBS = {
    "roles": ("user.role.grant", "user.role.revoke"),
    "entitlements": ("user.entitlement.grant", "user.entitlement.revoke"),
}


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
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    merges=st.booleans(),
    first=st.one_of(st.none(), VALUES),
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
        if answered == "yes":
            told = merging if merges else replacing
            ev.setdefault("x", {})["result"] = {key: sorted(told, reverse=True) * 2}
            merging = replacing = set(told)
        elif answered == "other":  # an answer saying nothing of this set
            other = "roles" if key == "entitlements" else "entitlements"
            ev.setdefault("x", {})["result"] = {other: []}
        effect, state = judge(state, ev)
        named = [c for c in effect.get("changes", ()) if c.get("attr") == key]
        acts = {a["a"] for a in effect.get("acts", ())}
        why = (merges, first, program[: n + 1], effect, sorted(merging), sorted(replacing))
        if not any(len(c) == 1 for c in named):  # none says "not known"
            added = {v for c in named for v in c.get("added", ())}
            removed = {v for c in named for v in c.get("removed", ())}
            assert all(v in merging and v in replacing for v in added - removed), why
            assert not (removed - added) & (merging | replacing), why
            grant, revoke = VERBS[key]
            assert grant not in acts or added, why
            assert revoke not in acts or removed, why
        if key in state.get("full", ()):
            assert set(state.get(key, ())) == merging == replacing, why
