"""Bulk results (bulk19): what the adapter records of a BulkResponse it cannot read as simply
as scim2-server's and SCIMMY's.

* A result may carry the resource in ``response`` (RFC 7644 §3.7.3; neither scim2-server nor
  SCIMMY sends it on success): recorded as ``x.result`` exactly as a single write's answer
  is, so the log judges the operation from it.
* Results naming neither bulkId nor location, listed out of order: the operations they may
  belong to are recorded with outcome ``warning`` (not known), never paired by a guess.
* A write of a resource created in the same bulk request (``/Users/bulkId:x``): its result
  paired by the created resource's location, its event recorded after the create's, so the
  log judges it against the create."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .helpers import BULK, PATCH, SCIM_TOKEN, USER, answer_lifespan, read_body, scim_asgi_app
from .rig import Rig, make_rig

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")

Results = Callable[[list[dict[str, Any]], dict[str, dict[str, Any]]], list[dict[str, Any]]]


def hand_made_sp(results: Results) -> Any:
    """An SP keeping users by userName (their id): a single POST stores and answers the
    user, a single PUT merges the body into it (a merging SP, RFC 7644 §3.5.1 lets it keep
    what a PUT leaves out) and answers the merged user; ``/Bulk`` answers whatever
    ``results(operations, store)`` lists."""
    store: dict[str, dict[str, Any]] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        body = json.loads(await read_body(receive) or b"null")
        path, method = scope["path"], scope["method"]
        if path.endswith("/Bulk"):
            status = 200
            out: Any = {
                "schemas": [BULK_RESPONSE],
                "Operations": results(body["Operations"], store),
            }
        elif method == "POST":
            status, out = 201, store.setdefault(body["userName"], {**body, "id": body["userName"]})
        else:
            status, out = 200, merge(store, path.rsplit("/", 1)[-1], body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/scim+json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(out).encode()})

    return app


def merge(store: dict[str, dict[str, Any]], rid: str, body: dict[str, Any]) -> dict[str, Any]:
    store[rid] = {**store[rid], **body, "id": rid}
    return store[rid]


def send(rig: Rig, method: str, path: str, body: Any, req: str) -> Any:
    r = rig.client.request(
        method,
        "/v2" + path,
        content=json.dumps(body),
        headers={
            "Authorization": f"Bearer {SCIM_TOKEN}",
            "Content-Type": "application/scim+json",
            "X-Request-Id": req,
        },
    )
    assert r.status_code < 300, r.text
    return r


def bulk(rig: Rig, ops: list[dict[str, Any]], req: str) -> Any:
    return send(rig, "POST", "/Bulk", {"schemas": [BULK], "Operations": ops}, req)


def found(rig: Rig, req: str) -> dict[int, Any]:
    """The audited events of request ``req`` by their operation's ``corr.seq``."""
    return {
        f.event["corr"].get("seq", 0): f
        for f in rig.auditor().search_all(req=req)
        if f.event is not None
    }


