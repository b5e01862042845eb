"""Review 37: a create's answer naming a *sub-attribute* twice in two spellings.

faith25 made ``x.result.other`` null when a create's answer names an asked attribute twice
in two spellings (which the SP stored is not known). The check looked at the attribute's
own name (and an extension's key) only; the decoding notes repeated names at any depth
(``dup_keys``), and a complex attribute's sub-attribute named twice (``name.givenName``
and ``name.GIVENNAME``) was still read last-wins: with the asked spelling last, the create
was taken as stored as asked, and a later PUT stating that value, a change on an SP that
kept the other, was judged a noop.

Events as the adapter records them (``recorded.exchange_event``), judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

from tlog.scim.effects import classify

from .recorded import exchange_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def _body(**attrs: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": "ann", "active": True, **attrs}


def _other(ev: dict[str, Any]) -> Any:
    return (ev.get("x") or {}).get("result", {}).get("other", "absent")


def test_a_sub_attribute_named_twice_is_not_known() -> None:
    body = _body(name={"givenName": "Ann"})
    answer = {**body, "id": "A", "name": {"GIVENNAME": "Bob", "givenName": "Ann"}}
    created = exchange_event("POST", "/Users", body, 201, answer)
    assert _other(created) is None, created.get("x")
    _, state, _ = classify(None, created)
    put = exchange_event("PUT", "/Users/A", body, 200, {**body, "id": "A"})
    effect, _, _ = classify(state, put)
    assert effect is not None
    # what the SP held is not known: the PUT is named, never a noop
    assert [a["a"] for a in effect["acts"]] == ["user.update"], effect


def test_a_sub_attribute_twice_elsewhere_leaves_an_asked_one_alone() -> None:
    """A name repeated in an attribute the create did not ask for (or not kept as a
    digest) says nothing of the asked ones: stored as asked, as before."""
    body = _body(name={"givenName": "Ann"})
    answer = {**body, "id": "A", "addresses": [{"Type": "work", "type": "home"}]}
    created = exchange_event("POST", "/Users", body, 201, answer)
    assert _other(created) == "absent", created.get("x")
