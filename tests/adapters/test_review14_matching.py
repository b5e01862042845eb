"""review14: recovery's matching of an intent with its recorded answer goes by the intent's
name kept on the outbox row (``intent``), not by request id and time: a wall clock stepped
back or a request id reused by a client cannot make a recorded write "unknown" or hide an
unrecorded one. Outboxes made before keep working (their rows match by id and time)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from client.adapters import outbox as outbox_mod
from client.adapters.exchange import Exchange
from client.adapters.middleware import AuditMiddleware, intent_doc, unknown_outcome_records
from client.adapters.outbox import OrphanedIntents, Outbox

from .journals import CFG, call
from .journals import die as _die


async def _never(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise AssertionError


async def _sp(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _delete(mw: AuditMiddleware, rid: str, req: str) -> int:
    return await call(mw, "DELETE", f"/Users/{rid}", [(b"x-request-id", req.encode())])


def _killed_after_commit(path: Path, monkeypatch: pytest.MonkeyPatch, req: str) -> None:
    """A write answered and recorded; the adapter is killed before the journal's "done"."""
    ob = Outbox(path)
    mw = AuditMiddleware(_sp, CFG, ob)
    mw.start()
    monkeypatch.setattr(mw, "_done", lambda iid, **kw: None)
    assert asyncio.run(_delete(mw, "u1", req)) == 204
    assert ob.counts()["pending"] == 1
    assert mw._journal is not None
    _die(mw._journal)
    mw.close()  # a killed adapter's intent-recovery thread is gone too (own=False: only that)
    ob._journal = None
    ob.close()


def test_a_clock_stepped_back_never_makes_a_recorded_write_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the row's created_ms (an hour before the intent's time, the wall clock
    # having been stepped back between) did not match: a false "unknown" event.
    real = outbox_mod._now_ms
    monkeypatch.setattr(outbox_mod, "_now_ms", lambda: real() - 3_600_000)
    path = tmp_path / "o.sqlite"
    _killed_after_commit(path, monkeypatch, "rq-1")
    monkeypatch.setattr(outbox_mod, "_now_ms", real)
    ob = Outbox(path)
    try:
        assert AuditMiddleware(_never, CFG, ob).recover_intents() == 0
        assert ob.counts()["pending"] == 1
    finally:
        ob.close()


def test_a_reused_request_id_never_hides_an_unrecorded_write(tmp_path: Path) -> None:
    # Before: another write of the same request id (a client reusing X-Request-Id; here a
    # peer adapter's) recorded after this intent began made it look answered: lost.
    path = tmp_path / "o.sqlite"
    dead = Outbox(path)
    j = dead.intents()
    x = Exchange({"type": "http", "headers": []}, "DELETE", "/Users/u1", "same", None, b"", 0)
    x.t0_ns = (outbox_mod._now_ms() - 1000) * 1_000_000
    doc = intent_doc(CFG, x)
    assert doc is not None
    j.begin(doc)
    _die(j)
    dead._journal = None
    peer = Outbox(path)
    other = dict(doc, i=1, p="/Users/u2")
    peer.put(unknown_outcome_records(CFG, other, "peer:1"), intent="peer:1")
    dead.close()
    ob = Outbox(path)
    try:
        assert AuditMiddleware(_never, CFG, ob).recover_intents() == 1
        assert ob.counts()["pending"] == 2
    finally:
        ob.close()
        peer.close()


def test_a_kill_during_recovery_recovers_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "o.sqlite"
    dead = Outbox(path)
    j = dead.intents()
    for i in range(3):
        x = Exchange(
            {"type": "http", "headers": []}, "DELETE", f"/Users/u{i}", f"r{i}", None, b"", 0
        )
        doc = intent_doc(CFG, x)
        assert doc is not None
        j.begin(doc)
    _die(j)
    dead._journal = None
    dead.close()
    # killed after the recovered events were committed, before the journal was settled
    monkeypatch.setattr(OrphanedIntents, "settle", OrphanedIntents.release)
    ob = Outbox(path)
    try:
        assert AuditMiddleware(_never, CFG, ob).recover_intents() == 3
    finally:
        if ob._journal is not None:  # killed: its own journal stays, empty
            _die(ob._journal)
            ob._journal = None
        ob.close()
    monkeypatch.undo()
    ob = Outbox(path)
    try:
        assert AuditMiddleware(_never, CFG, ob).recover_intents() == 0
        rows = ob._read("SELECT req, intent FROM events ORDER BY req")
        assert [r[0] for r in rows] == ["r0", "r1", "r2"]
        assert all(r[1] for r in rows)
        assert sorted(ob.intents_dir.glob("*.jsonl")) == sorted(ob.intents().paths)
    finally:
        ob.close()


def test_an_outbox_made_before_the_intent_column_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE events DROP COLUMN intent")  # as a version before made it
    conn.execute(
        "INSERT INTO events (eid, req, body, created_ms) VALUES (?, 'old', '{}', 5000)",
        (str(uuid.uuid4()),),
    )
    conn.commit()
    conn.close()
    ob = Outbox(path)
    try:
        assert ob.answered("old", 4000, "j:1")  # an old row: by id and time
        assert not ob.answered("old", 6000, "j:1")
        assert not ob.answered("other", 0, "j:1")
        ob.put(unknown_outcome_records(CFG, _a_doc("new"), "j:2"), intent="j:2")
        assert ob.answered("new", 1 << 50, "j:2")  # by its intent, whatever the time
        assert not ob.answered("new", 0, "j:3")  # another intent's row never matches
    finally:
        ob.close()


def _a_doc(req: str) -> dict[str, Any]:
    x = Exchange({"type": "http", "headers": []}, "DELETE", "/Users/u1", req, None, b"", 0)
    doc = intent_doc(CFG, x)
    assert doc is not None
    doc["i"] = 2
    return doc
