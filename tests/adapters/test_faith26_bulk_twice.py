"""faith26: a bulk exchange whose JSON names a member twice. Read last-wins, as SPs read
it, and flagged; but where the duplicates are decides what is taken:

* in the request (an operation's data): the operations are applied as the SP read them
  (last wins), every event carries ``x.body.dup_keys``, and the SP's answers are taken;
* in the BulkResponse: only the results holding a name twice (in two spellings: which
  value the SP holds is not known) lose their answer (``x.answer`` says why); before, one
  name twice anywhere in the answer (another result's, or the BulkResponse's own
  ``schemas``) left every operation's answer untaken, as if none could be read.

Against scim2-server behind the audit middleware, with a front that adds each result's
resource as its ``response`` (RFC 7644 §3.7.3 lets a result carry it; scim2-server sends
none) and writes two names twice into the BulkResponse it returns."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox

from .helpers import BULK, SCIM_TOKEN, FakeLog, answer_rewritten, relay_for, scim_asgi_app, user
from .merge_sp import _call

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"


def _answering_twice(app: Any) -> Any:
    """``app`` whose BulkResponse carries each result's resource (read back from ``app``)
    as its ``response``, names ``schemas`` twice, and has the first result's resource name
    ``active`` twice (``ACTIVE``, the opposite value, last)."""

    async def rewrite(scope: dict[str, Any], raw: bytes) -> bytes:
        results = json.loads(raw)["Operations"]
        texts = []
        for i, res in enumerate(results):
            path = urllib.parse.urlsplit(res["location"]).path
            at = {**scope, "path": path, "raw_path": path.encode(), "query_string": b""}
            status, stored = await _call(app, at, "GET", b"")
            assert status == 200, stored
            resource = json.loads(stored)
            inner = json.dumps(resource)
            if i == 0:
                inner = inner[:-1] + f', "ACTIVE": {json.dumps(not resource["active"])}}}'
            texts.append(json.dumps(res)[:-1] + f', "response": {inner}}}')
        return (
            f'{{"schemas": ["{BULK_RESPONSE}"], "schemas": ["{BULK_RESPONSE}"], '
            f'"Operations": [{", ".join(texts)}]}}'
        ).encode()

    return answer_rewritten(app, lambda scope: scope["path"] == "/v2/Bulk", rewrite)


def test_only_the_result_naming_one_twice_loses_its_answer(tmp_path: Path) -> None:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=None)
    mw = AuditMiddleware(_answering_twice(scim_asgi_app()), config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:
        ids = []
        for name in ("ann", "bo"):
            r = client.post("/v2/Users", json=user(name), headers=AUTH)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        # the request names "active" twice in the second operation's data: last wins
        data = [json.dumps(user(n, active=True)) for n in ("ann", "bo")]
        data[1] = data[1][:-1] + ', "active": false}'
        ops = [
            f'{{"method": "PUT", "path": "/Users/{i}", "data": {d}}}'
            for i, d in zip(ids, data, strict=True)
        ]
        body = f'{{"schemas": ["{BULK}"], "Operations": [{", ".join(ops)}]}}'
        r = client.post("/v2/Bulk", content=body.encode(), headers=AUTH)
        assert r.status_code == 200, r.text
        assert [o["status"] for o in r.json()["Operations"]] == ["200", "200"]
        assert client.get(f"/v2/Users/{ids[1]}", headers=AUTH).json()["active"] is False
        assert relay.flush(10)
    put_a, put_b = [e for e in log.events if e["op"] == "replace"]
    assert [put_a["rid"], put_b["rid"]] == ids
    for ev in (put_a, put_b):  # the request's duplicate, flagged on each of its events
        assert ev["x"]["body"] == {"dup_keys": ["active"]}, ev["x"]
    # the second operation as the SP read it: active false, a deactivation
    assert "user.deactivate" in [a["a"] for a in put_b["acts"]], put_b["acts"]
    # the first result names "active" twice: its answer not taken, and it says why
    assert "result" not in put_a["x"] and "twice" in put_a["x"]["answer"], put_a["x"]
    # the second's was read unambiguously: taken (before faith26, not taken either)
    assert "answer" not in put_b["x"], put_b["x"]
    assert put_b["x"]["result"]["active"] is False and put_b["x"]["result"]["userName"] == "bo"


def test_a_bulk_response_naming_its_operations_twice_has_no_answer_taken() -> None:
    """Which results are the SP's is not known where the BulkResponse names ``Operations``
    twice (read last-wins): no result's resource is taken."""
    put = {"method": "PUT", "path": "/Users/A", "data": user("ann", active=True)}
    result = json.dumps(
        {"method": "PUT", "status": "200", "location": "/v2/Users/A",
         "response": {**user("ann", active=False), "id": "A"}}
    )  # fmt: skip
    answer = (
        f'{{"schemas": ["{BULK_RESPONSE}"], "Operations": [{result}], "operations": [{result}]}}'
    )
    (ev,) = _bulk_events([put], answer)
    assert "result" not in ev["x"] and "twice" in ev["x"]["answer"], ev["x"]
    # the same answer naming it once: taken
    (ev,) = _bulk_events([put], f'{{"schemas": ["{BULK_RESPONSE}"], "Operations": [{result}]}}')
    assert ev["x"]["result"]["active"] is False, ev["x"]


