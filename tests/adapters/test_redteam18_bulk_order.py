"""Red team 18: a bulk request whose results the SP lists in another order than the
operations. RFC 7644 lets an SP process them in another order (to resolve ``bulkId``
references), and scim2-server runs a create that a
``bulkId`` reference depends on first (with ``failOnErrors`` it lists it although the
operations between were not run). The adapter paired results with operations by position
(a greedy walk in request order), so operations the SP ran were recorded ``skipped``
("stopped before this operation"): a wrong claim. Now a result is paired with the operation
it names (a POST's bulkId, another method's resource)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .helpers import PATCH, answer_lifespan, read_body
from .rig import bulk_events, make_rig

USER = "urn:ietf:params:scim:schemas:core:2.0:User"

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")


async def reversed_sp(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An SP that runs every bulk operation and lists the results last to first: the POST
    201 (Location of the new user), a PATCH of a user that does not exist 404, a DELETE
    204."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    ops = json.loads(await read_body(receive))["Operations"]
    answers = {"POST": "201", "PATCH": "404", "DELETE": "204"}
    res = []
    for op in ops:
        r = {"method": op["method"], "status": answers[op["method"]]}
        if op["method"] == "POST":
            r["bulkId"] = op["bulkId"]
            r["location"] = "https://scim.test/v2/Users/made-" + op["bulkId"]
        else:
            r["location"] = "https://scim.test/v2" + op["path"]
        res.append(r)
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkResponse"]}
    body["Operations"] = res[::-1]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/scim+json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def test_results_listed_in_another_order_are_paired_by_what_they_name(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    ops = [
        {
            "method": "POST",
            "path": "/Users",
            "bulkId": "a",
            "data": {"schemas": [USER], "userName": "a"},
        },
        {
            "method": "PATCH",
            "path": "/Users/u-missing",
            "data": {"schemas": [PATCH], "Operations": [{"op": "remove", "path": "active"}]},
        },
        {"method": "DELETE", "path": "/Users/u-gone"},
    ]
    with make_rig(harness, tmp_path, app=reversed_sp) as rig:
        got = {
            seq: (ev["outcome"], ev.get("rid"), ev["res"]["st"])
            for seq, ev in bulk_events(rig, ops, "rt18-reversed").items()
        }
    assert got == {
        0: ("success", "made-a", 201),
        1: ("failure", "u-missing", 404),
        2: ("success", "u-gone", 204),
    }
