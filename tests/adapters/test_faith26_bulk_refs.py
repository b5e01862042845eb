"""faith26: a bulk request whose operations name ``bulkId:`` references, against scim2-server
behind the audit middleware. Each create is recorded exactly once, and each reference (a
path's, a member value's) is resolved to the id the SP created. Before faith26 each create's
result was read twice to learn that id (its location parsed and checked once when the
results were paired with the operations, again when the references were resolved): the
events were right, the work done twice on the proxy's path; now once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.adapters import exchange
from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox

from .helpers import BULK, GROUP, PATCH, SCIM_TOKEN, FakeLog, relay_for, scim_asgi_app, user

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}


def test_each_create_once_and_each_reference_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    result_id = exchange.Answers.result_id

    def counted(self: Any, path: str, res: Any) -> tuple[str | None, str | None]:
        reads.append(path)
        return result_id(self, path, res)

    monkeypatch.setattr(exchange.Answers, "result_id", counted)
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=None)
    mw = AuditMiddleware(scim_asgi_app(), config, outbox, relay, own=True)
    ops: list[dict[str, Any]] = [
        # the group first: the SP creates u1 before it, to resolve its member
        {
            "method": "POST",
            "path": "/Groups",
            "bulkId": "g1",
            "data": {"schemas": [GROUP], "displayName": "g", "members": [{"value": "bulkId:u1"}]},
        },
        {"method": "POST", "path": "/Users", "bulkId": "u1", "data": user("ann")},
        {"method": "POST", "path": "/Users", "bulkId": "u2", "data": user("bo")},
        {
            "method": "PATCH",
            "path": "/Users/bulkId:u1",
            "data": {
                "schemas": [PATCH],
                "Operations": [{"op": "replace", "path": "active", "value": False}],
            },
        },
    ]
    body = json.dumps({"schemas": [BULK], "Operations": ops}).encode()
    with TestClient(mw, base_url="http://scim.test") as client:
        r = client.post("/v2/Bulk", content=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert [o["status"] for o in r.json()["Operations"]] == ["201", "201", "201", "200"]
        users = {
            u["userName"]: u["id"]
            for u in client.get("/v2/Users", headers=AUTH).json()["Resources"]
        }
        (group,) = client.get("/v2/Groups", headers=AUTH).json()["Resources"]
        assert [m["value"] for m in group["members"]] == [users["ann"]]
        assert relay.flush(10)
    evs = log.events
    assert len(evs) == 4, [(e["op"], e["rt"]) for e in evs]
    by_seq = {e["corr"]["seq"]: e for e in evs}
    creates = [by_seq[i] for i in (0, 1, 2)]
    assert [(e["op"], e["rt"], e["outcome"]) for e in creates] == [
        ("create", "Group", "success"),
        ("create", "User", "success"),
        ("create", "User", "success"),
    ]
    assert [e["rid"] for e in creates] == [group["id"], users["ann"], users["bo"]]
    patch = by_seq[3]
    assert patch["rid"] == users["ann"] and [a["a"] for a in patch["acts"]] == ["user.deactivate"]
    # the group's member is the created user, never the literal bulkId (no pseudonym
    # service here: the reference stays in mods, resolved as the SP resolved it)
    (members,) = [m for m in creates[0]["mods"] if m["attr"] == "members"]
    assert json.loads(members["new"]) == [{"value": users["ann"]}], members
    # each create's result read once for its id (the pairing's and the references' alike)
    assert sorted(reads) == ["/Groups", "/Users", "/Users"], reads
