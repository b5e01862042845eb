"""ops11: ``tlog reseal-actors`` killed with SIGKILL at several points, then run again,
ends with every event readable as it was sent and every old actor re-sealed exactly once.

The re-seal rewrites envelopes and index records in batches, each its own transaction
(tlog.scim.reseal). A real ``tlog reseal-actors`` process (``tlog.cli.main``) kills itself
with SIGKILL at an exact place (a test-only patch in its own process, as the migrate kill
tests do): inside a batch's transaction after a record was rewritten (nothing of that batch
may stay), and right after a batch committed and its progress line was printed. After each
kill the store is checked (the public tree unchanged, every event read back and verified by
the auditor client); the runs' committed counts (their last progress lines) and the final
run's add up to the number of old actors exactly: none re-sealed twice, none missed."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client.formats.note import Ed25519Signer
from client.scim import new_event
from client.scim.cbor import loads_det
from tests.scim_service.conftest import ORIGIN, T1, Harness, open_harness, reopened_harness
from tlog.scim import store
from tlog.scim.search import FILTERS
from tlog.scim.service import ScimService

from ..support import serve_args, tlog_cli

pytestmark = pytest.mark.slow  # processes started, killed and restarted

ADMINS = [f"admin-k{i}" for i in range(4)]
OLD = 22  # events stored the old way (actor in clear), each with an actor to re-seal
NEW = 4  # events stored pseudonymous already
_A = dict(FILTERS)["actor"]

# ``tlog reseal-actors ARGS`` that SIGKILLs itself at POINT (its first argument):
#   inside:N  inside the transaction, once this process has rewritten its N-th record
#   after:N   once a batch committed (its progress line printed) that brought this
#             process's re-sealed records to N or more
CHILD = r"""
import os, signal, sys
import tlog.scim.reseal as r

point, n = sys.argv[1].split(":")
n = int(n)
done = 0

def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

one = r._reseal_one
def reseal_one(*a, **k):
    global done
    out = one(*a, **k)
    if out:
        done += 1
        if point == "inside" and done == n:
            die()
    return out
r._reseal_one = reseal_one

run = r.reseal_actors
def reseal_actors(svc, *, progress=None, **k):
    def said(res):
        progress(res)
        if point == "after" and res.resealed >= n:
            die()
    return run(svc, progress=said, **k)
r.reseal_actors = reseal_actors

from tlog.cli import main
sys.exit(main(["reseal-actors", *sys.argv[2:]]))
"""


def _event(i: int, actor: dict[str, Any]) -> Any:
    return new_event(
        tenant=T1,
        sp="app-1",
        op="patch",
        rt="User",
        rid=f"u-k-{i:03d}",
        actor=actor,
        corr=f"req-k-{i:03d}",
        req={"m": "PATCH", "p": f"/Users/u-k-{i:03d}", "dig": bytes([i]) * 32, "len": 9},
        res=200,
        outcome="success",
        mods=[{"attr": "active", "old": "true", "new": "false"}],
    )


def _actor(i: int) -> dict[str, Any]:
    if i % 7 == 3:  # a bearer token, no id: its handle is the token's digest
        return {"kind": "bearer", "tok_d": bytes([0x40 + i]) * 32}
    return {"kind": "user", "id": ADMINS[i % 4], "name": f"Admin {i % 4}", "tok_d": b"\x07" * 32}


def _populate(h: Harness, monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, Any]]:
    evs: dict[int, dict[str, Any]] = {}
    leaf: dict[int, str] = {}
    for i in range(OLD + NEW):
        evs[i] = _event(i, _actor(i))
        if i < OLD:  # as the code before actor9 stored it
            with monkeypatch.context() as m:
                m.setattr(ScimService, "_actor_keys", lambda *a, **k: None)
                r = h.post_event(evs[i])
        else:
            r = h.post_event(evs[i])
        assert r.status_code == 200, r.text
        leaf[i] = r.json()["leaf_hash"]
    return {"evs": evs, "leaf": leaf}


def _public(h: Harness) -> tuple[int, bytes, list[bytes]]:
    size = h.log.latest.size
    with h.log.storage.read() as rv:
        leaves = [bytes(rv.entry(i) or b"") for i in range(size)]
    return size, h.client.get("/checkpoint").content, leaves


def _bodies(h: Harness, leaf: dict[int, str]) -> dict[int, dict[str, Any]]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    svc = h.service

    def run(tx: Any) -> dict[int, dict[str, Any]]:
        tk = svc.keys.tenant(tx, T1)
        out = {}
        for i, b64 in leaf.items():
            lh = base64.b64decode(b64)
            env = store.decode_envelope(tx.get(store.envelope_key(lh)))
            dek = svc.keys.dek(tx, tk, env.kid, env.epoch)
            out[i] = loads_det(AESGCM(dek).decrypt(env.iv, env.ct, lh))
        return out

    return svc.read(run)  # type: ignore[no-any-return]


def _clear_index(h: Harness) -> int:
    svc = h.service

    def run(tx: Any) -> int:
        tk = svc.keys.tenant(tx, T1)
        return sum(
            len(tx.scan(store.index_prefix(tk.tn, _A + tk.index_hash(_A, a.encode()))))
            for a in ADMINS
        )

    return svc.read(run)  # type: ignore[no-any-return]


def _check(
    data: Path,
    database: str | None,
    tok: dict[str, str],
    got: dict[str, Any],
    before: dict[str, Any],
) -> dict[int, dict[str, Any]]:
    """The public tree as the last check left it (the re-seal writes no leaf or checkpoint;
    searches log events of their own, so it grows here), every event read back as sent (the
    auditor client verifies its commitment), each actor search finding its events; the
    envelopes' plaintexts."""
    evs = got["evs"]
    with reopened_harness(data, database, tok) as h:
        assert _public(h) == before["last"]
        aud = h.auditor()
        for i, ev in evs.items():
            (res,) = aud.search(rid=ev["rid"]).results
            assert res.event is not None, i
            if i < OLD:  # stored in clear, re-sealed or not: reads as it was sent
                assert res.event == ev, i
            else:  # stored pseudonymous: the actor as a pseudonym, the rest as sent
                assert {**res.event, "actor": ev["actor"]} == ev, i
        for a in ADMINS:
            found = [r.event["rid"] for r in aud.search(actor=a).results if r.event]
            assert found == [e["rid"] for e in evs.values() if e["actor"].get("id") == a], a
        bodies = _bodies(h, got["leaf"])
        bodies[-1] = {"clear_index": _clear_index(h)}
        now = _public(h)
        assert now[2][: len(before["last"][2])] == before["last"][2]
        before["last"] = now
    return bodies


