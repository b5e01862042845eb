"""faith30: an extension schema's resource type is what the SP says, never guessed from its
URN's last part.

From faith23 to faith30 a create's answer naming ``...:extension:acme:2.0:Group`` was taken
as naming a Group (the URN's last part), so a User's create at an SP whose Users carry that
extension lost its id (``rid: "-"``, ``x.answer``) although the SP said
``meta.resourceType: User``. Now the type of an extension is the SP's word: the answer's
``meta.resourceType``, else the SP's ``/ResourceTypes`` (``schemaExtensions``), read once
by the middleware (and so by ``tlog scim-proxy``) with the write's own credentials; where
neither says it, the event says so (``x.type_unknown``) and the URN is no evidence.

Against scim2-server (its ASGI app, a real process behind the proxy's forwarder) with a
misleading extension declared in its discovery documents, and SCIMMY (Node.js) behind the
forwarder, their answers to creates stripped of ``meta.resourceType`` so that the SP's
``/ResourceTypes``, read through the forwarder, decides."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from client.adapters.forwarder import Forwarder
from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from tests.support import UvicornThread

from .helpers import (
    SCIM_TOKEN,
    FakeLog,
    answer_rewritten,
    relay_for,
    start_scim2_server,
    stop,
)
from .misleading_sp import MISLEADING
from .misleading_sp import no_meta_type as _no_meta_type
from .misleading_sp import sp_with_misleading_extension as _sp_with_misleading_extension

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _counting(app: Any, seen: list[str]) -> Any:
    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    return front


def _is(suffix: str) -> Any:
    return lambda scope: str(scope.get("path", "")).endswith(suffix)


async def _not_found(scope: dict[str, Any], raw: bytes) -> bytes:
    return b'{"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "404"}'


@contextmanager
def _rig(tmp_path: Path, app: Any) -> Iterator[tuple[TestClient, Any]]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=None)
    mw: Any = AuditMiddleware(app, config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:
        yield client, lambda: (relay.flush(10), log.events)[1]


def _create(client: TestClient, name: str = "ann") -> str:
    body = {"schemas": [USER, MISLEADING], "userName": name, MISLEADING: {"team": "blue"}}
    r = client.post("/v2/Users", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()[MISLEADING] == {"team": "blue"}  # the SP stored its extension
    uid: str = r.json()["id"]
    return uid


def test_an_extension_named_like_another_type_is_the_type_the_sp_says(tmp_path: Path) -> None:
    seen: list[str] = []
    app = _counting(_sp_with_misleading_extension(), seen)
    with _rig(tmp_path, app) as (client, events):
        uid = _create(client)
        (ev,) = events()
    # the SP answered meta.resourceType "User": the extension is the User's (before: taken as
    # a Group's by its URN, rid "-" and "its answer names another resource type")
    assert ev["rid"] == uid and "answer" not in ev.get("x", {}), ev
    assert "type_unknown" not in ev.get("x", {}), ev


def test_without_meta_resource_type_the_sp_resource_types_decide(tmp_path: Path) -> None:
    seen: list[str] = []
    sp = answer_rewritten(_sp_with_misleading_extension(), _is("/Users"), _no_meta_type)
    with _rig(tmp_path, _counting(sp, seen)) as (client, events):
        uids = [_create(client, f"u{i}") for i in range(3)]
        evs = events()
    assert [e["rid"] for e in evs] == uids, evs
    assert all("answer" not in e.get("x", {}) for e in evs), evs
    assert all("type_unknown" not in e.get("x", {}) for e in evs), evs
    # read for every create: without credentials (refused: the SP requires them), then
    # with the write's own (faith31), kept for that credential and host
    assert seen.count("GET /v2/ResourceTypes") == 2, seen


def test_a_group_answered_with_a_users_extension_is_another_type(tmp_path: Path) -> None:
    # the SP says MISLEADING extends its Users: a Group's create answered with it (and no
    # meta.resourceType) is another type's resource, by the SP's word
    async def users_extension(scope: dict[str, Any], raw: bytes) -> bytes:
        doc = json.loads(raw)
        doc["schemas"] = [MISLEADING]
        doc.get("meta", {}).pop("resourceType", None)
        return json.dumps(doc).encode()

    sp = answer_rewritten(_sp_with_misleading_extension(), _is("/Groups"), users_extension)
    with _rig(tmp_path, sp) as (client, events):
        r = client.post("/v2/Groups", json={"schemas": [GROUP], "displayName": "g"}, headers=AUTH)
        assert r.status_code == 201, r.text
        (ev,) = events()
    assert ev["rid"] == "-" and "type" in ev["x"]["answer"], ev


def test_where_nobody_says_the_type_the_event_says_it_is_not_known(tmp_path: Path) -> None:
    seen: list[str] = []
    sp = answer_rewritten(_sp_with_misleading_extension(), _is("/Users"), _no_meta_type)
    sp = answer_rewritten(sp, _is("/ResourceTypes"), _not_found)
    with _rig(tmp_path, _counting(sp, seen)) as (client, events):
        uids = [_create(client, f"u{i}") for i in range(2)]
        evs = events()
    # no evidence of another type (the id taken), and the event says the extension's type
    # is not known (before: guessed a Group's by its URN, the id lost)
    assert [e["rid"] for e in evs] == uids, evs
    assert all(e["x"]["type_unknown"] == [MISLEADING] for e in evs), evs
    assert all("answer" not in e["x"] for e in evs), evs
    # without credentials (refused), then with them (faith31); not asked again at once
    assert seen.count("GET /v2/ResourceTypes") == 2, seen


@contextmanager
def _proxy(tmp_path: Path, upstream: str, base_path: str) -> Iterator[tuple[str, Any]]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "proxy-outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(
        tenant="t1", sp_id="sp1", on_access=None, base_path=base_path, sp_base=upstream
    )
    # the SP's answers to creates without meta.resourceType: the extension's type is then
    # the SP's /ResourceTypes, read through the forwarder from the real SP
    fwd = answer_rewritten(Forwarder(upstream, timeout=30.0), _is("/Users"), _no_meta_type)
    mw = AuditMiddleware(fwd, config, outbox, relay, own=True)
    srv = UvicornThread(mw, server_header=False, date_header=False)
    try:
        yield srv.url, lambda: (relay.flush(10), log.events)[1]
    finally:
        srv.stop()


def test_scim2_server_process_behind_the_proxy_forwarder(tmp_path: Path) -> None:
    proc, base = start_scim2_server(tmp_path)
    try:
        with _proxy(tmp_path, base, "/v2") as (url, events):
            body = {
                "schemas": [USER, ENTERPRISE],
                "userName": "ann",
                ENTERPRISE: {"department": "x"},
            }
            with httpx.Client(base_url=url, timeout=30) as c:
                r = c.post("/v2/Users", json=body, headers=AUTH)
                assert r.status_code == 201, r.text
            (ev,) = events()
    finally:
        stop(proc)
    assert ev["rid"] == r.json()["id"] and "answer" not in ev.get("x", {}), ev
    assert "type_unknown" not in ev.get("x", {}), ev


def test_scimmy_behind_the_proxy_forwarder(tmp_path: Path) -> None:
    from .scimmy import TOKEN, install_scimmy, start_scimmy

    npm_dir = install_scimmy()
    proc, base = start_scimmy(npm_dir, tmp_path)
    try:
        # SCIMMY's /ResourceTypes names the enterprise extension as its Users'
        types = httpx.get(base + "/ResourceTypes", headers={"Authorization": f"Bearer {TOKEN}"})
        exts = [
            e["schema"] for t in types.json()["Resources"] for e in t.get("schemaExtensions", [])
        ]
        assert exts == [ENTERPRISE], types.text
        with _proxy(tmp_path, base, "/scim/v2") as (url, events):
            body = {
                "schemas": [USER, ENTERPRISE],
                "userName": "ann",
                ENTERPRISE: {"department": "x"},
            }
            with httpx.Client(base_url=url, timeout=30) as c:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                r = c.post("/scim/v2/Users", json=body, headers=auth)
                assert r.status_code == 201, r.text
            (ev,) = events()
    finally:
        stop(proc)
    assert ev["rid"] == r.json()["id"] and "answer" not in ev.get("x", {}), ev
    assert "type_unknown" not in ev.get("x", {}), ev
