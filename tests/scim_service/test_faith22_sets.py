"""faith22: an ``add`` to a role or entitlement set the log does not know whole.

The subject may have held the value already (a merging SP keeps what the log forgot), so
the add is not known to be a grant: the effect names it as asked and says the set is not
known (``{"attr": "roles"}`` beside it), as it does for members. Where the SP's answer holds
the resulting set (``x.result``), the set is known whole from it: an asked value the answer
lacks is named nothing, a value the answer holds that nobody asked for is named nothing
(before: granted), and whether an asked value it holds was new is still not known (the
answer shows the set after the write, not before it).
"""

from __future__ import annotations

from typing import Any

import pytest

from .members_model import PATCH_OP, judge, user_event

KEYS = ["roles", "entitlements"]


def _forgotten(key: str) -> Any:
    """A user whose ``key`` the log knew ([a]), then forgot: a path-less replace with
    nothing (``{"roles": []}``), which SCIMMY reads as keeping them, scim2-server as a clear."""
    state = judge(None, user_event("create", {"userName": "u9", key: [{"value": "a"}]}, "c"))[1]
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {key: []}}]}
    effect, state = judge(state, user_event("patch", body, "f"))
    assert {"attr": key} in effect["changes"] and key not in state["full"], effect
    return state


def _add(key: str, *values: str, result: list[str] | None = None) -> dict[str, Any]:
    body = {
        "schemas": [PATCH_OP],
        "Operations": [{"op": "add", "path": key, "value": [{"value": v} for v in values]}],
    }
    ev = user_event("patch", body, "p")
    if result is not None:
        ev["x"] = {"result": {key: result}}
    return ev


def _verbs(effect: dict[str, Any]) -> list[str]:
    return [a["a"] for a in effect["acts"]]


@pytest.mark.parametrize("key", KEYS)
def test_an_add_to_a_set_not_known_says_it_may_be_no_grant(key: str) -> None:
    effect, state = judge(_forgotten(key), _add(key, "a"))
    assert {"attr": key, "added": ["a"]} in effect["changes"], effect  # as asked (search)
    assert {"attr": key} in effect["changes"], effect  # and not known to be new
    assert key not in state["full"]


@pytest.mark.parametrize("key", KEYS)
def test_an_add_to_a_set_known_whole_is_a_grant_as_before(key: str) -> None:
    """Holds: on a set known whole, the add of a value not there is a grant, nothing more;
    of one there, a ``noop``."""
    state = judge(None, user_event("create", {"userName": "u9", key: [{"value": "a"}]}, "c"))[1]
    effect, state = judge(state, _add(key, "b"))
    assert effect["changes"] == [{"attr": key, "added": ["b"]}], effect
    effect, _ = judge(state, _add(key, "b"))
    assert _verbs(effect) == ["user.noop"], effect


@pytest.mark.parametrize("key", KEYS)
def test_an_answer_holding_the_set_decides_what_is_held(key: str) -> None:
    grant = "user.role.grant" if key == "roles" else "user.entitlement.grant"
    # the answer holds a and b: b (not asked, maybe held all along) is named nothing
    effect, state = judge(_forgotten(key), _add(key, "a", result=["a", "b"]))
    added = [c for c in effect["changes"] if "added" in c]
    assert added == [{"attr": key, "added": ["a"]}], effect
    assert {"attr": key} in effect["changes"], effect  # whether a was new: not known
    assert state[key] == ["a", "b"] and key in state["full"]  # known whole from the answer
    # the answer lacks the asked value: no grant is claimed
    effect, state = judge(_forgotten(key), _add(key, "a", result=["b"]))
    assert grant not in _verbs(effect) and not [c for c in effect["changes"] if "added" in c]
    assert state[key] == ["b"] and key in state["full"]


@pytest.mark.parametrize("key", KEYS)
def test_an_answer_on_a_set_not_known_names_no_grant_nobody_asked(key: str) -> None:
    """A PATCH not touching the set, on a set not known, answered with it: before, every
    value of the answer was named granted."""
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "x"}]}
    ev = user_event("patch", body, "t")
    ev["x"] = {"result": {key: ["a", "z"]}}
    effect, state = judge(_forgotten(key), ev)
    assert not [c for c in effect.get("changes", ()) if c.get("attr") == key], effect
    assert state[key] == ["a", "z"] and key in state["full"]


@pytest.mark.parametrize("key", KEYS)
def test_a_remove_from_a_set_not_known_says_it_may_be_no_revocation(key: str) -> None:
    """As for members: a remove of a value the log does not know to be held is named as
    asked and says the set is not known (it may not have been held); one the state knows
    to be held (added since, in a set still not known whole) is a revocation alone."""
    body = {
        "schemas": [PATCH_OP],
        "Operations": [{"op": "remove", "path": f'{key}[value eq "a"]'}],
    }
    effect, _ = judge(_forgotten(key), user_event("patch", body, "r"))
    assert {"attr": key, "removed": ["a"]} in effect["changes"], effect
    assert {"attr": key} in effect["changes"], effect
    _, state = judge(_forgotten(key), _add(key, "b"))
    body["Operations"][0]["path"] = f'{key}[value eq "b"]'
    effect, _ = judge(state, user_event("patch", body, "r"))
    assert effect["changes"] == [{"attr": key, "removed": ["b"]}], effect
