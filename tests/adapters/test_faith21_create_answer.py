"""A single create (``POST /Users``) whose answer is not that create's resource (faith21):
its ``Location`` or ``meta.location`` under another resource type (or, where the adapter
knows the SP's base, on another server), its body's ``id`` and its location naming different
ids, or its body's ``schemas``/``meta.resourceType`` another type. Before, the body's ``id``
(else the location's last segment) was recorded as the created id all the same. Now the id
is not known (``rid: "-"``, ``x.answer`` says why), as a bulk create's is (faith20:
``test_faith20_bulk_location.py``), through the middleware and through the proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401
from tests.support import UvicornThread

from .helpers import SCIM_TOKEN, USER, answer_lifespan, check_created, read_body
from .rig import Rig, make_rig, proxy_rig

GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")

ELSEWHERE = "another resource type or server"
DISAGREE = "name different resources"
OTHER_TYPE = "another resource type than the create's"

# (what the SP answers a POST /Users: its Location (None: none), its body (None: none);
# "{base}" is the SP's base URL as the adapter sees it) -> the created id, or why not known.
# The SP behind the middleware has no sp_base (the server of a location is not checked);
# the proxy's is its upstream.
CASES: list[tuple[str, str | None, Any, str, str | None]] = [
    ("id only", None, {"id": "u-1"}, "u-1", None),
    ("location only", "/v2/Users/u-1", None, "u-1", None),
    (
        "all agree",
        "{base}/Users/u-1",
        {
            "schemas": [USER],
            "id": "u-1",
            "meta": {"resourceType": "User", "location": "{base}/Users/u-1"},
        },
        "u-1",
        None,
    ),
    ("encoded id", "/v2/Users/a%20b", {"id": "a b"}, "a b", None),
    ("location of a group", "/v2/Groups/g-9", {"id": "g-9"}, "-", ELSEWHERE),
    (
        "meta.location of a group",
        None,
        {"id": "g-9", "meta": {"location": "/v2/Groups/g-9"}},
        "-",
        ELSEWHERE,
    ),
    ("id and location disagree", "/v2/Users/u-2", {"id": "u-1"}, "-", DISAGREE),
    (
        "location and meta.location disagree",
        "/v2/Users/u-1",
        {"meta": {"location": "/v2/Users/u-2"}},
        "-",
        DISAGREE,
    ),
    ("schemas of a group", None, {"schemas": [GROUP], "id": "g-9"}, "-", OTHER_TYPE),
    ("resourceType Group", None, {"id": "g-9", "meta": {"resourceType": "Group"}}, "-", OTHER_TYPE),
]


def create_sp(loc: str | None, body: Any) -> Any:
    """An SP answering every POST 201 with ``loc`` as its Location and ``body``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        await read_body(receive)
        headers = [(b"content-type", b"application/scim+json")]
        if loc is not None:
            headers.append((b"location", loc.encode()))
        out = b"" if body is None else json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def fill(value: Any, base: str) -> Any:
    """``value`` with every "{base}" in its strings replaced by ``base``."""
    if isinstance(value, str):
        return value.replace("{base}", base)
    if isinstance(value, dict):
        return {k: fill(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, base) for v in value]
    return value


@contextmanager
def behind(
    how: str, h: Harness, tmp_path: Path, loc: str | None, body: Any
) -> Iterator[tuple[Rig, str]]:
    """A rig in front of :func:`create_sp` (``how``: the middleware around it, or the proxy
    forwarding to it over HTTP), and the path its creates of Users are sent to."""
    if how == "middleware":
        base = "http://scim.test/v2"
        with make_rig(h, tmp_path, app=create_sp(fill(loc, base), fill(body, base))) as rig:
            yield rig, "/v2/Users"
        return
    holder: dict[str, str] = {}

    async def late(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        base = holder["base"]
        await create_sp(fill(loc, base), fill(body, base))(scope, receive, send)

    srv = UvicornThread(late)
    try:
        holder["base"] = srv.url + "/v2"
        with proxy_rig(h, tmp_path, srv.url + "/v2") as rig:
            yield rig, "/Users"
    finally:
        srv.stop()


def create(rig: Rig, path: str, req: str) -> list[dict[str, Any]]:
    """A User created through ``rig`` at ``path`` (request id ``req``, answered 201), and
    the events the log holds for it."""
    r = rig.client.post(
        path,
        content=json.dumps({"schemas": [USER], "userName": "a"}),
        headers={
            "Authorization": f"Bearer {SCIM_TOKEN}",
            "Content-Type": "application/scim+json",
            "X-Request-Id": req,
        },
    )
    assert r.status_code == 201, r.text
    return [f.event for f in rig.auditor().search_all(req=req) if f.event is not None]


@pytest.mark.parametrize("how", ["middleware", "proxy"])
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_a_create_answer_naming_another_resource_gives_no_created_id(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    how: str,
    case: str,
) -> None:
    i = [c[0] for c in CASES].index(case)
    _, loc, body, want, why = CASES[i]
    req = f"f21-{how}-{i}"
    with behind(how, harness, tmp_path, loc, body) as (rig, path):
        got = create(rig, path, req)
    assert len(got) == 1, got
    check_created(got[0], want, why)


def test_a_location_on_another_server_is_not_the_create_s_behind_the_proxy(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The proxy knows its upstream (``sp_base``): a location on another server is not the
    create's; nor is it behind the middleware without ``sp_base``, which holds it to the
    server the request asked (faith23: before, it did not check the server)."""
    loc, body = "https://elsewhere.example/v2/Users/u-1", {"id": "u-1"}
    for how, want in (("middleware", "-"), ("proxy", "-")):
        req = f"f21-server-{how}"
        (tmp_path / how).mkdir()
        with behind(how, harness, tmp_path / how, loc, body) as (rig, path):
            got = create(rig, path, req)
        assert [e["rid"] for e in got] == [want], got


def test_an_unknown_endpoint_s_answer_is_not_checked_for_its_type(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An endpoint not in ``resource_types`` (``/Devices``) has no known type: its name is
    no type (``Device``) to hold the answer's ``meta.resourceType`` to, the id is taken."""
    body = {"id": "d-1", "meta": {"resourceType": "Device", "location": "/v2/Devices/d-1"}}
    with make_rig(harness, tmp_path, app=create_sp(None, body)) as rig:
        got = create(rig, "/v2/Devices", "f21-unknown")
    assert [(e["rt"], e["rid"]) for e in got] == [("Devices", "d-1")], got
