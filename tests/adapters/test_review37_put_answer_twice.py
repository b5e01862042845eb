"""Review 37: a PUT's (or PATCH's) answer naming an attribute twice in two spellings.

faith25 made a create's ``x.result.other`` null when its answer names an asked attribute
twice in two spellings (RFC 7643 §2.1: names are case-insensitive, so which the SP stored
is not known). The answers of the other writes were still read as the body decoder keeps
them, last-wins: a PUT leaving the roles out answered ``roles: [a, b]`` and ``Roles: []``
had a and b named revoked, and one answered ``nickName: "Bob"`` and ``nickname: "ann"`` (the
value the log held last) was judged a noop, a guess either way. Such an answer is not
taken now (``x.answer`` says why): what the PUT left out is judged as for a 204.

Events as the adapter records them (``recorded.exchange_event``), judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

from tlog.scim.effects import classify

from .recorded import exchange_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def _body(**attrs: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": "ann", "active": True, **attrs}


def _created(**attrs: Any) -> dict[str, Any]:
    body = _body(**attrs)
    _, state, _ = classify(None, exchange_event("POST", "/Users", body, 201, {**body, "id": "A"}))
    assert state is not None
    return dict(state)


def _acts(effect: dict[str, Any] | None) -> list[str]:
    assert effect is not None
    return [a["a"] for a in effect["acts"]]


def test_roles_named_twice_are_not_taken_as_cleared() -> None:
    state = _created(roles=[{"value": "a"}, {"value": "b"}])
    answer = {**_body(), "id": "A", "roles": [{"value": "a"}, {"value": "b"}], "Roles": []}
    put = exchange_event("PUT", "/Users/A", _body(), 200, answer)
    assert "roles" not in (put["x"].get("result") or {}), put["x"]
    assert "roles" in put["x"].get("unanswered", ()), put["x"]
    effect, _, _ = classify(state, put)
    assert "user.role.revoke" not in _acts(effect), effect


def test_an_attribute_named_twice_in_a_put_answer_is_not_taken_as_kept() -> None:
    state = _created(nickName="ann")
    answer = {**_body(), "id": "A", "nickName": "Bob", "nickname": "ann"}
    put = exchange_event("PUT", "/Users/A", _body(), 200, answer)
    effect, _, _ = classify(state, put)
    # what the SP holds is not known: named changed, never a noop
    assert _acts(effect) == ["user.update"], effect


def test_a_put_answer_without_names_twice_is_taken() -> None:
    state = _created(roles=[{"value": "a"}], nickName="ann")
    answer = {**_body(), "id": "A", "roles": [{"value": "a"}], "nickName": "ann"}
    put = exchange_event("PUT", "/Users/A", _body(), 200, answer)
    assert put["x"]["result"]["roles"] == ["a"], put["x"]
    effect, _, _ = classify(state, put)
    assert _acts(effect) == ["user.noop"], effect


def test_a_create_answer_naming_roles_twice_is_not_taken_as_the_roles() -> None:
    """Found: a create of roles [a] answered ``roles: [a]`` and ``Roles: [b]`` recorded
    ``x.result.roles`` ``[b]`` (last-wins): the create was named granting a, granting b and
    revoking a. Now the request's roles stand, as for an answer without a body."""
    body = _body(roles=[{"value": "a"}])
    answer = {**body, "id": "A", "Roles": [{"value": "b"}]}
    created = exchange_event("POST", "/Users", body, 201, answer)
    assert "roles" not in (created.get("x", {}).get("result") or {}), created.get("x")
    effect, _, _ = classify(None, created)
    assert _acts(effect) == ["user.create", "user.role.grant"], effect
