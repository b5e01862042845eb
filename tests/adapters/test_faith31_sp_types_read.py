"""faith31: how the audit adapter reads the SP's ``/ResourceTypes`` (faith30: an extension's
resource type is the SP's word).

From faith30 to faith31 the read was made with the first create's credentials and ``Host``,
its answer kept for the life of the process and used for every tenant and client, without
the app's lifespan state (an app whose handler needs it answered 500, and the types read as
not known), and any 2xx create answer naming a URN anywhere (an error's text, a bulk
result's error, an answer saying its own type) asked. Now the read is made without
credentials first (RFC 7644 §4: the discovery endpoints describe the SP, a client MAY use
them to learn how to interact with it); only where the SP refuses that, with the request's
own credentials, kept for that credential and host alone, never longer than
``SP_TYPES_TTL``, and recorded as an access; the request's lifespan state is passed; and
only a created resource that names an extension and not its type asks.

Against scim2-server (its ASGI app) with an extension of its Users whose URN ends with
another type's name, its answers to creates stripped of ``meta.resourceType`` so that the
SP's ``/ResourceTypes`` decides."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.adapters import middleware as mw_mod
from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox

from .helpers import SCIM_TOKEN, FakeLog, answer_rewritten, relay_for
from .misleading_sp import MISLEADING, USER, no_meta_type, sp_with_misleading_extension

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

OTHER_TOKEN = SCIM_TOKEN + "-other"


def _sp(*, public_discovery: bool) -> Any:
    """scim2-server with the ``MISLEADING`` extension, taking ``SCIM_TOKEN`` and
    ``OTHER_TOKEN``; its discovery endpoints without credentials too where
    ``public_discovery``; its answers to creates without ``meta.resourceType``."""
    app = sp_with_misleading_extension()
    check = type(app).check_auth

    def check_auth(self: Any, request: Any) -> None:
        if public_discovery and request.path.rstrip("/").endswith("/ResourceTypes"):
            return
        if (request.header("Authorization") or "") == f"Bearer {OTHER_TOKEN}":
            return
        check(self, request)

    type(app).check_auth = check_auth  # type: ignore[method-assign]
    return answer_rewritten(app, lambda s: str(s["path"]).endswith("/Users"), no_meta_type)


def _reads(app: Any, seen: list[tuple[str, str]]) -> Any:
    """``app`` noting each ``/ResourceTypes`` read: its ``Host`` and ``Authorization``."""

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and str(scope["path"]).endswith("/ResourceTypes"):
            h = {bytes(k).lower(): bytes(v).decode() for k, v in scope["headers"]}
            seen.append((h.get(b"host", ""), h.get(b"authorization", "")))
        await app(scope, receive, send)

    return front


@contextmanager
def _rig(tmp_path: Path, app: Any) -> Iterator[tuple[TestClient, Any, list[dict[str, Any]]]]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    access: list[dict[str, Any]] = []
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=access.append)
    mw: Any = AuditMiddleware(app, config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:
        yield client, lambda: (relay.flush(10), log.events)[1], access


def _create(client: TestClient, name: str, token: str = SCIM_TOKEN, **kw: Any) -> str:
    body = {"schemas": [USER, MISLEADING], "userName": name, MISLEADING: {"team": "blue"}}
    auth = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    r = client.post("/v2/Users", json=body, headers=auth, **kw)
    assert r.status_code == 201, r.text
    uid: str = r.json()["id"]
    return uid


def _all_known(evs: list[dict[str, Any]], uids: list[str]) -> None:
    assert [e["rid"] for e in evs] == uids, evs
    assert all("type_unknown" not in e.get("x", {}) for e in evs), evs


def test_public_discovery_is_read_without_the_clients_credentials(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    with _rig(tmp_path, _reads(_sp(public_discovery=True), seen)) as (client, events, access):
        uids = [_create(client, "a"), _create(client, "b", OTHER_TOKEN)]
        evs = events()
    _all_known(evs, uids)
    # one read, without credentials (before: with the first create's bearer token), and so
    # no access made in a client's name to record
    assert seen == [("scim.test", "")], seen
    assert not [a for a in access if a["reason"] == mw_mod.SP_TYPES_READ], access


def test_a_read_needing_credentials_uses_each_requests_own_and_is_recorded(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, str]] = []
    with _rig(tmp_path, _reads(_sp(public_discovery=False), seen)) as (client, events, access):
        uids = [_create(client, "a"), _create(client, "b")]
        uids.append(_create(client, "c", OTHER_TOKEN, headers={"X-Request-Id": "req-c"}))
        uids.append(_create(client, "d", OTHER_TOKEN, headers={"Host": "other.test"}))
        evs = events()
    _all_known(evs, uids)
    mine, other = f"Bearer {SCIM_TOKEN}", f"Bearer {OTHER_TOKEN}"
    # without credentials first (refused), then the request's own; kept per credential and
    # host (before: one read, the first create's token, for every later client and host)
    assert seen == [
        ("scim.test", ""),
        ("scim.test", mine),
        ("scim.test", other),
        ("other.test", ""),
        ("other.test", other),
    ], seen
    reads = [a for a in access if a["reason"] == mw_mod.SP_TYPES_READ]
    assert [(a["m"], a["p"], a["st"]) for a in reads] == [("GET", "/ResourceTypes", 200)] * 3
    assert reads[1]["req"] == "req-c", reads  # under the id of the request that made it
    assert reads[0]["req"] == evs[0]["corr"]["req"], (reads, evs[0])


def test_a_kept_answer_is_asked_again_after_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mw_mod, "SP_TYPES_TTL", 0.0)
    seen: list[tuple[str, str]] = []
    with _rig(tmp_path, _reads(_sp(public_discovery=True), seen)) as (client, events, _):
        uids = [_create(client, "a"), _create(client, "b")]
        evs = events()
    _all_known(evs, uids)
    assert seen == [("scim.test", "")] * 2, seen  # (before: once for the process's life)


def _needs_lifespan_state(app: Any) -> Any:
    """``app`` behind a front that keeps a value in the ASGI lifespan state at start-up and
    answers 500 to a request whose scope does not carry it (an app whose handlers use
    their lifespan state, as Starlette's ``request.state`` does)."""

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            msg = await receive()
            scope["state"]["ready"] = True
            await send({"type": "lifespan.startup.complete"})
            msg = await receive()
            assert msg["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http" and not scope.get("state", {}).get("ready"):
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"no state"})
            return
        await app(scope, receive, send)

    return front


