"""The audit middleware in process, around scim2-server's ASGI app, with a fake log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from client.adapters.middleware import AuditConfig, AuditMiddleware, event_json
from client.adapters.outbox import Outbox
from client.adapters.relay import Relay
from client.scim.event import event_to_json

from ..support import UvicornThread, wait_for
from .helpers import (
    BULK,
    GROUP,
    PATCH,
    SCIM_TOKEN,
    FakeLog,
    relay_for,
    scim_asgi_app,
    user,
    where_records_are_built,
)

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


@dataclass
class Rig:
    client: TestClient
    log: FakeLog
    outbox: Outbox
    relay: Relay
    mw: AuditMiddleware
    access: list[dict[str, Any]]

    def events(self, n: int | None = None) -> list[dict[str, Any]]:
        assert self.relay.flush(10)
        if n is not None:
            assert len(self.log.events) == n, [e["op"] for e in self.log.events]
        return self.log.events


@contextmanager
def make_rig(tmp_path: Path, **cfg: Any) -> Iterator[Rig]:
    log = FakeLog()
    max_bytes = cfg.pop("max_bytes", None)
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=max_bytes)
    relay = relay_for(outbox, log)
    access: list[dict[str, Any]] = []
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=access.append, **cfg)
    mw = AuditMiddleware(scim_asgi_app(), config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:
        yield Rig(client, log, outbox, relay, mw, access)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as r:
        yield r


def test_create_patch_replace_delete(rig: Rig) -> None:
    c = rig.client
    body = json.dumps(user("alice", externalId="ext-1", password="hunter2")).encode()
    trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    r = c.post(
        "/v2/Users",
        content=body,
        headers={
            **AUTH,
            "Content-Type": "application/scim+json",
            "X-Request-Id": "req-create-1",
            "traceparent": trace,
        },
    )
    assert r.status_code == 201
    assert r.headers["x-request-id"] == "req-create-1"
    assert r.headers["tlog-status"] in ("queued", "logged")
    uid, etag = r.json()["id"], r.headers["etag"]
    patch = {
        "schemas": [PATCH],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
    }
    r = c.patch(f"/v2/Users/{uid}", json=patch, headers={**AUTH, "If-Match": etag})
    assert r.status_code == 204
    etag2 = r.headers["etag"]
    r = c.put(f"/v2/Users/{uid}", json=user("alice2"), headers=AUTH)
    assert r.status_code == 200
    r = c.delete(f"/v2/Users/{uid}", headers=AUTH)
    assert r.status_code == 204
    create, patch_ev, put_ev, delete = rig.events(4)

    assert create["op"] == "create" and create["rt"] == "User" and create["rid"] == uid
    assert create["outcome"] == "success" and create["res"]["st"] == 201
    assert create["xid"] == "ext-1" and create["ver"]["post"] == etag
    assert create["req"] == {
        "m": "POST",
        "p": "/Users",
        "dig": hashlib.sha256(body).digest(),
        "len": len(body),
    }
    assert create["corr"] == {"req": "req-create-1", "trace": trace}
    assert create["actor"] == {
        "kind": "bearer",
        "tok_d": hashlib.sha256(SCIM_TOKEN.encode()).digest(),
    }
    assert create["intent"] is True
    assert [a["a"] for a in create["acts"]] == ["user.create"]
    text = event_to_json(create)
    assert SCIM_TOKEN not in text and "hunter2" not in text  # never credentials
    assert {"attr": "password"} in create["mods"]

    assert patch_ev["op"] == "patch" and patch_ev["rid"] == uid
    assert patch_ev["ver"] == {"pre": etag, "post": etag2}
    assert patch_ev["req"]["if_match"] == etag
    assert [a["a"] for a in patch_ev["acts"]] == ["user.deactivate"]
    assert patch_ev["patch"][0]["op"] == "replace"

    assert put_ev["op"] == "replace" and put_ev["res"]["st"] == 200
    assert delete["op"] == "delete" and [a["a"] for a in delete["acts"]] == ["user.delete"]
    assert "post" not in delete.get("ver", {})
    # Each event's id is in its response.
    assert len({e["eid"] for e in rig.log.events}) == 4
    assert rig.access == []


def test_request_id_is_generated_echoed_and_reads_are_not_events(rig: Rig) -> None:
    r = rig.client.get("/v2/Users", headers=AUTH)
    assert r.status_code == 200 and r.headers["x-request-id"]
    r = rig.client.post(
        "/v2/Users/.search",
        json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]},
        headers=AUTH,
    )
    assert r.status_code == 200 and "tlog-status" not in r.headers
    r = rig.client.post(
        "/v2/Users", json=user("bob"), headers={**AUTH, "X-Request-Id": "bad id\x01"}
    )
    rid = r.headers["x-request-id"]
    assert rid != "bad id\x01" and len(rid) == 36
    (ev,) = rig.events(1)
    assert ev["corr"]["req"] == rid
    assert r.headers["tlog-event-id"] == ev["eid"]


def test_failures_are_events_routing_and_auth_are_not(rig: Rig) -> None:
    c = rig.client
    assert c.delete("/v2/Users/does-not-exist", headers=AUTH).status_code == 404
    assert c.post("/v2/Users", json={"schemas": [GROUP]}, headers=AUTH).status_code == 400
    r = c.post("/v2/Users", json=user("carol"), headers=AUTH)
    uid = r.json()["id"]
    assert c.post("/v2/Users", json=user("carol"), headers=AUTH).status_code == 409
    stale = c.patch(
        f"/v2/Users/{uid}",
        headers={**AUTH, "If-Match": 'W/"999"'},
        json={"schemas": [PATCH], "Operations": [{"op": "add", "path": "title", "value": "x"}]},
    )
    assert stale.status_code == 412
    # Not provisioning events: bad token, discovery endpoint, unknown endpoint, no id.
    assert (
        c.post("/v2/Users", json=user("eve"), headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    assert c.post("/v2/Schemas", json={}, headers=AUTH).status_code == 405
    assert c.post("/v2/Nope", json={}, headers=AUTH).status_code == 404
    assert c.delete("/v2/Users", headers=AUTH).status_code in (404, 405)
    evs = rig.events(5)
    skipped, bad, ok, conflict, pre = evs
    assert skipped["outcome"] == "skipped" and skipped["err"]["code"] == "404"
    assert skipped["rid"] == "does-not-exist" and "acts" not in skipped
    assert bad["outcome"] == "failure" and "rid" not in bad and bad["res"]["st"] == 400
    assert ok["outcome"] == "success"
    assert conflict["err"]["scim_type"] == "uniqueness" and "rid" not in conflict
    assert pre["res"]["st"] == 412 and pre["ver"]["pre"] == 'W/"999"'
    assert pre["err"]["reason"]
    reasons = [(a["m"], a["st"], a["reason"]) for a in rig.access]
    assert ("POST", 401, "auth") in reasons
    assert ("POST", 405, "routing") in reasons
    assert ("POST", 404, "routing") in reasons
    assert len(reasons) == 4
    assert all("tok_d" not in a for a in rig.access)


def test_bulk_one_event_per_operation(rig: Rig) -> None:
    bulk = {
        "schemas": [BULK],
        "failOnErrors": 1,
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "u1", "data": user("dave")},
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g1",
                "data": {
                    "schemas": [GROUP],
                    "displayName": "admins",
                    "members": [{"value": "bulkId:u1"}],
                },
            },
            {
                "method": "PATCH",
                "path": "/Users/bulkId:u1",
                "data": {
                    "schemas": [PATCH],
                    "Operations": [{"op": "replace", "path": "active", "value": False}],
                },
            },
            {"method": "DELETE", "path": "/Users/missing-user"},
            {"method": "DELETE", "path": "/Groups/bulkId:g1"},
        ],
    }
    body = json.dumps(bulk).encode()
    r = rig.client.post(
        "/v2/Bulk",
        content=body,
        headers={**AUTH, "X-Request-Id": "bulk-1", "Content-Type": "application/scim+json"},
    )
    assert r.status_code == 200
    statuses = [o["status"] for o in r.json()["Operations"]]
    assert statuses == ["201", "201", "200", "404"]  # failOnErrors: the last never ran
    assert r.headers["tlog-event-count"] == "5"
    evs = rig.events(5)
    assert [e["corr"].get("seq") for e in evs] == [0, 1, 2, 3, 4]
    assert all(e["corr"]["bulk_req"] == "bulk-1" == e["corr"]["req"] for e in evs)
    assert [e["corr"].get("bulk_id") for e in evs] == ["u1", "g1", None, None, None]
    assert all(e["req"]["dig"] == hashlib.sha256(body).digest() for e in evs)
    u, g, p, d, never = evs
    assert (u["op"], u["rt"], u["outcome"]) == ("create", "User", "success")
    assert (g["op"], g["rt"]) == ("create", "Group")
    assert [a["a"] for a in g["acts"]] == ["group.create", "group.member.add"]
    assert p["rid"] == u["rid"]  # bulkId reference resolved to the created id
    assert [a["a"] for a in p["acts"]] == ["user.deactivate"]
    assert p["ver"]["post"] and p["res"]["st"] == 200
    assert (d["outcome"], d["res"]["st"], d["rid"]) == ("skipped", 404, "missing-user")
    assert never["outcome"] == "skipped" and never["err"]["code"] == "not_processed"
    assert never["rid"] == g["rid"]


def test_receipt_headers_when_delivered_in_time(tmp_path: Path) -> None:
    with make_rig(tmp_path, receipt_timeout=2.0) as rig:
        r = rig.client.post("/v2/Users", json=user("frank"), headers=AUTH)
        assert r.status_code == 201
        assert r.headers["tlog-status"] == "logged"
        (ev,) = rig.events(1)
        assert r.headers["tlog-event-id"] == ev["eid"]
        assert r.headers["tlog-index"] == "0"
        assert r.headers["tlog-tree-size"] == "1"
        assert r.headers["tlog-leaf-hash"]
        assert r.headers["tlog-checkpoint"]
        # The log is down: the answer is not delayed by the receipt wait once the relay knows.
        rig.log.down = True
        rig.client.post("/v2/Users", json=user("frank2"), headers=AUTH)
        relay = rig.relay
        wait_for(lambda: not relay.healthy, 5, "the relay unhealthy")
        r = rig.client.post("/v2/Users", json=user("frank3"), headers=AUTH)
        assert r.status_code == 201 and r.headers["tlog-status"] == "queued"
        rig.log.down = False
        assert len(rig.events()) == 3


def test_fail_closed_when_the_outbox_cannot_be_written(tmp_path: Path) -> None:
    with make_rig(tmp_path, max_bytes=48 * 1024) as rig:
        rig.log.down = True  # nothing drains the outbox, and direct delivery fails
        big = "x" * 3000
        codes = []
        for i in range(40):
            r = rig.client.post("/v2/Users", json=user(f"u{i}", title=big), headers=AUTH)
            codes.append(r.status_code)
            if r.status_code == 503:
                break
        assert codes[-1] == 503 and set(codes[:-1]) == {201}
        assert r.headers["retry-after"] == "5"
        err = r.json()
        assert err["status"] == "503" and "processed" in err["detail"]
        assert "tlog-event-id" not in r.headers and "location" not in r.headers
        n_ok = len(codes) - 1
        # The SP had applied that change (documented limit): the user exists.
        found = rig.client.get(
            "/v2/Users", params={"filter": f'userName eq "u{n_ok}"'}, headers=AUTH
        ).json()
        assert found["totalResults"] == 1
        # Further writes are refused *before* the SP sees them while the outbox is broken.
        r = rig.client.post("/v2/Users", json=user("refused"), headers=AUTH)
        assert r.status_code == 503 and "not applied" in r.json()["detail"]
        found = rig.client.get(
            "/v2/Users", params={"filter": 'userName eq "refused"'}, headers=AUTH
        ).json()
        assert found["totalResults"] == 0
        assert rig.mw.stats["refused"] == 1
        # The log comes back: the outbox drains, the probe passes, writes flow again.
        rig.log.down = False
        assert rig.relay.flush(10)
        rig.outbox.prune().result()
        r = rig.client.post("/v2/Users", json=user("after"), headers=AUTH)
        assert r.status_code == 201
        assert len(rig.events()) == n_ok + 1  # everything acknowledged was delivered


def test_outbox_broken_but_log_up_delivers_directly(tmp_path: Path) -> None:
    with make_rig(tmp_path, max_bytes=8192) as rig:
        r = rig.client.post("/v2/Users", json=user("gina", title="x" * 9000), headers=AUTH)
        assert r.status_code == 201
        assert r.headers["tlog-status"] == "logged"
        assert rig.outbox.counts()["pending"] == 0
        assert len(rig.log.events) == 1
        # The outbox stays broken: writes keep flowing while direct delivery works...
        r = rig.client.post("/v2/Users", json=user("gina2", title="x" * 9000), headers=AUTH)
        assert r.status_code == 201 and r.headers["tlog-status"] == "logged"
        # ...and are refused before the SP once the log is unreachable too.
        rig.log.down = True
        r = rig.client.post("/v2/Users", json=user("gina3", title="x" * 9000), headers=AUTH)
        assert r.status_code == 503 and "status 201" in r.json()["detail"]
        r = rig.client.post("/v2/Users", json=user("gina4", title="x" * 9000), headers=AUTH)
        assert r.status_code == 503 and "not applied" in r.json()["detail"]


def test_fail_open_passes_through(tmp_path: Path) -> None:
    with make_rig(tmp_path, max_bytes=8192, fail_open=True) as rig:
        rig.log.down = True
        r = rig.client.post("/v2/Users", json=user("hank", title="x" * 9000), headers=AUTH)
        assert r.status_code == 201 and r.headers["tlog-status"] == "unrecorded"
        assert rig.mw.stats["unrecorded"] == 1


def test_event_json_matches_the_core_mapping(rig: Rig) -> None:
    rig.client.post(
        "/v2/Users",
        json=user("ivy", password="pw", emails=[{"value": "ivy@example.com", "primary": True}]),
        headers=AUTH,
    )
    (ev,) = rig.events(1)
    assert event_json(ev) == event_to_json(ev)


def test_body_over_the_limit_is_refused_before_the_app(tmp_path: Path) -> None:
    with make_rig(tmp_path, max_body=1000) as rig:
        r = rig.client.post("/v2/Users", json=user("j" * 2000), headers=AUTH)
        assert r.status_code == 413
        assert rig.access[0]["reason"] == "body too large"
        assert rig.events() == []


def test_body_over_the_limit_over_a_socket_is_a_413_the_client_reads(tmp_path: Path) -> None:
    """Over a real socket the refusal comes before the client has sent its whole body: the
    adapter reads and drops the rest (bounded) before answering, so the client reads the
    413 instead of a connection reset ("disconnected without sending a response")."""
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    config = AuditConfig(tenant="t1", sp_id="sp1", max_body=1 << 20)
    mw = AuditMiddleware(scim_asgi_app(), config, outbox, relay_for(outbox, log), own=True)
    srv = UvicornThread(mw)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for _ in range(3):
                r = c.post(
                    "/v2/Users",
                    content=b"x" * (3 << 20),
                    headers={**AUTH, "Content-Type": "application/scim+json"},
                )
                assert r.status_code == 413
    finally:
        srv.stop()


def test_bulk_refused_as_a_whole(rig: Rig) -> None:
    ops = [{"method": "DELETE", "path": f"/Users/u{i}"} for i in range(1001)]  # > maxOperations
    r = rig.client.post("/v2/Bulk", json={"schemas": [BULK], "Operations": ops}, headers=AUTH)
    assert r.status_code == 413
    assert r.headers["tlog-event-count"] == "1001" and "tlog-event-id" not in r.headers
    evs = rig.events(1001)
    assert {(e["outcome"], e["res"]["st"], e["err"]["code"]) for e in evs} == {
        ("failure", 413, "413")
    }
    assert [e["corr"]["seq"] for e in evs] == list(range(1001))
    # Not a bulk body at all: the access stream, not the log.
    r = rig.client.post("/v2/Bulk", content=b"not json", headers=AUTH)
    assert r.status_code >= 400
    assert rig.access[-1]["reason"] == "not a bulk request"


def test_only_small_single_writes_are_built_on_the_event_loop(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small write's event is built on the event loop (no worker-thread round trip); a bulk
    request and a body above INLINE_BUILD_BYTES are built in a worker thread, so that they
    never hold up the loop's other requests."""
    from client.adapters.middleware import INLINE_BUILD_BYTES

    on_loop = where_records_are_built(monkeypatch, rig.mw)
    headers = {**AUTH, "Content-Type": "application/scim+json"}
    r = rig.client.post("/v2/Users", json=user("erin"), headers=AUTH)
    assert r.status_code == 201
    uid = r.json()["id"]
    big = {
        "schemas": [PATCH],
        "Operations": [
            {"op": "replace", "path": "displayName", "value": "x" * (INLINE_BUILD_BYTES + 1)}
        ],
    }
    assert rig.client.patch(f"/v2/Users/{uid}", json=big, headers=AUTH).status_code in (200, 204)
    bulk = {
        "schemas": [BULK],
        "Operations": [{"method": "DELETE", "path": f"/Users/{uid}"}],
    }
    r = rig.client.post("/v2/Bulk", content=json.dumps(bulk).encode(), headers=headers)
    assert r.status_code == 200
    assert on_loop == [True, False, False]
    assert len(rig.events(3)) == 3
