"""A PUT event without the marks stop 37 and faith20 added (``x.unanswered``, ``x.result``
sets): one from an adapter before them, or a client's own. The PUT left a User's roles,
entitlements or manager, or a Group's members, out, and nothing says what the SP did with
them: RFC 7644 §3.5.1 lets it clear them or keep them (a merging SP keeps them). Before
faith26 the log judged such an event a clear: every held role named revoked, every member
removed, the manager removed. It is "not known" now (the effect names the attribute
without values, the state forgets it), as for a marked event. Events as
``client.scim.actions.parse_request`` makes them, judged as the service does."""

from __future__ import annotations

from typing import Any

import pytest

from .members_model import b64, group_event, judge, members, pid_of, user_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _removed(effect: dict[str, Any], attr: str) -> list[Any]:
    out = [
        v for c in effect.get("changes", ()) if c.get("attr") == attr for v in c.get("removed", ())
    ]
    out += [r for r in effect.get("refs", ()) if r.get("attr") == attr and r.get("op") == "remove"]
    return out


def _acts(effect: dict[str, Any]) -> list[str]:
    return [a["a"] for a in effect.get("acts", ())]


@pytest.mark.parametrize("key", ["roles", "entitlements"])
def test_an_unmarked_user_put_leaving_a_set_out_names_it_not_known(key: str) -> None:
    body = {"schemas": [USER], "userName": "u9", key: [{"value": "a"}, {"value": "b"}]}
    _, state = judge(None, user_event("create", body, "c"))
    assert state[key] == ["a", "b"] and key in state["full"]
    put = user_event("replace", {"schemas": [USER], "userName": "u9"}, "p")
    assert "x" not in put  # no x.result, no x.unanswered: an adapter from before them
    effect, state = judge(state, put)
    assert _removed(effect, key) == [], effect
    assert not any(a.endswith(".revoke") for a in _acts(effect)), effect
    assert {"attr": key} in effect["changes"], effect
    assert not state.get(key) and key not in state["full"], state
    # not known: a later PUT stating "a" is no grant of a value the log cannot place
    _, state = judge(state, user_event("replace", {**body, key: [{"value": "a"}]}, "q"))
    assert state[key] == ["a"] and key in state["full"], state


def test_an_unmarked_user_put_leaving_the_manager_out_names_no_removal() -> None:
    body = {
        "schemas": [USER, ENTERPRISE],
        "userName": "u9",
        ENTERPRISE: {"manager": {"value": "m1"}},
    }
    _, state = judge(None, user_event("create", body, "c"))
    assert state.get("manager") == b64(pid_of("User", "m1")), state
    effect, state = judge(state, user_event("replace", {"schemas": [USER], "userName": "u9"}, "p"))
    assert _removed(effect, "manager") == [], effect
    assert {"attr": "manager"} in effect["changes"], effect
    assert "manager" not in state and state.get("manager_unknown"), state


def test_an_unmarked_group_put_leaving_the_members_out_names_no_removal() -> None:
    body = {"schemas": [GROUP], "displayName": "g", "members": [{"value": "u1"}, {"value": "u2"}]}
    _, state = judge(None, group_event("create", body, "c"))
    assert state["members"] == members({"u1", "u2"}) and "members" in state["full"], state
    effect, state = judge(
        state, group_event("replace", {"schemas": [GROUP], "displayName": "g"}, "p")
    )
    assert _removed(effect, "members") == [], effect
    assert {"attr": "members"} in effect["changes"], effect
    assert state["members"] == [] and "members" not in state["full"], state
