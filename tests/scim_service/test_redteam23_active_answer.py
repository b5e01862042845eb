"""Red team 23: the SP's answer's ``active`` (``x.result.active``, read by ``as_bool``)
overruling what the request asked.

Found (failed before): ``active: "False"`` (Entra's text form) asked of an active user and
answered ``true`` (the SP kept the user active: it ignored the request, or read the text
as truthy) was named a deactivation and an activation both, with the change true ->
false. The answer is the truth: the request's (de)activation is judged again from what
the state held before it, here a noop; the other way round an activation it did not ask.
"""

from __future__ import annotations

from typing import Any

import pytest

from .members_model import PATCH_OP, judge, user_event


def _answered(start: bool, req: object, ans: object, op: str) -> tuple[list[str], Any, Any]:
    state = judge(None, user_event("create", {"userName": "u9", "active": start}, "c"))[1]
    if op == "patch":
        body: Any = {
            "schemas": [PATCH_OP],
            "Operations": [{"op": "replace", "path": "active", "value": req}],
        }
    else:
        body = {"userName": "u9", "active": req}
    ev = user_event(op, body, "r")
    ev.setdefault("x", {})["result"] = {"active": ans}
    effect, state = judge(state, ev)
    return [a["a"] for a in effect["acts"]], effect.get("changes"), state.get("active")


@pytest.mark.parametrize("op", ["patch", "replace"])
@pytest.mark.parametrize("req", ["False", False, "false"])
@pytest.mark.parametrize("ans", [True, "true", "TRUE"])
def test_redteam23_a_deactivation_answered_active_is_no_deactivation(
    op: str, req: object, ans: object
) -> None:
    acts, changes, active = _answered(True, req, ans, op)
    assert acts == ["user.noop"], (acts, changes)
    assert not changes
    assert active is True


@pytest.mark.parametrize("req", ["True", True])
def test_redteam23_an_activation_answered_inactive_is_no_activation(req: object) -> None:
    acts, changes, active = _answered(False, req, False, "patch")
    assert acts == ["user.noop"], (acts, changes)
    assert active is False


def test_redteam23_a_deactivation_answered_active_on_an_inactive_user_is_an_activation() -> None:
    """The SP activated a user asked to be deactivated: named as the activation it is."""
    acts, changes, active = _answered(False, "False", True, "patch")
    assert acts == ["user.activate"]
    assert changes == [{"attr": "active", "old": "false", "new": "true"}]
    assert active is True
