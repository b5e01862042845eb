"""One routing table (tlog.http.Endpoint rows): the fast dispatch, Starlette's routes and the
OpenAPI operations all come from it, and a row another module adds is dispatched alike."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from tlog.app import FastRoutes, LogApp, create_app, route_operations
from tlog.http import Endpoint, Scoped
from tlog.routes import Api

from .conftest import Harness


def _api(harness: Harness) -> Api:
    app = harness.client.app
    assert isinstance(app, LogApp)
    return app.api


def test_every_row_is_a_route_and_only_hot_rows_are_fast(harness: Harness) -> None:
    app = harness.client.app
    assert isinstance(app, LogApp)
    table = _api(harness).endpoints()
    ops = route_operations(app.app.routes)
    for e in table:
        assert (e.path.replace(":path}", "}"), e.method.lower()) in ops, e
    fast = FastRoutes(table)
    for e in table:
        path = e.path.replace("{path:path}", "0/000").replace("{index}", "5")
        got = fast.match({"method": e.method, "path": path})
        assert (got is not None) == e.hot, e
        if e.hot:
            assert got == e.handler  # the same handler Starlette's route calls
    # Each handler appears once: nothing beside the table answers a path.
    handlers = [e.handler for e in table]
    assert len(set(handlers)) == len(handlers)
    assert {(e.method, e.path) for e in table if e.hot} == {
        ("GET", "/tile/{path:path}"),
        ("POST", "/v1/entries"),
        ("GET", "/v1/proof/inclusion"),
    }


def test_a_hot_row_added_by_another_module_is_dispatched_fast(harness: Harness) -> None:
    """How the SCIM routes register POST /v1/scim/events: a hot row in extra_routes."""
    seen: list[str] = []

    async def handler(request: Scoped | Request) -> Response:
        seen.append(type(request).__name__)
        body = b""
        while True:
            m = await request.receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        return Response(body[::-1], media_type="text/plain")

    async def failing(request: Any) -> Response:
        raise PermissionError("boom")  # not in tlog.errors.ERRORS: mapped like any route

    api = _api(harness)
    app = create_app(
        harness.log,
        api.seq,
        harness.tokens,
        extra_routes=[
            Endpoint("POST", "/v1/test/hot", handler, hot=True),
            Endpoint("GET", "/v1/test/tail/{rest:path}", failing, hot=True),
        ],
    )
    c = TestClient(app, raise_server_exceptions=False)
    r = c.post("/v1/test/hot", content=b"abc")
    assert r.status_code == 200 and r.content == b"cba"
    assert seen == ["Scoped"]  # before Starlette: no Request object was built
    r = c.get("/v1/test/hot")  # the Starlette route derived from the same row answers 405
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = c.get("/v1/test/tail/x/y")
    assert r.status_code >= 500 and r.json()["error"]
    doc = c.get("/openapi.json").json()
    assert "/v1/entries" in doc["paths"] and "post" in doc["paths"]["/v1/entries"]


def test_a_hot_path_may_only_end_in_a_path_parameter() -> None:
    async def h(request: Any) -> Response:
        return Response()

    Endpoint("GET", "/a/{rest:path}", h, hot=True)
    Endpoint("GET", "/a/{index}", h)  # not hot: any Starlette path
    with pytest.raises(ValueError, match="hot route"):
        Endpoint("GET", "/a/{index}/b", h, hot=True)
