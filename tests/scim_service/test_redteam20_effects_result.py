"""Red team 20: a hostile ``x.result`` (the SP's answer as an adapter recorded it: any JSON
a client can post) must never make the log claim a role or entitlement that neither the
request nor a well-formed answer names, nor fail.

Found: roles and entitlements recorded otherwise than the adapter does (a string of 1 to
256 characters each, at most 256: ``exchange._resulting_values``) were read as ``str(v)``:
``x.result.roles: [{"value": "a"}]`` (the SCIM form, as another recorder might keep it) or
``[null]`` had the log name the role ``{'value': 'a'}`` or ``None`` granted, and the user's
real roles revoked. Such an answer is now not understood: the request alone is judged, as
without an answer. The random search (hostile answers on random PATCHes and PUTs) holds the
general promise: nothing raised, the effect and state encode, and every role or
entitlement the effect names is one the request, the state before, or the answer's
well-formed values hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlog.scim.effects import encode_effect, encode_state

from .members_model import PATCH_OP, judge, user_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
SETS = ("roles", "entitlements")


def _created() -> Any:
    body = {"userName": "u9", "roles": [{"value": "a"}], "entitlements": [{"value": "e"}]}
    return judge(None, user_event("create", body, "c"))[1]


def _named(effect: dict[str, Any], key: str) -> set[object]:
    out: set[object] = set()
    for c in effect.get("changes", ()):
        if c.get("attr") == key:
            out.update(c.get("added", ()))
            out.update(c.get("removed", ()))
    return out


def _with_result(ev: dict[str, Any], result: object) -> dict[str, Any]:
    ev.setdefault("x", {})["result"] = result
    return ev


MALFORMED = [
    [{"value": "b"}],
    [None],
    [1],
    [True],
    [["b"]],
    [""],
    ["b", 7],
    ["x" * 257],
    ["r"] * 257,
]


@pytest.mark.parametrize("key", SETS)
@pytest.mark.parametrize("told", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_answer_names_no_value_of_its_own(key: str, told: list[Any]) -> None:
    """A PATCH adding ``b``: the answer not understood, the request judged alone."""
    add = {"op": "add", "path": key, "value": [{"value": "b"}]}
    ev = user_event("patch", {"schemas": [PATCH_OP], "Operations": [add]}, "p")
    effect, state = judge(_created(), _with_result(ev, {key: told}))
    assert _named(effect, key) == {"b"}, effect
    assert sorted(state[key]) == sorted(["a" if key == "roles" else "e", "b"])


@pytest.mark.parametrize("key", SETS)
def test_a_put_answered_malformed_is_judged_as_unanswered(key: str) -> None:
    put = user_event("replace", {"schemas": [USER], "userName": "u9"}, "p")
    unanswered, _ = judge(_created(), put)
    answered, _ = judge(
        _created(), _with_result(user_event("replace", put_body(), "p"), {key: [{"value": "a"}]})
    )
    assert _named(answered, key) == _named(unanswered, key)


def put_body() -> dict[str, Any]:
    return {"schemas": [USER], "userName": "u9"}


def test_a_well_formed_answer_still_decides() -> None:
    """The guard: the adapter's form is the truth, as before (faith19)."""
    effect, state = judge(_created(), _with_result(user_event("replace", put_body(), "p"), {
        "roles": ["a"], "entitlements": ["e", "f"]
    }))  # fmt: skip
    assert _named(effect, "roles") == set()
    assert _named(effect, "entitlements") == {"f"}
    assert state["entitlements"] == ["e", "f"]


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", "z", "", "A"])
)
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["value", "x"]), inner, max_size=2)
    ),
    max_leaves=6,
)
RESULT_KEYS = ["roles", "entitlements", "active", "manager", "userName", "emails", "members"]
results = st.one_of(
    json_any,
    st.dictionaries(st.sampled_from(RESULT_KEYS), json_any, max_size=4),
    st.fixed_dictionaries({"roles": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)}),
)
VALUES = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2)
patch_ops = st.lists(
    st.one_of(
        st.builds(
            lambda op, key, vals: {
                "op": op,
                "path": key,
                "value": [{"value": v} for v in vals],
            },
            st.sampled_from(["add", "remove", "replace"]),
            st.sampled_from(SETS),
            VALUES,
        ),
        st.builds(lambda key: {"op": "remove", "path": key}, st.sampled_from(SETS)),
        st.builds(lambda key: {"op": "replace", "value": {key: []}}, st.sampled_from(SETS)),
    ),
    min_size=1,
    max_size=3,
)
writes = st.lists(
    st.tuples(st.one_of(patch_ops, st.none()), results), min_size=1, max_size=4
)  # None: a PUT stating only the userName


def _wellformed(result: object, key: str) -> set[str]:
    if not isinstance(result, dict) or not isinstance(result.get(key), list):
        return set()
    return {v for v in result[key] if isinstance(v, str) and v}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes)
def test_hostile_answers_name_only_values_someone_stated(
    program: list[tuple[list[dict[str, Any]] | None, object]],
) -> None:
    state = _created()
    for n, (ops, result) in enumerate(program):
        if ops is None:
            ev = user_event("replace", put_body(), f"r{n}")
            stated: dict[str, set[str]] = {k: set() for k in SETS}
        else:
            ev = user_event("patch", {"schemas": [PATCH_OP], "Operations": ops}, f"r{n}")
            stated = {
                k: {v["value"] for o in ops if o.get("path") == k for v in o.get("value", ())}
                for k in SETS
            }
        before = {k: set(state.get(k, ())) if state else set() for k in SETS}
        effect, state = judge(state, _with_result(ev, result))
        encode_effect(effect)
        if state is not None:
            encode_state(state)
        for key in SETS:
            named = _named(effect, key)
            assert all(isinstance(v, str) for v in named), effect
            allowed = stated[key] | before[key] | _wellformed(result, key)
            assert named <= allowed, (key, effect, result)
