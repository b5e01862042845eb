"""Several frontends, one sequence: two real ``tlog serve`` processes (separate data
directories holding copies of the keys, as on two machines) on one PostgreSQL database,
under concurrent load from both sides. The database serialises their batches; a frontend
that loses a round reloads and continues. Checked with client/ code only: every
acknowledged entry is in the log exactly once at its index, one root per size, every
checkpoint handed out by either frontend is a prefix of the final tree, and fsck is clean."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.note import Ed25519Verifier
from client.net.scim_audit import ScimAuditClient
from client.scim import event_to_json, new_event
from tests.pgsupport import open_store
from tests.support import (
    ServerProcess,
    assert_prefixes,
    checkpoints_by_size,
    http_get,
    start_server,
    tlog_cli,
    token_for,
)

from .conftest import ORIGIN
from .writers import Writers

pytestmark = pytest.mark.slow


def test_two_frontends_on_one_database_never_fork_nor_lose(tmp_path: Path, pg_url: str) -> None:
    da, db = tmp_path / "a", tmp_path / "b"
    a = start_server(da, database=pg_url, timeout=90)
    db.mkdir(mode=0o700)
    for key in ("log.key", "scim-master.key"):
        shutil.copy2(da / key, db / key)
    b = start_server(db, database=pg_url, timeout=90)
    token = (da / "demo-submitter.token").read_text().strip()  # tokens live in the database
    assert not (db / "demo-submitter.token").exists()  # B found the log: created nothing
    verifier = Ed25519Verifier.from_vkey(httpx.get(a.url + "/v1/log").json()["vkey"])
    w = Writers(token)
    h = {"Authorization": f"Bearer {token}"}
    try:
        # Deterministic first: A moves the database to 1; B, built on 0, catches up and
        # sequences after it instead of refusing.
        assert httpx.post(a.url + "/v1/entries", content=b"x", headers=h).json()["index"] == 0
        r = httpx.post(b.url + "/v1/entries", content=b"y", headers=h)
        assert r.status_code == 200 and r.json()["index"] == 1
        # The same entry through the other frontend: deduplicated across frontends.
        assert httpx.post(b.url + "/v1/entries", content=b"x", headers=h).json()["index"] == 0
        w.acked.extend([(0, b"x"), (1, b"y")])
        w.run([a.url, b.url], 45, join=180)
        # Both frontends still serve. An idle frontend follows the other's commits without
        # a write of its own: B soon serves A's newest checkpoint and entry.
        ra = httpx.post(a.url + "/v1/entries", content=b"last", headers=h)
        assert ra.status_code == 200
        last_index = ra.json()["index"]
        w.acked_one(ra.json(), b"last")
        for _ in range(100):  # bounded: B refreshes once a second while idle
            cb = http_get(b.url + "/checkpoint").text
            if cb == ra.json()["checkpoint"]:
                break
            time.sleep(0.1)
        assert cb == ra.json()["checkpoint"]
        assert httpx.get(f"{b.url}/v1/entries/{last_index}").content == b"last"
    finally:
        a.stop()
        b.stop()
    # The frontends take turns (PgStorage.write_turn): no batch is refused for a lost race.
    assert set(w.statuses) == {200}, w.statuses

    st = open_store(pg_url, tmp_path)
    try:
        with st.read() as rv:
            size = rv.tree_size()
            entries = rv.entries(0, size)
            final_note = rv.latest_checkpoint()
    finally:
        st.close()
    assert final_note is not None and len(entries) == size
    final, _ = open_checkpoint(final_note[1], [verifier], origin=ORIGIN)
    assert final.size == size
    # Each entry once, each acknowledged one at its acknowledged index.
    assert len(set(entries)) == size
    for index, entry in w.acked:
        assert entries[index] == entry
    # One root per size, and every handed-out checkpoint a prefix of the final tree.
    by_size = checkpoints_by_size(w.notes, verifier, ORIGIN)
    assert assert_prefixes(entries, by_size) == final.root_hash
    fs = tlog_cli("fsck", "--data", str(da), "--database", pg_url)
    assert fs.returncode == 0, fs.stdout + fs.stderr


def _scim_event(rid: str, req: str) -> dict[str, Any]:
    return new_event(
        tenant="acme",
        sp="app-1",
        op="patch",
        rt="User",
        rid=rid,
        actor={"kind": "user", "id": "admin-1"},
        corr=req,
        req={"m": "PATCH", "p": f"/Users/{rid}", "dig": bytes(32), "len": 10},
        res=200,
        outcome="success",
        mods=[{"attr": "active", "old": "true", "new": "false"}],
    )


def _scim_frontends(tmp_path: Path, pg_url: str) -> tuple[ServerProcess, ServerProcess]:
    """Two ``tlog serve`` processes on ``pg_url``: A in ``tmp_path/a`` makes the keys, B in
    ``tmp_path/b`` has a copy of A's signing key and uses A's SCIM master key file (one
    shared file, as docs/operations.md asks)."""
    da, db = tmp_path / "a", tmp_path / "b"
    a = start_server(da, database=pg_url, timeout=90)
    db.mkdir(mode=0o700)
    shutil.copy2(da / "log.key", db / "log.key")
    b = start_server(
        db, None, "--scim-master-key", str(da / "scim-master.key"), database=pg_url, timeout=90
    )
    return a, b


def test_scim_writes_on_two_frontend_processes(tmp_path: Path, pg_url: str) -> None:
    """SCIM events to two real ``tlog serve`` processes on one database, sharing one SCIM
    master key file: the first events of a new tenant race on both, and every event is also
    sent to the other frontend (an adapter retrying elsewhere). Each acknowledged eid is one
    leaf, and every acknowledged event is readable through both frontends (client/ code
    verifies each answer); at worst a 503, never two leaves or an unreadable event."""
    da = tmp_path / "a"
    a, b = _scim_frontends(tmp_path, pg_url)
    vkey = httpx.get(a.url + "/v1/log").json()["vkey"]

    sub = token_for(da, pg_url, "--role", "submitter", "--tenant", "acme")
    aud = token_for(da, pg_url, "--role", "auditor", "--tenant", "acme")
    h = {"Authorization": f"Bearer {sub}", "Content-Type": "application/json"}
    events = [_scim_event(f"u-{i % 5}", f"req-{i}") for i in range(30)]
    answers: list[tuple[str, httpx.Response]] = []
    lock = threading.Lock()

    def post(url: str, evs: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=60) as c:
            for ev in evs:
                r = c.post(url + "/v1/scim/events", content=event_to_json(ev).encode(), headers=h)
                with lock:
                    answers.append((ev["eid"], r))

    try:
        threads = [
            threading.Thread(target=post, args=(url, evs))
            for url, evs in ((a.url, events), (b.url, events[::-1]), (a.url, events[1::2]))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        statuses = [r.status_code for _, r in answers]
        assert set(statuses) <= {200, 503}, [r.text for _, r in answers if r.status_code != 200]
        assert statuses.count(200) >= len(statuses) // 2
        acked: dict[str, tuple[int, str]] = {}
        for eid, r in answers:
            if r.status_code == 200:
                got = (r.json()["index"], r.json()["leaf_hash"])
                assert acked.setdefault(eid, got) == got, "one eid became two leaves"
        assert len({i for i, _ in acked.values()}) == len(acked)
        last = max(i for i, _ in acked.values())
        for url in (a.url, b.url):
            for _ in range(100):  # an idle frontend adopts the other's commits within ~1 s
                if (
                    open_checkpoint(
                        http_get(url + "/checkpoint").text,
                        [Ed25519Verifier.from_vkey(vkey)],
                        origin=ORIGIN,
                    )[0].size
                    > last
                ):
                    break
                time.sleep(0.1)
            auditor = ScimAuditClient(url, aud, vkey)
            for rid in {ev["rid"] for ev in events}:
                found = {r.event["eid"] for r in auditor.search(rid=rid).results if r.event}
                assert found == {ev["eid"] for ev in events if ev["rid"] == rid} & acked.keys()
    finally:
        a.stop()
        b.stop()


def test_balanced_scim_load_on_two_frontends_is_never_refused(tmp_path: Path, pg_url: str) -> None:
    """SCIM events sent to two ``tlog serve`` processes on one database at the same rate,
    each from eight clients at once. The frontends' batches raced: a batch that lost its
    compare-and-swap a few times in a row was answered 503, every group staged on top of it
    too ("staged on top of a SCIM commit that failed"), and the losing frontend was starved
    (measured: ~5% of the requests refused, one frontend at a tenth of the other's rate).
    Now they take turns (``PgStorage.write_turn``) and catch up incrementally: every event is
    acknowledged, once, and each frontend answers its clients."""
    da = tmp_path / "a"
    a, b = _scim_frontends(tmp_path, pg_url)
    sub = token_for(da, pg_url, "--role", "submitter", "--tenant", "acme")
    h = {"Authorization": f"Bearer {sub}", "Content-Type": "application/json"}
    answers: dict[str, list[tuple[str, int, str]]] = {a.url: [], b.url: []}
    lock = threading.Lock()

    def post(url: str, k: int) -> None:
        with httpx.Client(timeout=60) as c:
            for i in range(40):
                ev = _scim_event(f"u-{k}-{i % 7}", f"req-{k}-{i}")
                r = c.post(url + "/v1/scim/events", content=event_to_json(ev).encode(), headers=h)
                with lock:
                    answers[url].append((ev["eid"], r.status_code, r.text))

    try:
        threads = [
            threading.Thread(target=post, args=(url, k)) for k in range(8) for url in (a.url, b.url)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
            assert not t.is_alive()
    finally:
        a.stop()
        b.stop()
    refused = [text for got in answers.values() for _, st, text in got if st != 200]
    assert not refused, refused[:5]
    assert all(len(got) == 8 * 40 for got in answers.values())
    leaves = [
        json.loads(text)["index"] for got in answers.values() for _, _, text in got
    ]  # fmt: skip
    assert len(set(leaves)) == len(leaves) == 2 * 8 * 40  # each event one leaf of its own
