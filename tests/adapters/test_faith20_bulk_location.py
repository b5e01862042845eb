"""A bulk POST's result whose ``location`` is not the created resource (faith20): a location
under another resource type (``/Groups/...`` for a User's create) or, where the adapter knows
the SP's base (``sp_base``), on another server. Before, its last segment was taken as the
created id all the same: the create was recorded with a Group's id, and a write of
``/Users/bulkId:a`` in the same request went to it. Now the id is not known (``rid: "-"``,
``x.answer`` says why) and the ``bulkId:`` stays unresolved."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .helpers import PATCH, USER, answer_lifespan, read_body
from .rig import bulk_events, make_rig

BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")


def bulk_sp(location: Callable[[str], str]) -> Any:
    """An SP answering ``/Bulk``: each POST 201 with ``location(bulkId)``, each other
    operation 200 with its own path as location."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        ops = json.loads(await read_body(receive))["Operations"]
        res = []
        for op in ops:
            if op["method"] == "POST":
                r = {"method": "POST", "bulkId": op["bulkId"], "status": "201"}
                r["location"] = location(op["bulkId"])
            else:
                r = {"method": op["method"], "status": "200"}
            res.append(r)
        body = {"schemas": [BULK_RESPONSE], "Operations": res}
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/scim+json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


ACTIVE_OFF = {"op": "replace", "path": "active", "value": False}
OPS = [
    {
        "method": "POST",
        "path": "/Users",
        "bulkId": "a",
        "data": {"schemas": [USER], "userName": "a"},
    },
    {
        "method": "PATCH",
        "path": "/Users/bulkId:a",
        "data": {"schemas": [PATCH], "Operations": [ACTIVE_OFF]},
    },
]


CASES = [
    # (sp_base, the POST result's location, the created id taken, or None: not known)
    (None, "https://scim.test/v2/Groups/g-9", None),
    (None, "/v2/Groups/g-9", None),
    # no sp_base: held to the server the request asked (scim.test; before faith23 the server
    # was not checked without sp_base)
    (None, "https://sp.example/v2/Users/u-1", None),
    (None, "https://scim.test/v2/Users/u-1", "u-1"),
    ("https://sp.example/v2", "https://elsewhere.example/v2/Users/u-1", None),
    ("https://sp.example/v2", "https://sp.example/v2/Users/u-1", "u-1"),
    ("https://sp.example/v2", "http://scim.test/v2/Users/u-1", "u-1"),  # the request's Host
    ("https://sp.example/v2", "/v2/Users/u-1", "u-1"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_location_naming_another_type_or_server_gives_no_created_id(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    case: int,
) -> None:
    base, loc, want = CASES[case]
    cfg = {} if base is None else {"sp_base": base}
    with make_rig(harness, tmp_path, app=bulk_sp(lambda _bid: loc), **cfg) as rig:
        got = bulk_events(rig, OPS, f"f20-loc-{case}")
    create, patch = got[0], got[1]
    assert create["outcome"] == "success"
    assert create["res"]["loc"] == loc  # what the SP said stays recorded
    if want is None:
        assert create["rid"] == "-", create
        assert "another resource type or server" in create["x"]["answer"], create
        assert patch["rid"] == "bulkId:a", patch  # not resolved to what the location named
        # and the write claims no resource (red team 20): which one it changed is not known
        assert patch["outcome"] == "warning" and patch["err"]["code"] == "unknown", patch
    else:
        assert create["rid"] == want and "answer" not in create.get("x", {}), create
        assert patch["rid"] == want and patch["outcome"] == "success", patch
