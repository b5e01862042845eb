"""faith22: what an SP's answer says, read faithfully (``x.result``).

* ``active`` in the answer is read by the request's one rule (``as_bool``: a boolean, or
  Entra's ``"True"``/``"False"``); any other value is recorded as null, and the log then
  says whether the user is active is not known, claiming no (de)activation.
* ``x.result.other``: an attribute absent from the answer is not named changed from that
  absence alone, and one the SP stores with sub-attributes it derived is not named changed.

Events as the adapter records them (``recorded.exchange_event``), judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tlog.scim.effects import classify

from .helpers import effect_acts
from .recorded import exchange_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def _state(active: bool) -> dict[str, Any]:
    body = {"schemas": [USER], "userName": "ann", "active": active}
    _, state, _ = classify(None, exchange_event("POST", "/Users", body, 201, {**body, "id": "A"}))
    assert state is not None and state["active"] is active
    return state


def _patch_active(value: Any, answer_active: Any) -> dict[str, Any]:
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": value}}]}
    answer = {"schemas": [USER], "id": "A", "userName": "ann", "active": answer_active}
    return exchange_event("PATCH", "/Users/A", body, 200, answer)


@pytest.mark.parametrize(
    ("answer", "read"),
    [("false", False), ("False", False), ("FALSE", False), ("true", True), ("True", True)],
)
def test_an_answers_string_active_is_read_by_the_requests_rule(answer: str, read: bool) -> None:
    """The request side reads Entra's strings (as_bool); the answer side read only JSON
    booleans and dropped the rest, while the log read the strings from x.result: two rules.
    Now the adapter reads the answer by the request's rule and records the boolean."""
    ev = _patch_active(not read, answer)
    assert ev["x"]["result"]["active"] is read, ev["x"]
    effect, state, _ = classify(_state(not read), ev)
    assert state is not None and state["active"] is read
    # the SP's answer wins over the request (as for a JSON boolean answer)
    assert ("user.deactivate" if not read else "user.activate") in effect_acts(effect), effect


HOSTILE = ["no", "0", "FALSE ", " true", "yes", "", 0, 1, None, [], {}, "fal\u017fe"]


@pytest.mark.parametrize("answer", HOSTILE, ids=repr)
@pytest.mark.parametrize("asked", [False, True])
def test_an_answers_active_that_is_no_boolean_is_not_known(answer: Any, asked: bool) -> None:
    """An answer whose ``active`` is no boolean by that rule is recorded as null, and the
    log claims neither the request's (de)activation nor one read from the value: it names
    ``active`` changed without a value and forgets it (before: the answer's value was
    dropped and the request's reading stood, a deactivation the SP may not have made)."""
    ev = _patch_active(asked, answer)
    assert ev["x"]["result"]["active"] is None, ev["x"]
    effect, state, _ = classify(_state(not asked), ev)
    assert effect is not None and state is not None
    assert effect_acts(effect) == ["user.update"], effect
    assert effect["changes"] == [{"attr": "active"}], effect
    assert "active" not in state


@pytest.mark.parametrize("value", ["no", "0", "FALSE ", 0, "maybe"], ids=repr)
def test_a_submitted_result_active_that_is_no_boolean_is_not_read(value: Any) -> None:
    """The log reads x.result.active by the same rule: a submitter's ``"no"`` or ``0`` is
    neither a deactivation nor an activation; ``active`` is not known."""
    ev = _patch_active(False, False)
    ev["x"]["result"]["active"] = value
    effect, state, _ = classify(_state(True), ev)
    assert effect is not None and state is not None
    acts = effect_acts(effect)
    assert "user.deactivate" not in acts and "user.activate" not in acts
    assert {"attr": "active"} in effect["changes"] and "active" not in state


def test_an_answer_without_active_leaves_the_requests_reading() -> None:
    """Holds: no ``active`` in the answer (an SP leaving it out, a trimmed answer) records
    none, and the request's deactivation stands."""
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": False}}]}
    ev = exchange_event("PATCH", "/Users/A", body, 200, {"schemas": [USER], "id": "A"})
    assert "active" not in (ev.get("x") or {}).get("result", {})
    effect, _, _ = classify(_state(True), ev)
    assert "user.deactivate" in effect_acts(effect)


