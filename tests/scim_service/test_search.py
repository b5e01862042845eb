"""Auditor search through ScimAuditClient: filters, paging, verification of every result
(and rejection of tampered answers), receipts, and the access events that reads append."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Signer
from client.net.scim_audit import ScimAuditClient, ScimAuditError
from client.scim import event_to_json

from .conftest import BASE_TS, ORIGIN, T2, URL, Harness, group_event, user_event
from .helpers import stored_event

ALICE = "u-alice-7f3a"
BOB = "u-bob-55c1"


def populate(h: Harness) -> dict[str, Any]:
    """Nine T1 events (ts BASE_TS + 0..8 s, one per request) and one T2 event."""
    evs = [
        user_event(ALICE, actor="admin-bob-9921", req="req-a1"),  # deactivate
        user_event(ALICE, actor="admin-carol-1234", req="req-a2", active=("false", "true")),
        user_event(ALICE, actor="admin-bob-9921", req="req-a3", op="delete"),
        user_event(
            BOB, xid="bob.builder@example.org", actor="admin-bob-9921", req="req-b1", op="create"
        ),
        user_event(
            BOB,
            xid="bob.builder@example.org",
            actor="admin-carol-1234",
            req="req-b2",
            outcome="failure",
        ),
        user_event(
            None,
            xid="carl.nobody@example.org",
            actor="admin-bob-9921",
            req="req-c1",
            op="create",
            outcome="failure",
        ),
    ]
    for ev in evs:
        assert h.post_event(ev).status_code == 200
    pids = h.client.post(
        "/v1/scim/pseudonyms",
        headers=h.h("sub1"),
        json={"refs": [{"rt": "User", "id": ALICE}, {"rt": "User", "id": BOB}]},
    )
    assert pids.status_code == 200
    pid_a, pid_b = (base64.b64decode(x["pid"]) for x in pids.json()["refs"])
    g = group_event([pid_a, pid_b])
    assert h.post_event(g).status_code == 200
    # a bulk request: two events sharing one request id, in one batch
    bulk = [
        user_event(f"u-bulk-{i}", req="req-bulk", actor="admin-dave-0001", op="delete")
        for i in range(2)
    ]
    r = h.client.post(
        "/v1/scim/events/batch",
        headers={**h.h("sub1"), "Content-Type": "application/json"},
        content=json.dumps({"events": [json.loads(event_to_json(e)) for e in bulk]}),
    )
    assert r.status_code == 200
    assert h.post_event(user_event("u-globex-1", tenant=T2), "sub2").status_code == 200
    return {"events": evs, "group": g, "bulk": bulk, "pid_a": pid_a}


def rids(results: Any) -> list[str | None]:
    return [r.event.get("rid") for r in results]


def test_filters(harness: Harness) -> None:
    populate(harness)
    a = harness.auditor()
    assert rids(a.search(rid=ALICE).results) == [ALICE] * 3
    assert [r.event["corr"]["req"] for r in a.search(actor="admin-bob-9921").results] == [
        "req-a1",
        "req-a3",
        "req-b1",
        "req-c1",
    ]
    assert [r.event["corr"]["req"] for r in a.search(action="user.deactivate").results] == [
        "req-a1"
    ]
    assert [r.event["corr"]["req"] for r in a.search(action="user.activate").results] == ["req-a2"]
    assert [r.event["corr"]["req"] for r in a.search(outcome="failure").results] == [
        "req-b2",
        "req-c1",
    ]
    assert rids(a.search(req="req-b1").results) == [BOB]
    assert sorted(rids(a.search(req="req-bulk").results)) == ["u-bulk-0", "u-bulk-1"]
    assert rids(a.search(xid="bob.builder@example.org").results) == [BOB, BOB]
    # a failed create without rid is found by its externalId
    assert [r.event.get("xid") for r in a.search(xid="carl.nobody@example.org").results] == [
        "carl.nobody@example.org"
    ]
    # filters combine (AND)
    assert [
        r.event["corr"]["req"] for r in a.search(rid=ALICE, actor="admin-bob-9921").results
    ] == ["req-a1", "req-a3"]
    assert a.search(rid=ALICE, outcome="failure").results == []
    # member references: the group event names alice only as a pseudonym
    ref = a.search(ref=ALICE).results
    assert [r.event["rt"] for r in ref] == ["Group"] and ALICE not in json.dumps(
        ref[0].event, default=str
    )
    assert a.search(ref="u-nobody").results == []
    assert a.search(rid="u-globex-1").results == []  # other tenant
    # time range on the log's ts: events 1..2 (ts BASE_TS+1000 .. BASE_TS+2999)
    got = a.search(rid=ALICE, since=BASE_TS + 1000, until=BASE_TS + 3000).results
    assert [r.event["corr"]["req"] for r in got] == ["req-a2", "req-a3"]
    assert all(BASE_TS + 1000 <= r.leaf.ts < BASE_TS + 3000 for r in got)


def test_paging_returns_everything_once(harness: Harness) -> None:
    populate(harness)
    a = harness.auditor()
    pages = []
    cursor = None
    while True:
        page = a.search(actor="admin-bob-9921", limit=1, cursor=cursor)
        pages.append([r.event["corr"]["req"] for r in page.results])
        if page.next is None:
            break
        cursor = page.next
    flat = [x for p in pages for x in p]
    assert flat == ["req-a1", "req-a3", "req-b1", "req-c1"]
    assert all(len(p) <= 1 for p in pages)
    # Unfiltered: every T1 event, the log's own access events included, each once.
    everything = list(a.search_all(limit=3))
    idx = [r.index for r in everything]
    assert len(idx) == len(set(idx))
    user_rids = [r.event.get("rid") for r in everything if r.event and r.event["rt"] == "User"]
    assert user_rids.count(ALICE) == 3 and "u-globex-1" not in user_rids
    assert any(r.event and r.event["rt"] == "tlog.access" for r in everything)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=01", "leading zeros"),
        ("since=-1", "since"),
        ("cursor=abc", "cursor"),
        ("cursor=" + "A" * 56, "cursor"),
        ("rid=a&rid=b", "twice"),
        ("tenant=x", "unknown"),
        ("rid=", "rid"),
        ("rid=%01", "control"),
    ],
)
def test_bad_queries_are_400(harness: Harness, query: str, needle: str) -> None:
    r = harness.client.get(f"/v1/scim/events?{query}", headers=harness.h("aud1"))
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_search_result_shape(harness: Harness) -> None:
    ev = user_event()
    harness.post_event(ev)
    d = harness.client.get(f"/v1/scim/events?rid={ALICE}", headers=harness.h("aud1")).json()
    assert set(d) == {"tree_size", "checkpoint", "results", "next", "access"}
    (res,) = d["results"]
    assert set(res) >= {
        "index",
        "leaf",
        "leaf_hash",
        "event",
        "nonce",
        "inclusion_proof",
        "tree_size",
        "checkpoint",
    }
    assert res["event"] == json.loads(event_to_json(stored_event(ev, res)))
    assert res["actor"]["actor"] == json.loads(event_to_json(ev))["actor"]
    assert d["next"] is None


# -- tampering ---------------------------------------------------------------------------------


def tampered(
    h: Harness,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    rewrite: Callable[[httpx.URL], httpx.URL] | None = None,
) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        url = request.url
        if rewrite is not None and url.path == "/v1/scim/events":
            url = rewrite(url)
        r = h.client.request(request.method, str(url), headers=dict(request.headers))
        if mutate is not None and request.url.path == "/v1/scim/events" and r.status_code == 200:
            d = r.json()
            mutate(d)
            return httpx.Response(200, json=d)
        return httpx.Response(
            r.status_code,
            content=r.content,
            headers={"content-type": r.headers.get("content-type", "")},
        )

    return httpx.Client(transport=httpx.MockTransport(handler))


def _flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def _set_event(d: dict[str, Any], key: str, value: Any) -> None:
    d["results"][0]["event"][key] = value


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "event-field": lambda d: d["results"][0]["event"]["corr"].update(req="req-forged"),
    "event-rid": lambda d: _set_event(d, "xid", "someone.else@example.org"),
    "nonce": lambda d: d["results"][0].update(nonce=_flip(d["results"][0]["nonce"])),
    "leaf": lambda d: d["results"][0].update(leaf=d["results"][1]["leaf"]),
    "leaf-hash": lambda d: d["results"][0].update(leaf_hash=d["results"][1]["leaf_hash"]),
    "index": lambda d: d["results"][0].update(index=d["results"][1]["index"]),
    "proof": lambda d: d["results"][0].update(
        inclusion_proof=[_flip(x) for x in d["results"][0]["inclusion_proof"]]
    ),
    "short-proof": lambda d: d["results"][0].update(
        inclusion_proof=d["results"][0]["inclusion_proof"][:-1]
    ),
    "checkpoint": lambda d: d["results"][0].update(
        checkpoint=d["results"][0]["checkpoint"].replace("\n— ", "\n— x", 1)
    ),
    "tree-size": lambda d: d["results"][0].update(tree_size=d["results"][0]["tree_size"] + 1),
    "erased-claim": lambda d: d["results"][0].update(erased=True),
    "swap-event": lambda d: d["results"][0].update(event=d["results"][1]["event"]),
    "not-json-event": lambda d: d["results"][0].update(event="oops"),
    "float": lambda d: d["results"][0]["event"].update(ts=1.5),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_client_rejects_tampered_answers(harness: Harness, name: str) -> None:
    populate(harness)
    a = ScimAuditClient(
        URL, harness.tok["aud1"], harness.vkey, http=tampered(harness, MUTATIONS[name])
    )
    with pytest.raises(VerificationError):
        a.search(rid=ALICE)
    # the untampered answer verifies
    assert len(harness.auditor().search(rid=ALICE).results) == 3


def test_client_rejects_results_that_do_not_match_the_query(harness: Harness) -> None:
    populate(harness)
    swap = tampered(harness, rewrite=lambda u: u.copy_set_param("rid", BOB))
    with pytest.raises(VerificationError, match="rid filter"):
        ScimAuditClient(URL, harness.tok["aud1"], harness.vkey, http=swap).search(rid=ALICE)
    since = tampered(harness, rewrite=lambda u: u.copy_remove_param("since"))
    with pytest.raises(VerificationError, match="time range"):
        ScimAuditClient(URL, harness.tok["aud1"], harness.vkey, http=since).search(
            rid=ALICE, since=BASE_TS + 1000
        )


def test_client_rejects_other_tenants_leaves_and_other_logs(harness: Harness) -> None:
    populate(harness)
    a = harness.auditor(tenant_ref=bytes(16))
    with pytest.raises(VerificationError, match="tenant ref"):
        a.search(rid=ALICE)
    other = Ed25519Signer(ORIGIN, bytes(32)).vkey()
    with pytest.raises(VerificationError):
        ScimAuditClient(URL, harness.tok["aud1"], other, http=harness.client).search(rid=ALICE)


def test_client_detects_a_split_view(harness: Harness) -> None:
    populate(harness)
    a = harness.auditor()
    a.search(rid=ALICE)
    fork = Ed25519Signer(ORIGIN, bytes(range(32)))  # the log's own key, signing a fork

    def mutate(d: dict[str, Any]) -> None:
        from client.formats.checkpoint import Checkpoint
        from client.formats.note import sign_note

        # same size as the real tree, another root: only the consistency proof catches it
        note = sign_note(Checkpoint(ORIGIN, d["tree_size"], bytes(32)).text(), [fork])
        d["checkpoint"] = note

    a._core.http = tampered(harness, mutate)
    with pytest.raises(VerificationError):
        a.search(rid=ALICE)


def test_client_reports_http_errors(harness: Harness) -> None:
    a = ScimAuditClient(URL, harness.tok["sub1"], harness.vkey, http=harness.client)
    with pytest.raises(ScimAuditError) as e:
        a.search(rid=ALICE)
    assert e.value.status == 403


# -- receipts ----------------------------------------------------------------------------------


def test_receipts_by_eid_and_request_id(harness: Harness) -> None:
    ctx = populate(harness)
    bulk = ctx["bulk"]
    for name in ("sub1", "aud1"):
        r = harness.client.get("/v1/scim/receipts?req=req-bulk", headers=harness.h(name))
        assert r.status_code == 200
        got = r.json()["receipts"]
        assert sorted(x["eid"] for x in got) == sorted(e["eid"] for e in bulk)
        assert all(
            set(x) >= {"index", "leaf_hash", "inclusion_proof", "checkpoint", "tlog_proof"}
            for x in got
        )
    a = harness.auditor()
    (rc,) = a.receipts(eid=bulk[0]["eid"])
    assert rc.index is not None and not rc.erased and rc.checkpoint is not None
    assert a.receipts(req="req-nothing") == []
    r = harness.client.get(
        "/v1/scim/receipts?eid=0190a3d2-8c4e-7abc-8def-0123456789ab", headers=harness.h("sub1")
    )
    assert r.status_code == 404
    for q in ("", "eid=X", "eid=a&req=b", "eid=0190A3D2-8C4E-7ABC-8DEF-0123456789AB"):
        r = harness.client.get(f"/v1/scim/receipts?{q}", headers=harness.h("sub1"))
        assert r.status_code == 400, q


# -- access events -----------------------------------------------------------------------------


def test_every_body_read_is_logged(harness: Harness) -> None:
    populate(harness)
    size0 = harness.log.latest.size
    a = harness.auditor()
    page = a.search(rid=ALICE)
    assert harness.log.latest.size == size0 + 1
    assert page.access["index"] == size0
    access = a.search(action="tlog.access.search").results
    assert len(access) == 1  # the search that found it happened after this read
    ev = access[0].event
    assert ev["rt"] == "tlog.access" and ev["tenant"] == "tenant-acme"
    assert ev["actor"]["id"] == harness.ids["aud1"]
    assert ev["x"] == {"what": "search", "results": 3, "bodies": 3, "erased": 0}
    assert ev["eid"] == page.access["eid"]
    text = json.dumps(json.loads(event_to_json(ev)))
    assert ALICE not in text  # the query is only a keyed digest
    # Submitters polling receipts are not body reads; auditors reading receipts are logged.
    size1 = harness.log.latest.size
    harness.client.get("/v1/scim/receipts?req=req-a1", headers=harness.h("sub1"))
    assert harness.log.latest.size == size1
    harness.client.get("/v1/scim/receipts?req=req-a1", headers=harness.h("aud1"))
    assert harness.log.latest.size == size1 + 1
    (rec,) = a.search(action="tlog.access.receipts").results
    assert rec.event["x"] == {"what": "receipts", "receipts": 1}
    # A read that cannot be logged returns no bodies.

    async def down(entries: list[bytes]) -> Any:
        from tlog.sequencer import SequencerStopped

        raise SequencerStopped("log down")

    def down_now(*args: Any, **kwargs: Any) -> None:  # Sequencer.enqueue (LMDB's path)
        from tlog.sequencer import SequencerStopped

        raise SequencerStopped("log down")

    seq = harness.service.seq
    orig, orig_enqueue = seq.submit, seq.enqueue
    seq.submit = down  # type: ignore[method-assign]
    seq.enqueue = down_now  # type: ignore[method-assign]
    try:
        r = harness.client.get(f"/v1/scim/events?rid={ALICE}", headers=harness.h("aud1"))
        assert r.status_code == 503 and ALICE not in r.text
    finally:
        seq.submit = orig  # type: ignore[method-assign]
        seq.enqueue = orig_enqueue  # type: ignore[method-assign]


def test_tenant_ref_matches_the_leaves(harness: Harness) -> None:
    d = harness.post_event(user_event()).json()
    r = harness.client.get("/v1/scim/tenant-ref", headers=harness.h("aud1")).json()
    assert r["tenant"] == "tenant-acme"
    from client.scim import parse_leaf

    assert parse_leaf(base64.b64decode(d["leaf"])).tn == base64.b64decode(r["tn"])
    r2 = harness.client.get("/v1/scim/tenant-ref", headers=harness.h("aud2")).json()
    assert r2["tn"] != r["tn"]


def _batch(h: Harness, evs: list[Any]) -> None:
    body = '{"events":[' + ",".join(event_to_json(e) for e in evs) + "]}"
    r = h.post_raw(body.encode(), "application/json", path="/v1/scim/events/batch")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("max_scan", [10_000, 1, 4])
def test_events_of_one_millisecond_come_in_the_order_they_were_logged(
    harness: Harness, max_scan: int
) -> None:
    """A batch is staged at one log time: its events' index records differ only by leaf
    hash, which says nothing of their order. An auditor reading a history (create, then
    deactivate, then delete) must see it in that order, on one page or across pages, with
    a page limit or a scan bound ending pages inside or at the edge of the millisecond."""
    h = harness
    assert h.post_event(user_event(ALICE, req="req-first")).status_code == 200
    reqs = [f"req-{i}" for i in range(8)]
    _batch(h, [user_event(ALICE, req=r) for r in reqs])
    _batch(h, [user_event(ALICE, req="req-next-0"), user_event(BOB, req="req-bob")])
    want = ["req-first", *reqs, "req-next-0"]
    h.service.limits = dataclasses.replace(h.service.limits, max_scan=max_scan)
    a = h.auditor()
    for limit in (1, 3, 100):
        found = list(a.search_all(rid=ALICE, limit=limit))
        assert [r.event["corr"]["req"] for r in found] == want, limit
    # Unfiltered (the tenant's listing of every event) up to the last batch (each page read
    # appends an access event, which a page ending at every millisecond would never pass).
    until = found[-1].leaf.ts + 1
    indices = [r.index for r in a.search_all(limit=2, until=until)]
    assert indices == sorted(indices) and len(indices) == len(want) + 1  # and Bob's
