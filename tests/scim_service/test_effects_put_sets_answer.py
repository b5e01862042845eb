"""A PUT that leaves out the roles or entitlements, where the SP's answer (``x.result``)
says what the user holds after it. RFC 7644 §3.5.1 lets an SP clear an omitted attribute or
keep it (a merging SP keeps it). Without an answer the set is not known (faith26; before,
the log read the omission as a clear, what scim2-server does: the old roles named
revoked). With an answer holding the same roles the log named them revoked and then granted
again, a revocation that never happened; the answer decides alone now. Events as the
adapter makes them, judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

import pytest

from .members_model import judge, user_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def _put(result: dict[str, Any] | None) -> dict[str, Any]:
    ev = user_event("replace", {"schemas": [USER], "userName": "u9"}, "p1")
    if result is not None:
        ev.setdefault("x", {})["result"] = result
    return ev


@pytest.mark.parametrize("key", ["roles", "entitlements"])
def test_an_answer_keeping_the_left_out_set_names_no_change(key: str) -> None:
    state = judge(None, user_event("create", {"userName": "u9", key: [{"value": "a"}]}, "c"))[1]
    effect, state = judge(state, _put({"userName": "u9", key: ["a"]}))
    assert not [c for c in effect.get("changes", ()) if c.get("attr") == key], effect
    assert not any(key[:-1] in str(a) for a in effect.get("acts", ())), effect
    # and the set is still known: a later PUT answered with none names "a" gone
    effect, _ = judge(state, _put({"userName": "u9", key: []}))
    assert [c for c in effect.get("changes", ()) if c.get("attr") == key], effect


@pytest.mark.parametrize("key", ["roles", "entitlements"])
def test_without_an_answer_the_left_out_set_is_not_known(key: str) -> None:
    state = judge(None, user_event("create", {"userName": "u9", key: [{"value": "a"}]}, "c"))[1]
    effect, state = judge(state, _put(None))
    assert [c for c in effect.get("changes", ()) if c.get("attr") == key] == [{"attr": key}], effect
    assert key not in state["full"] and not state.get(key), state