def test_a_removal_answered_with_null_stands() -> None:
    """Holds: a PATCH removing ``active`` answered with ``"active": null`` (unassigned) is
    the removal it asked, named with its old value."""
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": "active"}]}
    answer = {"schemas": [USER], "id": "A", "active": None}
    ev = exchange_event("PATCH", "/Users/A", body, 200, answer)
    effect, state, _ = classify(_state(True), ev)
    assert effect is not None and state is not None and "active" not in state
    assert effect["changes"] == [{"attr": "active", "old": "true", "new": "null"}], effect


# --- x.result.other: what the SP derived, and what it never returns ---------------------------

NAME = {"givenName": "Ann", "familyName": "Lee"}
DERIVED = {**NAME, "formatted": "Ann Lee"}  # what an SP adds to the name it was sent


def _put(answer: dict[str, Any] | None, **attrs: Any) -> dict[str, Any]:
    body = {"schemas": [USER], "userName": "ann", "active": True, **attrs}
    full = None if answer is None else {**body, "id": "A", **answer}
    return exchange_event("PUT", "/Users/A", body, 200 if answer is not None else 204, full)


def _named_other(effect: dict[str, Any] | None) -> set[str]:
    assert effect is not None
    return {c["attr"] for c in effect.get("changes", ()) if c["attr"] not in ("active",)}


def test_a_name_the_sp_stored_with_a_derived_part_is_no_change() -> None:
    """The SP stores ``name`` with a ``formatted`` it derived. Before, the PUT leaving the
    name out (the SP keeping it) named it changed (its digest is not the request's), and
    a later PUT restating the same name was an update; now the state takes the answer's
    digest of a name a PUT states, and either digest stands for it."""
    state = classify(None, exchange_event("POST", "/Users", {"userName": "ann"}, 201, None))[1]
    effect, state, _ = classify(state, _put({"name": DERIVED}, name=NAME))
    assert effect_acts(effect) == ["user.update"], effect  # the name set: a real change
    effect, state, _ = classify(state, _put({"name": DERIVED}))  # left out, kept
    assert "name" not in _named_other(effect) and effect_acts(effect) == ["user.noop"], effect
    effect, state, _ = classify(state, _put({"name": DERIVED}, name=NAME))  # restated
    assert effect_acts(effect) == ["user.noop"], effect
    # a real change is named: another name asked and stored
    other = {"givenName": "Bo", "familyName": "Lee"}
    effect, state, _ = classify(state, _put({"name": {**other, "formatted": "Bo Lee"}}, name=other))
    assert effect_acts(effect) == ["user.update"], effect
    # and one the SP stored otherwise than asked, left out next, named changed from there
    effect, _, _ = classify(state, _put({"name": {"givenName": "Cy", "formatted": "Cy"}}))
    assert "name" in _named_other(effect), effect


def test_an_attribute_the_sp_never_returns_is_not_known_when_left_out() -> None:
    """The log cannot know: an attribute absent from a PUT's answer was either cleared (a
    replacing SP: RFC 7644 §3.5.1) or kept and never shown (an SP that does not return
    it), and the two answers are the same. The effect names it without a value (the form
    of "not known" throughout: ``{"attr": "nickname"}``), the state forgets it (nothing
    later judged against it, no ``noop``), and it is never named from the answer's absence
    while the PUT states it: restating it with the answer again without it is no change."""
    state = classify(None, exchange_event("POST", "/Users", {"userName": "ann"}, 201, None))[1]
    effect, state, _ = classify(state, _put({}, nickName="A"))
    assert effect_acts(effect) == ["user.update"] and state is not None
    effect, state2, _ = classify(state, _put({}, nickName="A"))  # stated, never shown
    assert effect_acts(effect) == ["user.noop"], effect
    effect, state2, _ = classify(state2, _put({}))  # left out, still not shown
    assert effect is not None and {"attr": "nickname"} in effect["changes"], effect
    assert effect_acts(effect) == ["user.update"] and "nickname" not in state2["other"]
