"""faith26: a create whose answer holds an attribute the request named as JSON ``null``, or
leaves it out. RFC 7643 §2.5 makes null the same as unassigned: the SP holds none. One it
leaves out it did not store, or never returns: either way the answer does not show it as
asked. Before, the adapter recorded neither (``x.result.other`` only held digests of values
stored otherwise), so the log took the request's value as stored, and the next PUT stating
it (a real change on the SP, which had none) was judged ``user.noop``. The answer's null
(and a create's left-out attribute) is now recorded as ``null`` in ``x.result.other`` and
the log keeps no digest of it.

Against scim2-server (its ASGI app) behind the audit middleware, with a front that answers
the SP's create as an SP that did not store two of the attributes would: ``nickName`` as
null, ``title`` left out (scim2-server itself stores every attribute its schema knows, and
refuses one it does not)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from tlog.scim.effects import classify

from .helpers import SCIM_TOKEN, FakeLog, answer_rewritten, effect_acts, relay_for, scim_asgi_app
from .recorded import exchange_event

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}
USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def _forgetful(app: Any) -> Any:
    """``app`` whose answer to a create of a User holds ``nickName`` as null and leaves
    ``title`` out (what it stored is untouched: the answer alone says otherwise)."""

    async def rewrite(scope: dict[str, Any], raw: bytes) -> bytes:
        body = json.loads(raw)
        body["nickName"] = None
        body.pop("title", None)
        return json.dumps(body).encode()

    return answer_rewritten(
        app, lambda scope: scope["method"] == "POST" and scope["path"] == "/v2/Users", rewrite
    )


def test_a_create_answered_with_null_or_without_an_asked_attribute_says_so(
    tmp_path: Path,
) -> None:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=None)
    mw = AuditMiddleware(_forgetful(scim_asgi_app()), config, outbox, relay, own=True)
    body = {"schemas": [USER], "userName": "ann", "nickName": "A", "title": "T", "locale": "en"}
    with TestClient(mw, base_url="http://scim.test") as client:
        r = client.post("/v2/Users", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        uid = r.json()["id"]
        assert r.json()["nickName"] is None and "title" not in r.json()
        r = client.put(f"/v2/Users/{uid}", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert relay.flush(10)
    create, put = log.events
    assert create["op"] == "create" and create["rid"] == uid, create
    # the SP's result differs from the request for those two, and says which
    assert create["x"]["result"]["other"] == {"nickName": None, "title": None}, create["x"]
    effect, state, _ = classify(None, create)
    assert effect_acts(effect) == ["user.create"], effect
    assert state is not None and not {"nickname", "title"} & set(state.get("other", {})), state
    assert "locale" in state["other"]  # stored and answered as asked: the request's digest
    # the PUT stating them again is a change on an SP that had none of them: never a noop
    effect, _, _ = classify(state, put)
    assert effect_acts(effect) == ["user.update"], effect


def test_a_puts_answer_holding_a_stated_attribute_as_null_is_no_noop() -> None:
    """The same for a PUT's answer: one the PUT states and the answer holds as null was
    judged by the request alone (its digest kept), so a second PUT stating it was a noop."""
    body = {"schemas": [USER], "userName": "ann", "title": "T"}
    created = exchange_event("POST", "/Users", body, 201, {**body, "id": "A"})
    _, state, _ = classify(None, created)
    put = exchange_event("PUT", "/Users/A", body, 200, {**body, "id": "A", "title": None})
    assert put["x"]["result"]["other"] == {"title": None}, put["x"]
    effect, state, _ = classify(state, put)
    assert state is not None and "title" not in state.get("other", {}), state
    effect, _, _ = classify(state, exchange_event("PUT", "/Users/A", body, 204, None))
    assert effect_acts(effect) == ["user.update"], effect


def test_a_create_stored_as_asked_still_records_nothing_more() -> None:
    """A faithful SP's create: no ``x.result.other`` (no digest, no event growth), and an
    attribute asked as null and answered without it is the same (none held)."""
    body = {"schemas": [USER], "userName": "ann", "title": "T", "nickName": None}
    answer = {k: v for k, v in body.items() if k != "nickName"}
    created = exchange_event("POST", "/Users", body, 201, {**answer, "id": "A"})
    assert "other" not in (created.get("x") or {}).get("result", {}), created.get("x")


def test_a_puts_answer_null_for_what_it_did_not_state_is_not_recorded() -> None:
    """An SP answering null for each attribute it holds none of: only the ones the PUT
    states are recorded, so the answer stays within the 64 ``x.result.other`` holds."""
    body = {"schemas": [USER], "userName": "ann", "title": "T"}
    unset = {f"x{i}": None for i in range(70)}
    answer = {**body, "id": "A", "title": None, **unset}
    put = exchange_event("PUT", "/Users/A", body, 200, answer)
    assert put["x"]["result"]["other"] == {"title": None}, put["x"]
