"""faith30: a PUT answered with the resource but without an attribute the PUT stated.

The SP did not store it, or does not return it: either way its answer does not show the
stated value. Before, the adapter recorded nothing for it (``x.result.other`` held only
the answer's attributes, and a stated ``active`` the answer left out was not recorded), so
the log judged the PUT from the request alone: the stated value taken as stored, and a
stated deactivation named ``user.deactivate`` although the SP's answer does not say the
user is inactive. Now each such attribute is ``null`` in ``x.result.other`` (and ``active``
``null`` in ``x.result``): not known, the log keeps no digest of it, and the next PUT
stating it again is no noop.

Against scim2-server (its ASGI app) behind the audit middleware, with a front
(``answer_rewritten``) that drops ``title``, the enterprise ``department`` and ``active``
from its answers to PUTs (what it stored is untouched: the answer alone leaves them out)."""

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
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _dropping(app: Any) -> Any:
    async def rewrite(scope: dict[str, Any], raw: bytes) -> bytes:
        body = json.loads(raw)
        body.pop("title", None)
        body.pop("active", None)
        body.get(ENTERPRISE, {}).pop("department", None)
        return json.dumps(body).encode()

    return answer_rewritten(app, lambda scope: scope["method"] == "PUT", rewrite)


def test_a_puts_answer_leaving_out_stated_attributes_says_they_are_not_known(
    tmp_path: Path,
) -> None:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=None)
    mw = AuditMiddleware(_dropping(scim_asgi_app()), config, outbox, relay, own=True)
    body: dict[str, Any] = {
        "schemas": [USER, ENTERPRISE],
        "userName": "ann",
        "title": "T",
        "locale": "en",
        "active": True,
        ENTERPRISE: {"department": "D"},
    }
    with TestClient(mw, base_url="http://scim.test") as client:
        r = client.post("/v2/Users", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        uid = r.json()["id"]
        put = {**body, "title": "T2", "active": False, ENTERPRISE: {"department": "D2"}}
        for _ in range(2):
            r = client.put(f"/v2/Users/{uid}", json=put, headers=AUTH)
            assert r.status_code == 200, r.text
            assert not {"title", "active"} & set(r.json()), r.json()
        assert relay.flush(10)
    create, first, second = log.events
    result = first["x"]["result"]
    # the answer shows neither: not known (before: no such key, the request's values stood)
    nulls = {k for k, v in result["other"].items() if v is None}
    assert nulls == {"title", f"{ENTERPRISE}:department"}, result
    assert result["active"] is None, result
    assert isinstance(result["other"]["locale"], str)  # answered: the digest of what it shows
    _, state, _ = classify(None, create)
    effect, state, _ = classify(state, first)
    # no deactivation claimed (the answer does not say the user is inactive), no digest kept
    assert "user.deactivate" not in effect_acts(effect), effect
    assert state is not None and "active" not in state, state
    assert not {"title", f"{ENTERPRISE}:department".lower()} & set(state.get("other", {}))
    # the same PUT again is no noop: what the SP holds of them was not known
    effect, _, _ = classify(state, second)
    assert effect_acts(effect) != ["user.noop"], effect


def test_a_puts_answer_showing_what_was_stated_records_nothing_more() -> None:
    """A faithful SP's PUT answer: nothing null, and a stated null or empty attribute left
    out of the answer is as the answer says (unassigned, RFC 7643 §2.5)."""
    body = {"schemas": [USER], "userName": "ann", "title": "T", "nickName": None, "x": []}
    answer = {"schemas": [USER], "userName": "ann", "title": "T", "id": "A", "active": True}
    put = exchange_event("PUT", "/Users/A", body, 200, answer)
    other = put["x"]["result"]["other"]
    assert set(other) == {"title"} and other["title"] is not None, put["x"]
    assert put["x"]["result"]["active"] is True, put["x"]
