"""faith24: a create's answer records what the SP stored of the attributes the log keeps
only as digests (``x.result.other``), as a PUT's answer does (faith20, faith22).

Before, a create's event carried no ``x.result.other``: the state took the request's digest
of each such attribute, so an SP that stored one reshaped (``name`` with a ``formatted`` it
derived) had the first PUT leaving it out (the SP keeping it, its answer showing the stored
form) name it changed once. The adapter records only the attributes the create named whose
answer differs from what was asked (the rest are the request's digest already): a create an
SP stores as asked records nothing more, its event as before.

Events as the adapter records them (``recorded.exchange_event``), judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

from tlog.scim.effects import classify

from .helpers import effect_acts
from .recorded import exchange_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
NAME = {"givenName": "Ann", "familyName": "Lee"}
DERIVED = {**NAME, "formatted": "Ann Lee"}  # what an SP adds to the name it was sent


def _body(**attrs: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": "ann", "active": True, **attrs}


def _put(answer: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    body = _body(**attrs)
    return exchange_event("PUT", "/Users/A", body, 200, {**body, "id": "A", **answer})


def _named(effect: dict[str, Any] | None) -> set[str]:
    assert effect is not None
    return {c["attr"] for c in effect.get("changes", ())}


def test_a_name_reshaped_at_create_then_left_out_and_kept_is_no_change() -> None:
    body = _body(name=NAME)
    created = exchange_event("POST", "/Users", body, 201, {**body, "id": "A", "name": DERIVED})
    assert list(created["x"]["result"]["other"]) == ["name"], created["x"]
    effect, state, _ = classify(None, created)
    assert effect_acts(effect) == ["user.create"], effect
    # left out, kept by a merging SP and shown as it stored it: no change
    effect, state, _ = classify(state, _put({"name": DERIVED}))
    assert "name" not in _named(effect) and effect_acts(effect) == ["user.noop"], effect
    # and one really changed by the SP is still named
    effect, _, _ = classify(state, _put({"name": {"givenName": "Bo", "formatted": "Bo"}}))
    assert "name" in _named(effect), effect


def test_an_extension_attribute_reshaped_at_create_is_recorded_by_its_path() -> None:
    body = _body(**{ENTERPRISE: {"employeeNumber": "7", "costCenter": "x"}})
    answer = {**body, "id": "A", ENTERPRISE: {"employeeNumber": "0007", "costCenter": "x"}}
    created = exchange_event("POST", "/Users", body, 201, answer)
    assert list(created["x"]["result"]["other"]) == [f"{ENTERPRISE}:employeeNumber"]
    _, state, _ = classify(None, created)
    effect, _, _ = classify(state, _put({ENTERPRISE: answer[ENTERPRISE]}))
    assert _named(effect) == set() and effect_acts(effect) == ["user.noop"], effect


def test_a_create_stored_as_asked_records_nothing_more() -> None:
    """A well-behaved SP's create: the same event as before (no ``other``), and the next
    PUT judged as before. (An attribute the answer leaves out was the request's digest,
    not recorded, until faith26: now recorded null, not known,
    tests/adapters/test_faith26_create_answer_none.py.)"""
    body = _body(name=NAME, nickName="A", title="T")
    created = exchange_event("POST", "/Users", body, 201, {**body, "id": "A"})
    assert "other" not in (created.get("x") or {}).get("result", {}), created.get("x")
    _, state, _ = classify(None, created)
    effect, _, _ = classify(state, _put({}, name=NAME, nickName="A", title="T"))
    assert effect_acts(effect) == ["user.noop"], effect


def test_an_attribute_the_create_did_not_name_is_not_recorded() -> None:
    """As a PUT's answer: the state holds what the request named; an attribute the SP
    added on its own (a default) is not taken from the create's answer."""
    body = _body()
    created = exchange_event("POST", "/Users", body, 201, {**body, "id": "A", "locale": "en"})
    assert "other" not in (created.get("x") or {}).get("result", {}), created.get("x")


def test_a_secret_attribute_is_never_recorded() -> None:
    body = _body(nickName="A")
    answer = {**body, "id": "A", "nickName": "B"}
    created = exchange_event("POST", "/Users", body, 201, answer, secret_attrs=("nickName",))
    assert "other" not in (created.get("x") or {}).get("result", {}), created.get("x")


def test_a_create_stored_otherwise_in_a_form_the_event_cannot_hold_says_so() -> None:
    """Red team 26: an answer storing a value the event cannot hold (a number past 2**53)
    or more than 64 attributes otherwise than asked recorded nothing, so the log took the
    request's values as stored, and the next PUT stating the asked ``name`` (a real change
    on that SP) was judged a noop. ``x.result.other`` null says the create's stored values
    are not known: that PUT is named."""
    body = _body(name=NAME)
    big = {"givenName": 2**60, "familyName": "Lee"}
    created = exchange_event("POST", "/Users", body, 201, {**body, "id": "A", "name": big})
    assert created["x"]["result"]["other"] is None, created["x"]
    effect, state, _ = classify(None, created)
    assert effect_acts(effect) == ["user.create"], effect
    effect, _, _ = classify(state, _put({"name": NAME}, name=NAME))
    assert effect_acts(effect) == ["user.update"], effect
    many = {f"x{i}": "asked" for i in range(70)}
    body = _body(**many)
    answer = {**body, "id": "B", **{k: "stored" for k in many}}
    created = exchange_event("POST", "/Users", body, 201, answer)
    assert created["x"]["result"]["other"] is None, created["x"]
    _, state, _ = classify(None, created)
    effect, _, _ = classify(state, _put({}, **many))
    assert effect_acts(effect) == ["user.update"], effect