def test_the_read_carries_the_apps_lifespan_state(tmp_path: Path) -> None:
    app = _needs_lifespan_state(_sp(public_discovery=True))
    with _rig(tmp_path, app) as (client, events, _):
        uid = _create(client, "a")
        (ev,) = events()
    # before: the read passed "state": {} and was answered 500, the type not known
    _all_known([ev], [uid])


def test_answers_saying_nothing_of_an_extensions_type_do_not_ask(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    app = sp_with_misleading_extension()  # its answers say meta.resourceType

    async def conflict_quoting(scope: dict[str, Any], raw: bytes) -> bytes:
        # a bulk answer whose create failed (a coded status, 409) with an error naming the
        # extension's URN in its detail
        doc = json.loads(raw)
        for res in doc["Operations"]:
            res["status"] = "409"
            res.pop("location", None)
            res["response"] = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": "409",
                "detail": f"{MISLEADING} refused",
            }
        return json.dumps(doc).encode()

    bulk_app = answer_rewritten(app, lambda s: str(s["path"]).endswith("/Bulk"), conflict_quoting)
    with _rig(tmp_path, _reads(bulk_app, seen)) as (client, events, _):
        _create(client, "a")  # answered with meta.resourceType: the SP said it
        bulk = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [
                {
                    "method": "POST",
                    "path": "/Users",
                    "bulkId": "b1",
                    "data": {"schemas": [USER, MISLEADING], "userName": "b"},
                }
            ],
        }
        auth = {"Authorization": f"Bearer {SCIM_TOKEN}"}
        r = client.post("/v2/Bulk", json=bulk, headers=auth)
        assert r.status_code == 200, r.text
        evs = events()
    assert len(evs) == 2 and evs[1]["outcome"] == "failure", evs
    assert seen == [], seen  # (before: both asked)


def test_a_large_answer_is_looked_at_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 40b: ``wants_sp_types`` decodes an answer naming an extension (up to 4 MiB, or
    a gzip one), which held the event loop (~160 ms a large answer). A create answer larger
    than the inline bound is now looked at in a worker thread; a small one on the loop, as
    its events are built."""
    import asyncio

    real = mw_mod.wants_sp_types
    on_loop: list[bool] = []

    def spy(x: Any, cfg: Any) -> bool:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(x, cfg)

    monkeypatch.setattr(mw_mod, "wants_sp_types", spy)
    with _rig(tmp_path, _sp(public_discovery=True)) as (client, events, _):
        body = {
            "schemas": [USER, MISLEADING],
            "userName": "large",
            MISLEADING: {"team": "t" * (mw_mod.INLINE_BUILD_BYTES + 1)},
        }
        r = client.post("/v2/Users", json=body, headers={"Authorization": f"Bearer {SCIM_TOKEN}"})
        assert r.status_code == 201, r.text
        uids = [r.json()["id"], _create(client, "small")]
        evs = events()
    _all_known(evs, uids)
    assert on_loop == [False, True], on_loop


def test_the_public_read_sends_routing_headers_only_and_is_kept_per_view(
    tmp_path: Path,
) -> None:
    """Review 40b: the read without credentials passed every ``X-Forwarded-*`` header (a
    front's ``X-Forwarded-User`` or ``-Access-Token``: a client's identity, in a read not
    recorded as an access), and its answer was kept per ``Host`` alone, so the first
    client's ``X-Forwarded-Host`` fixed the view of every client of that host. Now it sends
    the routing headers only, and a view is kept per host and routing headers."""
    seen: list[dict[bytes, str]] = []
    sp = _sp(public_discovery=True)

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and str(scope["path"]).endswith("/ResourceTypes"):
            seen.append({bytes(k).lower(): bytes(v).decode() for k, v in scope["headers"]})
        await sp(scope, receive, send)

    who = {"X-Forwarded-User": "alice", "X-Forwarded-Access-Token": "secret"}
    with _rig(tmp_path, front) as (client, events, access):
        uids = [
            _create(client, "a", headers={**who, "X-Forwarded-Host": "one.example"}),
            _create(client, "b", headers={"X-Forwarded-Host": "two.example"}),
            _create(client, "c", headers={"X-Forwarded-Host": "one.example"}),
        ]
        evs = events()
    _all_known(evs, uids)
    assert [h.get(b"x-forwarded-host") for h in seen] == ["one.example", "two.example"], seen
    for h in seen:
        assert b"x-forwarded-user" not in h and b"x-forwarded-access-token" not in h, h
        assert b"authorization" not in h, h
    assert not [a for a in access if a["reason"] == mw_mod.SP_TYPES_READ], access
