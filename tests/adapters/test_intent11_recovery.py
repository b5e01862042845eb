"""Write-ahead intents in process: what an intent holds, the events recovered from it (single
writes and bulk operations), the lock that keeps a live adapter's intents from another
start-up, compaction, and that a recovered unknown outcome makes the log forget the
resource's state."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from client.adapters import outbox as outbox_mod
from client.adapters.exchange import AuditConfig, Exchange
from client.adapters.middleware import (
    AuditMiddleware,
    derived_eid,
    intent_doc,
    unknown_outcome_records,
)
from client.adapters.outbox import Outbox
from client.scim.event import event_from_json
from tlog.scim.effects import classify

from .journals import CFG, call
from .journals import die as _die

TOKEN = "secret-token"


def _exchange(method: str, rel: str, body: bytes = b"", req: str = "r1", **hdr: str) -> Exchange:
    headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in hdr.items()]
    scope = {"type": "http", "headers": headers, "client": ("10.0.0.7", 5555)}
    return Exchange(scope, method, rel, req, None, body, 1_700_000_000_000 * 1_000_000)


def _events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    doc = json.loads(json.dumps(doc))  # as read back from the journal
    return [dict(event_from_json(r.body)) for r in unknown_outcome_records(CFG, doc, "j:1")]


def test_the_intent_holds_no_body_and_no_credential() -> None:
    body = b'{"userName":"alice@example.com","password":"hunter2"}'
    doc = intent_doc(CFG, _exchange("PUT", "/Users/u1", body, if_match='W/"3"'))
    assert doc is not None
    text = json.dumps(doc)
    for secret in ("alice", "hunter2", TOKEN):
        assert secret not in text
    assert doc["dig"] and doc["len"] == len(body) and doc["tenant"] == "acme"


def test_requests_that_yield_no_event_write_no_intent() -> None:
    assert intent_doc(CFG, _exchange("POST", "/Users/.search")) is None
    assert intent_doc(CFG, _exchange("PATCH", "/Users")) is None  # no resource id
    assert intent_doc(CFG, _exchange("POST", "/Schemas")) is None  # discovery
    assert intent_doc(CFG, _exchange("POST", "/Bulk", b"not json")) is None


def test_a_recovered_write_is_a_warning_with_the_request_facts() -> None:
    body = b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[]}'
    doc = intent_doc(CFG, _exchange("PATCH", "/Users/u1", body, "rq", if_match='W/"3"'))
    assert doc is not None
    (ev,) = _events(doc)
    assert ev["outcome"] == "warning" and ev["err"]["code"] == "unknown"
    assert ev["op"] == "patch" and ev["rt"] == "User" and ev["rid"] == "u1"
    assert ev["corr"]["req"] == "rq" and ev["eid"] == derived_eid("j:1")
    assert ev["req"]["dig"] == hashlib.sha256(body).digest()
    assert ev["req"]["if_match"] == 'W/"3"' and ev["ver"]["pre"] == 'W/"3"'
    assert ev["actor"] == {"kind": "bearer", "tok_d": hashlib.sha256(TOKEN.encode()).digest()}
    assert ev["src"]["ip"] == "10.0.0.7"
    assert ev["ts"] == 1_700_000_000_000
    assert _events(doc) == [ev]  # the same event every time: deduplicated by eid


def test_a_recovered_create_names_no_resource() -> None:
    doc = intent_doc(CFG, _exchange("POST", "/Groups", b'{"displayName":"g"}'))
    assert doc is not None
    (ev,) = _events(doc)
    assert ev["op"] == "create" and ev["rt"] == "Group" and "rid" not in ev


def test_a_recovered_bulk_is_one_event_per_write_operation() -> None:
    bulk = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "b1", "data": {"userName": "x"}},
            {"method": "DELETE", "path": "/Users/u7", "version": 'W/"1"'},
            {"method": "GET", "path": "/Users/u8"},
            {"method": "PATCH", "path": "/Groups/g1", "data": {"Operations": []}},
        ],
    }
    doc = intent_doc(CFG, _exchange("POST", "/Bulk", json.dumps(bulk).encode(), "rb"))
    assert doc is not None
    evs = _events(doc)
    assert [(e["op"], e["rt"], e.get("rid"), e["corr"]["seq"]) for e in evs] == [
        ("create", "User", None, 0),
        ("delete", "User", "u7", 1),
        ("patch", "Group", "g1", 3),
    ]
    assert all(e["outcome"] == "warning" and e["corr"]["bulk_req"] == "rb" for e in evs)
    assert evs[0]["corr"]["bulk_id"] == "b1" and evs[1]["req"]["if_match"] == 'W/"1"'
    assert len({e["eid"] for e in evs}) == 3


def test_an_unknown_outcome_makes_the_log_forget_the_state() -> None:
    doc = intent_doc(CFG, _exchange("PATCH", "/Users/u1", b"{}"))
    assert doc is not None
    (ev,) = _events(doc)
    prev = {"rt": "User", "basis": "known", "attrs": {"active": True}}
    effect, state, changed = classify(prev, ev)
    assert effect == {"basis": "unknown", "acts": []} and state is None and changed


def test_a_live_adapters_intents_are_never_recovered(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    live = Outbox(path)
    other = Outbox(path)
    try:
        journal = live.intents()
        iid = journal.begin({"req": "r", "t": 1})
        assert other.orphaned_intents() == []
        # the live adapter dies (its lock goes with its descriptors)
        _die(journal)
        (orphan,) = other.orphaned_intents()
        assert [d["i"] for d in orphan.intents] == [iid]
        orphan.settle()
        assert other.orphaned_intents() == []
        assert list((tmp_path / "o.sqlite.intents").iterdir()) == []
    finally:
        live._journal = None
        live.close()
        other.close()


def test_a_clean_shutdown_leaves_no_journal(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    j = ob.intents()
    j.done(j.begin({"req": "r", "t": 1}))
    ob.close()
    assert list((tmp_path / "o.sqlite.intents").iterdir()) == []


def test_compaction_keeps_what_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_mod, "_INTENTS_SIZE", 4096)
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    j = ob.intents()
    keep = [j.begin({"req": f"keep{i}", "t": 1}) for i in range(3)]
    for i in range(500):
        j.done(j.begin({"req": f"r{i}", "t": 1, "pad": "x" * 40}))
    assert all(p.stat().st_size <= 4096 for p in j.paths)
    assert [d["i"] for d in outbox_mod._read_journal(j.paths)] == keep
    big = j.begin({"req": "big", "t": 1, "pad": "z" * 5000})  # more than a file: it grows
    keep.append(big)
    j.done(j.begin({"req": "after", "t": 1}))
    assert [d["i"] for d in outbox_mod._read_journal(j.paths)] == keep
    _die(j)
    other = Outbox(path)
    try:
        (orphan,) = other.orphaned_intents()
        assert sorted(d["req"] for d in orphan.intents) == ["big", "keep0", "keep1", "keep2"]
        orphan.release()
    finally:
        ob._journal = None
        ob.close()
        other.close()


def test_recovery_at_start_queues_each_unanswered_intent_once(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    dead = Outbox(path)
    j = dead.intents()
    d1 = intent_doc(CFG, _exchange("DELETE", "/Users/u1", req="gone"))
    d2 = intent_doc(CFG, _exchange("DELETE", "/Users/u2", req="done"))
    assert d1 is not None and d2 is not None
    j.begin(d1)
    j.done(j.begin(d2))
    _die(j)
    dead._journal = None
    dead.close()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError

    for _ in range(2):
        ob = Outbox(path)
        try:
            mw = AuditMiddleware(app, CFG, ob)
            mw.start()
            rows = ob._read("SELECT req, body FROM events")
            assert [r[0] for r in rows] == ["gone"]
            assert json.loads(rows[0][1])["outcome"] == "warning"
            mw.close()  # its intent-recovery thread (threadwatch waited for it up to 5 s)
        finally:
            ob.close()


def test_another_tenants_intents_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    dead = Outbox(path)
    j = dead.intents()
    doc = intent_doc(AuditConfig(tenant="other", sp_id="sp1"), _exchange("DELETE", "/Users/u1"))
    assert doc is not None
    j.begin(doc)
    _die(j)
    dead._journal = None
    dead.close()
    ob = Outbox(path)
    try:

        async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
            raise AssertionError

        assert AuditMiddleware(app, CFG, ob).recover_intents() == 0
        assert ob.counts()["pending"] == 0
        # the dead one's two files, and its own two (each journal's second prepared ahead)
        assert len(list((tmp_path / "o.sqlite.intents").glob("*.jsonl"))) == 4
    finally:
        ob.close()


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path) -> None:
    a, b = tmp_path / "j.0.jsonl", tmp_path / "j.1.jsonl"
    a.write_bytes(b'{"i":1,"req":"a"}\n{"i":2,"req":"b"}\n{"d":1}\n' + bytes(64))
    # the switch copied 2 (in flight) into b; 3 began there, 2 was done, 4 was cut short
    b.write_bytes(b'{"i":2,"req":"b"}\n{"i":3,"req":"c"}\n{"d":2}\n{"i":4,"req' + bytes(64))
    got = outbox_mod._read_journal([a, b])
    assert [d["req"] for d in got] == ["c"]


def test_a_journal_that_cannot_be_written_refuses_before_forwarding(tmp_path: Path) -> None:
    """A full disk under the journal (no room for its preallocated file): fail-closed
    answers 503 without calling the SP (nothing applied unrecorded), then works again once
    there is room; the journal's blocks are allocated ahead, so a write into its map never
    meets a full disk (a SIGBUS, not an error)."""
    from tests.adapters.helpers import tmpfs

    gen = tmpfs(tmp_path, "small", lazy=True)
    disk = next(gen)
    try:
        ob = Outbox(disk / "o.sqlite")
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the disk, then give back less than a journal file's room
            while True:
                os.write(fd, bytes(4096))
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - (64 << 10))
        calls = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            calls.append(scope["path"])
            await receive()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        mw = AuditMiddleware(app, CFG, ob)
        mw.start()

        def delete(rid: str) -> int:
            return asyncio.run(call(mw, "DELETE", f"/Users/{rid}"))

        assert delete("u1") == 503
        assert calls == []
        filler.unlink()
        assert delete("u2") == 204
        assert calls == ["/Users/u2"]
        mw.close()  # its intent-recovery thread (threadwatch waited for it up to 5 s)
        ob.close()
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)