def test_a_bulk_result_carrying_the_resource_is_recorded_as_a_single_write_answer(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    def results(ops: list[dict[str, Any]], store: dict[str, dict[str, Any]]) -> list[Any]:
        out = []
        for op in ops:  # PUTs merged like the single ones; "b" answered with "s"
            rid = op["path"].rsplit("/", 1)[-1]
            res = merge(store, rid, op["data"]) if rid != "b" else store["s"]
            loc = "https://scim.test/v2/Users/" + rid
            out.append({"method": "PUT", "location": loc, "status": "200", "response": res})
        return out

    made = {
        "schemas": [USER, ENT],
        "active": False,
        "roles": [{"value": "admin"}],
        ENT: {"manager": {"value": "m1"}},
    }
    put = {"schemas": [USER]}  # leaves out active, roles, the manager: the SP keeps them
    with make_rig(harness, tmp_path, app=hand_made_sp(results)) as rig:
        for name in ("s", "u", "b"):
            send(rig, "POST", "/Users", {**made, "userName": name}, f"b19-made-{name}")
        send(rig, "PUT", "/Users/s", {**put, "userName": "s"}, "b19-single")
        ops = [
            {"method": "PUT", "path": "/Users/u", "data": {**put, "userName": "u"}},
            {"method": "PUT", "path": "/Users/b", "data": {**put, "userName": "b"}},
        ]
        bulk(rig, ops, "b19-bulk")
        single = found(rig, "b19-single")[0]
        got = found(rig, "b19-bulk")
        manager = base64.b64encode(rig.pids("User", "m1")).decode()
    want = {"active": False, "roles": ["admin"], "manager": manager}  # a pseudonym, not m1
    want["emails"] = None  # a PUT's answer: what it kept of what the PUT left out
    want["entitlements"] = []  # none in the whole answer: the SP's word (stop 37)
    one, two = dict(single.event["x"]["result"]), dict(got[0].event["x"]["result"])
    assert one.pop("other") == two.pop("other")  # the digests of the rest (faith20), alike
    assert one == {**want, "userName": "s"}
    assert two == {**want, "userName": "u"}
    assert single.effect is not None and got[0].effect is not None
    # judged from the answer alike: the SP kept active (not named changed without values)
    # and the manager (no removal claimed), and the roles (the answer alone decides: not
    # named revoked and granted again, as before stop 33)
    for key in ("acts", "changes", "refs", "basis"):
        assert got[0].effect.get(key) == single.effect.get(key), key
    assert not [c for c in got[0].effect.get("changes", ()) if c["attr"] == "active"]
    assert not [c for c in got[0].effect.get("changes", ()) if c["attr"] == "roles"]
    assert not got[0].effect.get("refs")
    # an answer naming another resource is not taken as the result, and the event says so
    assert "result" not in got[1].event.get("x", {})
    assert got[1].event["x"]["answer"].startswith("names another resource")


PATCH_ACTIVE = {
    "schemas": [PATCH],
    "Operations": [{"op": "replace", "path": "active", "value": False}],
}


@pytest.mark.parametrize(
    ("listed", "want"),
    [
        # as many as the operations, their methods in order: paired in order (as before)
        (["PATCH 200", "PATCH 404", "DELETE 204"], ["success", "failure", "success"]),
        # fewer, out of order: which PATCH ran is not known; the DELETE's is the DELETE's
        (["DELETE 204", "PATCH 200"], ["warning", "warning", "success"]),
        # as many, out of order: the methods do not line up
        (["PATCH 200", "DELETE 204", "PATCH 404"], ["warning", "warning", "success"]),
    ],
)
def test_results_naming_nothing_out_of_order_are_not_guessed(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    listed: list[str],
    want: list[str],
) -> None:
    """Results naming neither bulkId nor location (a hand-made SP: the real ones name
    them): before, a walk in request order paired them anyhow, and an operation the SP
    may have run was recorded skipped ("stopped before this operation")."""
    results = [dict(zip(("method", "status"), r.split(), strict=True)) for r in listed]
    ops = [
        {"method": "PATCH", "path": "/Users/p1", "data": PATCH_ACTIVE},
        {"method": "PATCH", "path": "/Users/p2", "data": PATCH_ACTIVE},
        {"method": "DELETE", "path": "/Users/d"},
    ]
    with make_rig(harness, tmp_path, app=hand_made_sp(lambda ops, store: results)) as rig:
        bulk(rig, ops, "b19-unnamed")
        got = found(rig, "b19-unnamed")
    assert [got[k].event["outcome"] for k in range(3)] == want
    for f in got.values():
        if f.event["outcome"] == "warning":
            assert f.event["err"]["code"] == "unknown"
            assert f.effect is not None and f.effect["basis"] == "unknown"


def test_a_write_of_a_resource_created_in_the_same_bulk_is_judged_against_the_create(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    """scim2-server: the PATCH (listed first) on ``bulkId:u0`` runs after the POST it
    names. Its event names the created id and comes after the create's in the log, so
    its effect is judged against the create (a deactivation of an active user), not as
    the first event seen of the resource."""
    ops = [
        {"method": "PATCH", "path": "/Users/bulkId:u0", "data": PATCH_ACTIVE},
        {
            "method": "POST",
            "path": "/Users",
            "bulkId": "u0",
            "data": {"schemas": [USER], "userName": "b19-new", "active": True},
        },
    ]
    with make_rig(harness, tmp_path, app=scim_asgi_app()) as rig:
        r = bulk(rig, ops, "b19-create-then-write")
        made = next(x for x in r.json()["Operations"] if x["method"] == "POST")
        made_id = made["location"].rstrip("/").rsplit("/", 1)[-1]
        got = found(rig, "b19-create-then-write")
    assert got[0].event["rid"] == made_id == got[1].event["rid"]
    assert got[1].index < got[0].index  # the create first, as the SP ran them
    assert got[0].effect is not None
    assert got[0].effect["basis"] == "state"
    assert [a["a"] for a in got[0].effect["acts"]] == ["user.deactivate"]


def test_results_of_writes_on_bulk_ids_are_paired_by_the_created_location(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two creates and a PATCH of each by ``bulkId:``, listed last to first: the PATCH
    results name the created resources by location only, and are paired by it (the
    walk in request order gave the first PATCH the second one's status)."""

    def results(ops: list[dict[str, Any]], store: dict[str, dict[str, Any]]) -> list[Any]:
        out = []
        for op in ops:
            if op["method"] == "POST":
                loc = "https://scim.test/v2/Users/made-" + op["bulkId"]
                out.append({"method": "POST", "bulkId": op["bulkId"], "location": loc})
                out[-1]["status"] = "201"
            else:
                ref = op["path"].rsplit(":", 1)[-1]
                loc = "https://scim.test/v2/Users/made-" + ref
                out.append({"method": "PATCH", "location": loc})
                out[-1]["status"] = "200" if ref == "b" else "400"
        return out[::-1]

    ops: list[dict[str, Any]] = [
        {"method": "POST", "path": "/Users", "bulkId": k, "data": {"schemas": [USER]}}
        for k in ("a", "b")
    ]
    for k in ("a", "b"):
        ops[0 if k == "a" else 1]["data"]["userName"] = k
        ops.append({"method": "PATCH", "path": f"/Users/bulkId:{k}", "data": PATCH_ACTIVE})
    with make_rig(harness, tmp_path, app=hand_made_sp(results)) as rig:
        bulk(rig, ops, "b19-by-location")
        got = found(rig, "b19-by-location")
    seen = {k: (f.event["rid"], f.event["outcome"], f.event["res"]["st"]) for k, f in got.items()}
    assert seen == {
        0: ("made-a", "success", 201),
        1: ("made-b", "success", 201),
        2: ("made-a", "failure", 400),
        3: ("made-b", "success", 200),
    }
