"""faith25: JSON values compared by JSON type, one rule for the adapter and the log.

``_same_json`` (client.adapters.exchange) held a create's asked value and the SP's answer
the same by Python's ``==`` below the top: a nested ``1`` answered ``true`` (or ``0``
answered ``false``) was taken as stored as asked, and a ``1`` answered ``1.0`` as stored
otherwise. The log compared the state's text of a value with the new one's text: the same
JSON number written ``1`` and ``1.0`` was a change, and a role item ``1`` and ``1.0`` two
roles. :func:`client.scim.actions.same_json` is the one rule now (with
:func:`client.scim.actions.json_key`, its text for sets), checked here against a reference
written from JSON's types alone.
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim.actions import json_key, same_json
from tests.adapters.recorded import exchange_event
from tlog.scim.effects import classify

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


# --- the reference: each JSON value as (type, value), numbers exact --------------------------


def _ref(v: Any) -> Any:
    if v is None:
        return ("null",)
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int | float):
        return ("number", Fraction(v))
    if isinstance(v, str):
        return ("string", v)
    if isinstance(v, list):
        return ("array", tuple(_ref(x) for x in v))
    return ("object", frozenset((k, _ref(x)) for k, x in v.items()))


def _ref_same(a: Any, b: Any) -> bool:
    return bool(_ref(a) == _ref(b))


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, 1e16, 2**53, 2**53 + 1, float(2**53)]),
    st.sampled_from(["", "a", "1", "true", "A"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=8,
)


def _twin(v: Any, flips: Any) -> Any:
    """``v`` with some values swapped for Python-equal ones of another type (``1`` and
    ``true``, ``1`` and ``1.0``, ``0`` and ``false``), names reordered."""
    if isinstance(v, bool):
        return int(v) if flips.draw(st.booleans()) else v
    if isinstance(v, int):
        choice = flips.draw(st.sampled_from(["same", "float", "bool"]))
        if choice == "float":
            return float(v)
        if choice == "bool" and v in (0, 1):
            return bool(v)
        return v
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**60:
        return int(v) if flips.draw(st.booleans()) else v
    if isinstance(v, list):
        return [_twin(x, flips) for x in v]
    if isinstance(v, dict):
        return dict(reversed([(k, _twin(x, flips)) for k, x in v.items()]))
    return v


@settings(max_examples=600, deadline=None, derandomize=True)
@given(a=JSON, other=JSON, twin=st.booleans(), flips=st.data())
def test_same_json_is_json_equality_by_type(a: Any, other: Any, twin: bool, flips: Any) -> None:
    b = _twin(a, flips) if twin else other
    want = _ref_same(a, b)
    assert same_json(a, b) is want, (a, b)
    assert same_json(b, a) is want, (a, b)
    assert (json_key(a) == json_key(b)) is want, (a, b)


def test_the_python_equal_pairs_json_holds_apart_and_together() -> None:
    assert not same_json({"a": [1]}, {"a": [True]})
    assert not same_json([0], [False])
    assert not same_json({"a": {"b": 1}}, {"a": {"b": True}})
    assert same_json({"a": [1]}, {"a": [1.0]})
    assert same_json(1, 1.0)
    assert not same_json(2**53 + 1, float(2**53))  # the same double, not the same number


# --- the adapter: a create's answer against what it asked --------------------------------------


def _created(asked: Any, answered: Any) -> dict[str, Any]:
    body = {"schemas": [USER], "userName": "ann", "x-level": asked}
    return exchange_event("POST", "/Users", body, 201, {**body, "id": "A", "x-level": answered})


def _other(ev: dict[str, Any]) -> Any:
    return (ev.get("x") or {}).get("result", {}).get("other")


def test_a_nested_number_answered_as_a_boolean_is_stored_otherwise() -> None:
    """Found: ``{"n": 1}`` answered ``{"n": true}`` was taken as stored as asked (nothing
    recorded), so the log kept the request's digest of what the SP holds otherwise."""
    for asked, answered in (
        ({"n": 1}, {"n": True}),
        ([0, 1], [False, True]),
        ([{"n": 1}], [{"n": True}]),
    ):
        assert list(_other(_created(asked, answered)) or ()) == ["x-level"], (asked, answered)


def test_the_same_number_as_an_integer_or_a_float_is_stored_as_asked() -> None:
    """Found: ``1`` answered ``1.0`` (one JSON number) was recorded as stored otherwise."""
    for asked, answered in ((1, 1.0), ({"n": [2]}, {"n": [2.0]})):
        assert _other(_created(asked, answered)) is None, (asked, answered)


# --- the log: the state's values against new ones ---------------------------------------------


def _user_event(op: str, mods: list[dict[str, Any]], **x: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "op": op,
        "rt": "User",
        "rid": "A",
        "outcome": "success",
        "corr": {"req": "r"},
        "mods": mods,
    }
    if x:
        ev["x"] = x
    return ev


def test_emails_shown_with_the_same_number_as_a_float_are_no_change() -> None:
    """Found: a PUT leaving ``emails`` out, answered with them as created but a number
    written ``1.0``, was a ``user.update`` of the emails (the text differed)."""
    emails = [{"value": "a@x", "rank": 1}]
    _, state, _ = classify(
        None, _user_event("create", [{"attr": "emails", "new": json.dumps(emails)}])
    )
    put = _user_event(
        "replace",
        [{"attr": "userName", "op": "replace", "new": '"ann"'}],
        result={"emails": [{"value": "a@x", "rank": 1.0}]},
    )
    assert state is not None
    state = {**state, "username": '"ann"'}
    effect, _, _ = classify(state, put)
    assert effect is not None
    assert [a["a"] for a in effect["acts"]] == ["user.noop"], effect
    # and a boolean where the number was is a change
    put["x"]["result"] = {"emails": [{"value": "a@x", "rank": True}]}
    effect, _, _ = classify(state, put)
    assert effect is not None and {"attr": "emails"} in effect.get("changes", []), effect


def test_a_role_given_as_a_float_of_a_held_integer_is_no_grant() -> None:
    """Found: a role item ``1`` held, the add of ``1.0`` (one JSON number) named a grant."""
    _, state, _ = classify(None, _user_event("create", [{"attr": "roles", "new": "[1]"}]))
    add = _user_event("patch", [{"attr": "roles", "op": "add", "new": "[1.0]"}])
    effect, _, _ = classify(state, add)
    assert effect is not None
    assert [a["a"] for a in effect["acts"]] == ["user.noop"], effect
    add["mods"][0]["new"] = "[true]"
    effect, _, _ = classify(state, add)
    assert effect is not None and "user.role.grant" in [a["a"] for a in effect["acts"]], effect