@pytest.mark.parametrize(
    "ext",
    [
        "urn:ietf:params:scim:schemas:extension:acme:2.0:User",  # 50 characters
        # 70: longer than the 64 characters names are noted at (review 38: noted in full,
        # compared cut, so it never matched and the later spelling's value was recorded as
        # what the SP stored)
        "urn:ietf:params:scim:schemas:extension:acme-corporation:2.0:CustomUser",
    ],
)
def test_a_created_resource_naming_an_extension_twice_records_nothing_as_stored(
    ext: str,
) -> None:
    """A bulk create's result whose resource names an extension in two spellings (read
    last-wins: which value the SP holds is not known): nothing of it is recorded as stored,
    whatever the name's length."""
    core = "urn:ietf:params:scim:schemas:core:2.0:User"
    post = {
        "method": "POST",
        "bulkId": "b1",
        "path": "/Users",
        "data": {"schemas": [core, ext], "userName": "a", ext: {"costCenter": "ASKED"}},
    }
    resource = (
        f'{{"schemas": ["{core}", "{ext}"], "id": "1", "userName": "a", '
        '"meta": {"resourceType": "User", "location": "http://sp/v2/Users/1"}, '
        f'"{ext}": {{"costCenter": "ASKED"}}, "{ext.upper()}": {{"costCenter": "OTHER"}}}}'
    )
    answer = (
        f'{{"schemas": ["{BULK_RESPONSE}"], "Operations": [{{"method": "POST", '
        '"bulkId": "b1", "status": "201", "location": "http://sp/v2/Users/1", '
        f'"response": {resource}}}]}}'
    )
    (ev,) = _bulk_events([post], answer)
    result = ev["x"].get("result")
    # not known: no value recorded as the SP's for the extension named twice
    assert result is None or result.get("other") is None, ev["x"]


def _bulk_events(ops: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    """The events the adapter builds for a bulk request of ``ops`` answered 200 with the
    text ``answer`` (the SP's BulkResponse, as sent)."""
    from client.adapters.exchange import Builder, Exchange

    from .recorded import pid

    x = Exchange(
        {"headers": [(b"content-type", b"application/scim+json")], "query_string": b""},
        "POST",
        "/Bulk",
        "req-1",
        None,
        json.dumps({"schemas": [BULK], "Operations": ops}).encode(),
        0,
    )
    x.status = 200
    x.headers = [(b"content-type", b"application/scim+json")]
    x.resp_body = answer.encode()
    x.t1_ns = 1_800_000_000_000_000_000
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    return Builder(config, x, pid).bulk().events
