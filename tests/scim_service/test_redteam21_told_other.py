"""Red team 21: ``x.result.other`` as a submitter may send it (the log judges events it did
not build): a digest that is not the form the state keeps (32 lower-case hex digits, what
the adapter's ``kept_digest`` makes) is not understood. Before, whatever text it was (up to
16 KiB a value, the schema's bound for ``x``) went into the subject's state as the
attribute's digest, and a PUT restating the value later was judged against it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.adapters.recorded import exchange_event
from tlog.scim.effects import classify

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def _user(**more: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": "ann", "active": True, **more}


def _state() -> dict[str, Any]:
    body = _user(title="boss", displayName="Ann")
    _, state, _ = classify(None, exchange_event("POST", "/Users", body, 201, {**body, "id": "A"}))
    assert state is not None and {"title", "displayname"} <= set(state["other"])
    return state


@pytest.mark.parametrize(
    "digest",
    ["x" * 16384, "ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 64, "", "g" * 32],
    ids=["huge", "upper-case", "short", "long", "empty", "not-hex"],
)
def test_redteam21_a_digest_not_of_the_kept_form_is_not_understood(digest: str) -> None:
    answer = {**_user(), "id": "A", "title": "chief", "displayName": "Ann"}
    ev = exchange_event("PUT", "/Users/A", _user(), 200, answer)
    good = ev["x"]["result"]["other"]
    assert set(good) >= {"title", "displayName"}
    bad = copy.deepcopy(ev)
    bad["x"]["result"]["other"]["title"] = digest
    effect, state, _ = classify(_state(), bad)
    assert effect is not None and state is not None
    assert all(len(v) == 32 for v in state.get("other", {}).values()), state["other"]
    assert digest not in state.get("other", {}).values()
    # judged as an answer that records nothing of them: changed, not known
    plain = copy.deepcopy(ev)
    del plain["x"]["result"]["other"]
    want, want_state, _ = classify(_state(), plain)
    assert (effect, state) == (want, want_state)