def _killed(point: str, args: list[str]) -> int:
    """Run the child killed at ``point``; the actors its committed batches re-sealed."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, point, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    assert "re-sealed as pseudonyms" not in proc.stdout  # it did not finish
    counts = re.findall(r"reseal-actors: batch \d+: \d+ examined, (\d+) re-sealed", proc.stderr)
    return int(counts[-1]) if counts else 0


def test_reseal_actors_killed_at_several_points_then_finished(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_harness(tmp_path, database=database) as h:
        got = _populate(h, monkeypatch)
        tok = dict(h.tok)
        before = {"last": _public(h)}
    key = tmp_path / "log.key"
    key.write_text(Ed25519Signer(ORIGIN, bytes(range(32))).skey() + "\n")
    key.chmod(0o600)
    args = ["--data", str(tmp_path), *serve_args(database), "--batch", "2"]
    first = _check(tmp_path, database, tok, got, before)
    assert all("a" not in first[i] for i in range(OLD)) and first[-1]["clear_index"] > 0

    committed = 0
    for point in ("inside:1", "after:2", "inside:3", "after:1", "inside:2"):
        n = _killed(point, args)
        if point == "inside:1":
            assert n == 0  # killed inside its first batch: nothing of it stays
        if point.startswith("after"):
            assert n >= int(point[6:])  # its batches up to the kill committed
        committed += n
        bodies = _check(tmp_path, database, tok, got, before)
        resealed = sum(1 for i in range(OLD) if "a" in bodies[i])
        assert resealed == committed, (point, resealed, committed)
    assert 0 < committed < OLD  # the kills left work for the last run

    r = tlog_cli("reseal-actors", *args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    m = re.search(r"(\d+) actor\(s\) re-sealed", r.stdout)
    assert m is not None, r.stdout
    assert committed + int(m.group(1)) == OLD  # each old actor re-sealed exactly once
    r = tlog_cli("reseal-actors", *args)
    assert r.returncode == 0 and "0 actor(s) re-sealed" in r.stdout, (r.stdout, r.stderr)

    bodies = _check(tmp_path, database, tok, got, before)
    assert bodies[-1]["clear_index"] == 0  # no clear-id index record left
    for i in range(OLD):
        b = bodies[i]
        assert set(b) == {"a", "b", "e", "n", "s"} and b["s"] is True, i
        assert set(b["b"]["actor"]) == {"kind", "pid", "sd"}, i
    for i in range(OLD, OLD + NEW):
        assert "s" not in bodies[i], i  # stored pseudonymous: never rewritten
