"""POST /v1/scim/events and /batch: JSON and CBOR, receipts, dedup by eid, crash safety, limits,
and strict rejection of malformed input (always a 4xx with a reason, never a 500)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_inclusion
from client.scim import commitment, dumps_det, encode_event, event_to_json, parse_leaf
from tests.scim.helpers import Pairs, Raw, ref_encode
from tlog.app import LogApp
from tlog.scim import store
from tlog.scim.search import Filters
from tlog.scim.service import ScimService
from tlog.sequencer import SequencerStopped
from tlog.server import build_app
from tlog.storage import StorageError

from ..support import app_parts, serve_config
from .conftest import BASE_TS, T1, Harness, make_signer, user_event
from .helpers import check_receipt, stored_event


@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
def test_ingest_answers_a_verifiable_receipt(harness: Harness, cbor: bool) -> None:
    ev = user_event()
    r = harness.post_event(ev, cbor=cbor)
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) == {
        "eid",
        "index",
        "leaf_hash",
        "leaf",
        "duplicate",
        "ts",
        "tree_size",
        "checkpoint",
        "inclusion_proof",
        "tlog_proof",
        "nonce",
        "actor",  # the actor as stored: a pseudonym (docs/design.md, "Actors")
    }
    assert d["eid"] == ev["eid"] and d["duplicate"] is False
    check_receipt(harness, d, index=0)
    assert d["ts"] == BASE_TS  # assigned by the log, not the submitter's ts


def test_json_and_cbor_forms_of_one_event_are_the_same_event(harness: Harness) -> None:
    ev = user_event()
    a = harness.post_event(ev).json()
    b = harness.post_event(ev, cbor=True).json()
    assert b["duplicate"] is True
    assert (a["index"], a["leaf_hash"]) == (b["index"], b["leaf_hash"])
    assert harness.log.latest.size == 1


def test_retry_of_an_eid_returns_the_original_receipt(harness: Harness) -> None:
    ev = user_event()
    first = harness.post_event(ev).json()
    harness.post_event(user_event(rid="u-other-1"))
    again = harness.post_event(ev).json()
    assert again["duplicate"] is True
    assert (again["index"], again["leaf_hash"], again["ts"], again["leaf"]) == (
        first["index"],
        first["leaf_hash"],
        first["ts"],
        first["leaf"],
    )
    assert again["tree_size"] == 2
    check_receipt(harness, again, index=0)


def test_eid_reused_for_a_different_event_is_a_conflict(harness: Harness) -> None:
    ev = user_event()
    assert harness.post_event(ev).status_code == 200
    other = copy.deepcopy(ev)
    other["corr"]["req"] = "req-something-else"
    r = harness.post_event(other)
    assert r.status_code == 409
    assert "different event" in r.json()["error"]
    assert harness.log.latest.size == 1


def test_eid_is_scoped_to_the_tenant(harness: Harness) -> None:
    ev = user_event()
    ev2 = user_event(tenant="tenant-globex")
    ev2["eid"] = ev["eid"]
    a = harness.post_event(ev).json()
    b = harness.post_event(ev2, "sub2").json()
    assert b["duplicate"] is False and a["index"] != b["index"]


def test_commitment_and_envelope_bind_the_private_event(harness: Harness) -> None:
    ev, other = user_event(), user_event(rid="u-other-1")
    d = harness.post_event(ev).json()
    harness.post_event(other)
    leaf = parse_leaf(base64.b64decode(d["leaf"]))
    svc = harness.service
    search = svc.searcher.search
    found, _ = search(T1, Filters(rid=ev["rid"]), 10, None, harness.log.latest)
    assert len(found) == 1 and found[0].nonce is not None
    assert found[0].event == stored_event(ev, d) and found[0].actor is not None
    assert found[0].actor.actor == ev["actor"]  # the actor as sent, sealed under its keys
    assert commitment(found[0].nonce, stored_event(ev, d)) == leaf.c
    # AAD = leaf hash: an envelope moved under another leaf does not decrypt.
    lh_a = base64.b64decode(d["leaf_hash"])
    lh_b = search(T1, Filters(rid="u-other-1"), 10, None, harness.log.latest)[0][0].leaf_hash
    with svc.storage.read() as rv:
        env_a = rv.aux(store.envelope_key(lh_a))
    assert env_a is not None
    svc.storage.put_aux([(store.envelope_key(lh_b), env_a)])
    with pytest.raises(StorageError, match="does not decrypt"):
        search(T1, Filters(rid="u-other-1"), 10, None, harness.log.latest)


# -- crash safety ------------------------------------------------------------------------------


def test_crash_between_aux_write_and_sequencing_never_makes_two_leaves(
    tmp_path: Path,
    database: str | None,
) -> None:
    ev = user_event()
    body = event_to_json(ev).encode()

    def start() -> tuple[TestClient, Any, str]:
        app, log_, tokens = build_app(
            serve_config(tmp_path, database, batch_age_ms=0.0), make_signer()
        )
        token, _ = tokens.create("submitter", tenant=T1)
        return TestClient(app), log_, token

    client, log_, token = start()
    hdr = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    service: ScimService = app_parts(client.app).scim  # type: ignore[assignment]

    async def crash(entries: list[bytes]) -> Any:
        raise SequencerStopped("simulated crash after the aux commit")

    with client:
        # The path of a store that would commit the records before the leaves (a crash
        # between the two commits); LMDB and PostgreSQL make both one transaction
        # (test_records_and_leaf_commit_together_or_not_at_all), but the dedup by leaf
        # hash that makes such a retry safe must hold whatever the write path.
        service._coalesce = False
        service.seq.submit = crash  # type: ignore[method-assign]
        r = client.post("/v1/scim/events", content=body, headers=hdr)
        assert r.status_code == 503
        assert log_.latest.size == 0
        with log_.storage.read() as rv:
            pending_leaf = rv.aux(store.eid_key(service.tenant_ref(T1), ev["eid"]))
        assert pending_leaf is not None
        # Until sequenced the event is invisible to search and its receipt is "pending".
        r = client.get(f"/v1/scim/receipts?eid={ev['eid']}", headers=hdr)
        assert r.status_code == 200 and r.json()["receipts"][0]["pending"] is True
    log_.storage.close()

    # "Restart": a new process on the same data directory; the adapter retries.
    client, log_, token = start()
    hdr["Authorization"] = f"Bearer {token}"
    with client:
        r = client.post("/v1/scim/events", content=body, headers=hdr)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["index"] == 0 and d["duplicate"] is True
        assert base64.b64decode(d["leaf"]) == pending_leaf  # the very same leaf bytes
        r = client.post("/v1/scim/events", content=body, headers=hdr)
        assert r.json()["index"] == 0
        assert log_.latest.size == 1
    log_.storage.close()


def test_records_and_leaf_commit_together_or_not_at_all(harness: Harness) -> None:
    """An event's records and its leaf are one transaction (LMDB and PostgreSQL): a commit
    that fails leaves neither (no pending eid record), and the retry is a new event, not a
    duplicate."""
    h = harness
    assert h.log.storage.aux_in_batch
    ev = user_event()
    storage = h.log.storage
    real = storage.commit_batch
    calls = []

    def fail_once(batch: Any) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise StorageError("simulated failure of the commit")
        real(batch)

    storage.commit_batch = fail_once  # type: ignore[method-assign]
    try:
        r = h.post_event(ev)
        assert r.status_code == 503, r.text
        assert h.log.latest.size == 0
        assert calls[0].aux, "the event's records travelled with its leaf"
        with storage.read() as rv:
            assert rv.aux(store.eid_key(h.service.tenant_ref(T1), ev["eid"])) is None
            assert rv.tree_size() == 0
        r = h.post_event(ev)
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is False
        check_receipt(h, r.json(), index=0)
    finally:
        storage.commit_batch = real  # type: ignore[method-assign]


def test_a_group_staged_on_a_failed_commit_is_refused(harness: Harness) -> None:
    """A group staged on top of an earlier group's records (the same subject's keys) while
    that group was waiting for its commit: when that commit fails, the later group is not
    committed either (its records would name keys that were never stored)."""
    import asyncio
    import threading
    import time

    h = harness
    svc = h.service
    assert h.log.storage.aux_in_batch and svc._coalesce
    storage = h.log.storage
    real = storage.commit_batch
    first = threading.Event()

    def fail_first(batch: Any) -> None:
        if first.is_set():
            real(batch)
            return
        first.set()
        deadline = time.monotonic() + 30
        while svc._handed_seq < 2 and time.monotonic() < deadline:
            time.sleep(0.005)  # the second group is staged on top of this one meanwhile
        raise StorageError("simulated failure of the first commit")

    a = user_event(req="req-a")
    b = user_event(req="req-b")  # same subject: staged with the keys a created

    async def run() -> list[BaseException | object]:
        ta = asyncio.ensure_future(svc.submit(T1, [a], encoded=[dumps_det(a)]))
        while not first.is_set():
            await asyncio.sleep(0.005)
        tb = asyncio.ensure_future(svc.submit(T1, [b], encoded=[dumps_det(b)]))
        return list(await asyncio.wait_for(asyncio.gather(ta, tb, return_exceptions=True), 60))

    storage.commit_batch = fail_first  # type: ignore[method-assign]
    try:
        ra, rb = asyncio.run(run())
    finally:
        storage.commit_batch = real  # type: ignore[method-assign]
    assert isinstance(ra, SequencerStopped), ra
    assert isinstance(rb, SequencerStopped) and "failed" in str(rb), rb
    tn = svc.tenant_ref(T1)
    with storage.read() as rv:
        assert rv.tree_size() == 0
        assert rv.aux(store.eid_key(tn, a["eid"])) is None
        assert rv.aux(store.eid_key(tn, b["eid"])) is None
        assert rv.aux(store.tenant_key(tn)) is None  # no tenant keys, no subject
        assert list(rv.aux_range(store.subject_key(tn, b""))) == []
    # Nothing stale is left in memory: the same subject's next event gets fresh keys.
    r = h.post_event(b)
    assert r.status_code == 200, r.text
    check_receipt(h, r.json(), index=0)
    (found,) = h.auditor().search(rid=b["rid"]).results  # readable: its keys were stored
    assert found.event is not None and found.event["eid"] == b["eid"]


# -- batches -----------------------------------------------------------------------------------


def test_batch_json_and_cbor(harness: Harness) -> None:
    evs = [user_event(rid=f"u-batch-{i}", req=f"req-b{i}") for i in range(5)]
    r = harness.post_raw(
        json.dumps({"events": [json.loads(event_to_json(e)) for e in evs]}).encode(),
        "application/json",
        path="/v1/scim/events/batch",
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) == {"tree_size", "checkpoint", "results"}
    assert [x["index"] for x in d["results"]] == [0, 1, 2, 3, 4]
    assert [x["eid"] for x in d["results"]] == [e["eid"] for e in evs]
    assert not any(x["duplicate"] for x in d["results"])
    # CBOR: a det-CBOR array of events, with a retry of evs[0] and a repeat inside the batch.
    more = [user_event(rid="u-batch-9", req="req-b9")]
    r = harness.post_raw(
        dumps_det([evs[0], *more, more[0]]), "application/cbor", path="/v1/scim/events/batch"
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 5, 5]
    assert [x["duplicate"] for x in res] == [True, False, True]
    assert harness.log.latest.size == 6
    # The answer (encoded by msgspec) is byte for byte what the json module wrote before
    # (Starlette's JSONResponse: compact, UTF-8, keys in this order).
    assert list(r.json()) == ["tree_size", "checkpoint", "results"]
    keys = ["eid", "index", "leaf_hash", "duplicate", "leaf", "nonce", "actor"]
    assert [list(x) for x in res] == [keys] * 3
    assert r.content == json.dumps(
        r.json(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")
    assert r.headers["content-type"] == "application/json"
    lh = base64.b64decode(res[1]["leaf_hash"])
    cp, _ = open_checkpoint(r.json()["checkpoint"], [harness.signer.verifier])
    proof = harness.client.get(f"/v1/proof/inclusion?index=5&tree_size={cp.size}").json()
    verify_inclusion(
        5, cp.size, lh, [base64.b64decode(x) for x in proof["inclusion_proof"]], cp.root_hash
    )


def test_batch_is_all_or_nothing(harness: Harness) -> None:
    evs = [json.loads(event_to_json(user_event(rid=f"u-{i}"))) for i in range(4)]
    evs[2]["unknown_field"] = 1
    r = harness.post_raw(
        json.dumps({"events": evs}).encode(), "application/json", path="/v1/scim/events/batch"
    )
    assert r.status_code == 400
    assert r.json()["error"].startswith("event 2:")
    assert harness.log.latest.size == 0
    # One event of another tenant: 403, nothing logged.
    evs[2] = json.loads(event_to_json(user_event(tenant="tenant-globex")))
    r = harness.post_raw(
        json.dumps({"events": evs}).encode(), "application/json", path="/v1/scim/events/batch"
    )
    assert r.status_code == 403
    # The same eid twice with different content.
    a = user_event()
    b = copy.deepcopy(a)
    b["corr"]["req"] = "req-zzz"
    r = harness.post_raw(dumps_det([a, b]), "application/cbor", path="/v1/scim/events/batch")
    assert r.status_code == 409
    assert harness.log.latest.size == 0
    with harness.service.storage.read() as rv:
        assert list(rv.aux_range(store.PREFIX + b"E")) == []


@pytest.mark.parametrize(
    ("body", "ctype", "status", "needle"),
    [
        (b"", "application/json", 400, "JSON"),
        (b"[]", "application/json", 400, "events"),
        (b'{"events": []}', "application/json", 400, "empty"),
        (b'{"events": [], "events": []}', "application/json", 400, "duplicate"),
        (b'{"events": [1.5]}', "application/json", 400, "integer"),
        (b'{"events": [1], "x": 1}', "application/json", 400, "events"),
        (b'{"events": [1]}', "application/json", 400, "event 0"),
        (b"\xa0", "application/cbor", 400, "array"),
        (b"\x80", "application/cbor", 400, "empty"),
        (b"\x9f\xff", "application/cbor", 400, "indefinite"),
        (b"[]", "text/plain", 415, "Content-Type"),
    ],
)
def test_batch_rejects_malformed_bodies(
    harness: Harness, body: bytes, ctype: str, status: int, needle: str
) -> None:
    r = harness.post_raw(body, ctype, path="/v1/scim/events/batch")
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_batch_limits(harness: Harness) -> None:
    one = json.loads(event_to_json(user_event()))
    r = harness.post_raw(
        json.dumps({"events": [one] * 1001}).encode(),
        "application/json",
        path="/v1/scim/events/batch",
    )
    assert r.status_code == 413 and "1000" in r.json()["error"]
    r = harness.post_raw(b" " * ((8 << 20) + 1), "application/json", path="/v1/scim/events/batch")
    assert r.status_code == 413
    # Exactly 1000 is fine, and is one sequencer submission.
    batches = harness.service.seq.batches
    evs = [user_event(rid=f"u-{i}") for i in range(1000)]
    r = harness.post_raw(dumps_det(evs), "application/cbor", path="/v1/scim/events/batch")
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == list(range(1000))
    assert harness.service.seq.batches == batches + 1


# -- malformed single events -------------------------------------------------------------------


def _json_variants() -> list[tuple[str, bytes, str]]:
    text = event_to_json(user_event())
    obj = json.loads(text)
    out = [
        ("not-json", b"{not json", "JSON"),
        ("not-utf8", b'{"v": "\xff"}', "UTF-8"),
        ("array", b"[1, 2]", "object"),
        ("float", text.replace('"len":42', '"len":42.5').encode(), "integer"),
        ("exponent", text.replace('"len":42', '"len":4e1').encode(), "integer"),
        ("nan", text.replace('"len":42', '"len":NaN').encode(), "NaN"),
        ("duplicate-key", ('{"v":1,' + text[1:]).encode(), "duplicate"),
        ("unknown-field", json.dumps({**obj, "ssn": "123"}).encode(), "unknown field"),
        (
            "missing-field",
            json.dumps({k: v for k, v in obj.items() if k != "actor"}).encode(),
            "actor",
        ),
        ("bad-base64", json.dumps({**obj, "req": {**obj["req"], "dig": "!!"}}).encode(), "req.dig"),
        (
            "url-safe-base64",
            json.dumps(
                {
                    **obj,
                    "req": {**obj["req"], "dig": base64.urlsafe_b64encode(b"\xfb" * 32).decode()},
                }
            ).encode(),
            "req.dig",
        ),
        ("uppercase-eid", json.dumps({**obj, "eid": obj["eid"].upper()}).encode(), "eid"),
        ("wrong-type", json.dumps({**obj, "ts": "yesterday"}).encode(), "ts"),
        ("reserved-rt", json.dumps({**obj, "rt": "tlog.access"}).encode(), "reserved"),
        (
            "oversized-event",
            json.dumps({**obj, "x": {f"k{i}": "A" * 16000 for i in range(5)}}).encode(),
            "limit",
        ),
    ]
    return out


@pytest.mark.parametrize(
    ("body", "needle"), [v[1:] for v in _json_variants()], ids=[v[0] for v in _json_variants()]
)
def test_malformed_json_event_is_400(harness: Harness, body: bytes, needle: str) -> None:
    r = harness.post_raw(body, "application/json")
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.json()
    assert harness.log.latest.size == 0


def _cbor_variants() -> list[tuple[str, bytes, str]]:
    ev = user_event()
    good = encode_event(ev)
    assert ref_encode(ev) == good
    items = sorted(ev.items())
    return [
        ("truncated", good[:-3], "truncated"),
        ("trailing-bytes", good + b"\x00", "trailing"),
        ("not-a-map", ref_encode([1, 2]), "map"),
        ("unsorted-keys", ref_encode(Pairs(tuple(reversed(items)))), "deterministic"),
        ("duplicate-key", ref_encode(Pairs((*items, ("v", 1)))), "uplicate"),
        ("float", ref_encode({**ev, "dur": 1.5}), "float"),
        ("tag", ref_encode({**ev, "ts": Raw(b"\xc1\x1a\x00\x00\x00\x01")}), "tag"),
        ("non-shortest-int", ref_encode({**ev, "dur": Raw(b"\x19\x00\x01")}), "shortest"),
        ("indefinite-map", b"\xbf" + good[1:] + b"\xff", "indefinite"),
        ("undefined", ref_encode({**ev, "dur": Raw(b"\xf7")}), "simple"),
        ("unknown-field", ref_encode({**ev, "zzz": 1}), "unknown field"),
        ("bytes-as-text", ref_encode({**ev, "req": {**ev["req"], "dig": "00" * 32}}), "req.dig"),
        (
            "oversized-event",
            ref_encode({**ev, "x": {f"k{i}": "A" * 16000 for i in range(5)}}),
            "limit",
        ),
    ]


@pytest.mark.parametrize(
    ("body", "needle"), [v[1:] for v in _cbor_variants()], ids=[v[0] for v in _cbor_variants()]
)
def test_malformed_cbor_event_is_400(harness: Harness, body: bytes, needle: str) -> None:
    r = harness.post_raw(body, "application/cbor")
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.json()
    assert harness.log.latest.size == 0


def test_body_limits_and_media_types(harness: Harness) -> None:
    r = harness.post_raw(b"{" + b" " * (256 * 1024) + b"}", "application/json")
    assert r.status_code == 413 and "262144" in r.json()["error"]
    r = harness.post_raw(event_to_json(user_event()).encode(), "text/plain")
    assert r.status_code == 415
    r = harness.client.post("/v1/scim/events", content=b"{}", headers=harness.h("sub1"))
    assert r.status_code == 415
    r = harness.post_raw(b"", "application/json")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = harness.post_raw(event_to_json(user_event()).encode(), "application/json; charset=utf-8")
    assert r.status_code == 200
    r = harness.client.put("/v1/scim/events", content=b"{}", headers=harness.h("sub1"))
    assert r.status_code == 405


def test_envelope_plaintext_is_the_deterministic_encoding() -> None:
    import os

    from client.scim.cbor import dumps_det
    from tlog.scim.keys import envelope_plaintext

    for ev in ({"a": 1}, {"eid": "x" * 300, "n": [1, 2, {"z": b"\x00"}]}, {}):
        nonce = os.urandom(32)
        assert envelope_plaintext(nonce, dumps_det(ev)) == dumps_det({"n": nonce, "b": ev})


def test_a_single_event_post_is_a_hot_row_of_the_one_routing_table(harness: Harness) -> None:
    """POST /v1/scim/events is answered before Starlette's router, like POST /v1/entries,
    with the same answers and error mapping; its GET (search) stays a Starlette route and a
    wrong method names both in Allow."""
    app = harness.client.app
    assert isinstance(app, LogApp)
    assert app.fast.match({"method": "POST", "path": "/v1/scim/events"}) is not None
    assert app.fast.match({"method": "GET", "path": "/v1/scim/events"}) is None
    assert app.fast.match({"method": "POST", "path": "/v1/scim/events/batch"}) is None
    r = harness.post_event(user_event())
    assert r.status_code == 200, r.text
    check_receipt(harness, r.json(), index=0)
    ev = user_event(req="req-2")
    body = event_to_json(ev).encode()
    assert harness.post_raw(body, "text/plain").status_code == 415
    r = harness.client.post(
        "/v1/scim/events", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert harness.post_raw(b"{", "application/json").status_code == 400
    r = harness.client.delete("/v1/scim/events", headers=harness.h("sub1"))
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "POST"}
