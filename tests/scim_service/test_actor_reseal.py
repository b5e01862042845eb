"""``tlog reseal-actors`` (tlog.scim.reseal): events stored before actors were pseudonymised
kept their actor in clear inside the envelope (under the event subject's DEK) and in the
search index (``HMAC(ik, "a" ‖ actor.id)``), so erasing the admin reached neither. The
re-seal rewrites those records into the pseudonymous form, offline, without touching the
public tree: the same leaves, the same root and checkpoints. Resumable and idempotent.

The old records are written the way the code before ``actor9`` wrote them (4daffa4^:
``envelope_plaintext(nonce, encoded, encoded_effect)`` with the actor as sent, and the
actor's index value its clear id): that is the staging with ``_actor_keys`` answering
None, which this module checks byte for byte against a decryption of the record."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from client.formats.note import Ed25519Signer
from client.scim.cbor import dumps_det, loads_det
from client.scim.event import actor_cbor
from tlog.scim import store
from tlog.scim.reseal import reseal_actors
from tlog.scim.search import FILTERS
from tlog.scim.service import ScimService

from ..support import tlog_cli
from .actors import ADMIN, ADMIN_NAME, admin_event, erase, search_raw
from .conftest import ORIGIN, T1, Harness, open_harness, reopened_harness

TOK = b"\x07" * 32  # admin_event's default actor carries it
BEARER = {"kind": "bearer", "tok_d": b"\x44" * 32}
_A = dict(FILTERS)["actor"]


def _old_staging(h: Harness, monkeypatch: pytest.MonkeyPatch, ev: dict[str, Any]) -> Any:
    """Post ``ev`` as the code before actor9 stored it."""
    with monkeypatch.context() as m:
        m.setattr(ScimService, "_actor_keys", lambda *a, **k: None)
        d = h.post_event(ev).json()
    assert "actor" not in d
    return d


def _body(h: Harness, leaf_hash_b64: str) -> dict[str, Any]:
    """The envelope's plaintext, decrypted with the event subject's DEK."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    lh = base64.b64decode(leaf_hash_b64)
    svc = h.service

    def run(tx: Any) -> dict[str, Any]:
        tk = svc.keys.tenant(tx, T1)
        env = store.decode_envelope(tx.get(store.envelope_key(lh)))
        dek = svc.keys.dek(tx, tk, env.kid, env.epoch)
        return loads_det(AESGCM(dek).decrypt(env.iv, env.ct, lh))  # type: ignore[no-any-return]

    return svc.read(run)  # type: ignore[no-any-return]


def _clear_index(h: Harness, aid: str) -> list[Any]:
    svc = h.service

    def run(tx: Any) -> list[Any]:
        tk = svc.keys.tenant(tx, T1)
        cond = _A + tk.index_hash(_A, aid.encode())
        return tx.scan(store.index_prefix(tk.tn, cond))  # type: ignore[no-any-return]

    return svc.read(run)  # type: ignore[no-any-return]


def _public(h: Harness) -> tuple[int, bytes, list[bytes]]:
    size = h.log.latest.size
    with h.log.storage.read() as rv:
        leaves = [bytes(rv.entry(i) or b"") for i in range(size)]
    return size, h.client.get("/checkpoint").content, leaves


def _populate(h: Harness, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    evs = {
        "old-admin": admin_event("u-rs-1", "r-rs1"),
        "old-bearer": admin_event("u-rs-2", "r-rs2", actor=BEARER),
        "old-anon": admin_event("u-rs-3", "r-rs3", actor={"kind": "anonymous"}),
        "new-admin": admin_event("u-rs-4", "r-rs4"),
    }
    answers = {}
    for name, ev in evs.items():
        if name.startswith("old"):
            answers[name] = _old_staging(h, monkeypatch, ev)
        else:
            answers[name] = h.post_event(ev).json()
    # The old records are what the old code wrote: the event as sent, the clear id indexed.
    for name in ("old-admin", "old-bearer"):
        body = _body(h, answers[name]["leaf_hash"])
        assert set(body) == {"b", "e", "n"} and body["b"] == evs[name]
        assert dumps_det(body) == dumps_det(
            {"b": evs[name], "e": body["e"], "n": base64.b64decode(answers[name]["nonce"])}
        )
    assert len(_clear_index(h, ADMIN)) == 1
    h.auditor().search(rid="u-rs-1")  # a log's own event too (its actor stays as it is)
    return {"evs": evs, "answers": answers}


def _check_resealed(h: Harness, got: dict[str, Any], before: Any) -> None:
    evs, answers = got["evs"], got["answers"]
    assert _public(h) == before  # the same leaves, the same checkpoint
    for name, actor in (("old-admin", evs["old-admin"]["actor"]), ("old-bearer", BEARER)):
        body = _body(h, answers[name]["leaf_hash"])
        assert set(body) == {"a", "b", "e", "n", "s"} and body["s"] is True
        assert set(body["b"]["actor"]) == {"kind", "pid", "sd"}
        plain = dumps_det(body["b"])
        for v in actor.values():
            if isinstance(v, bytes):
                assert v not in plain
            elif v != actor["kind"]:
                assert v.encode() not in plain, v
        assert actor_cbor(actor) not in dumps_det(body)
    assert set(_body(h, answers["old-anon"]["leaf_hash"])) == {"b", "e", "n"}
    assert _clear_index(h, ADMIN) == []
    # It reads as it was sent (c verifies: the auditor client checks it) and actor= finds
    # the old events with the new, in log order.
    aud = h.auditor()
    found = aud.search(actor=ADMIN).results
    assert [e.event["rid"] for e in found] == ["u-rs-1", "u-rs-4"]  # type: ignore[index]
    assert found[0].event == evs["old-admin"] and found[0].who == evs["old-admin"]["actor"]
    (b,) = aud.search(actor=base64.b64encode(BEARER["tok_d"]).decode()).results
    assert b.event == evs["old-bearer"]


def test_reseal_keeps_the_tree_and_unlinks_on_erasure(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    got = _populate(h, monkeypatch)
    evs, answers = got["evs"], got["answers"]
    before = _public(h)
    # Interrupted after one batch of two records, then run again: resumable.
    first = reseal_actors(h.service, batch=2, stop_after=1)
    assert first.batches == 1 and first.examined == 2
    rest = reseal_actors(h.service, batch=2)
    assert first.resealed + rest.resealed == 2
    assert reseal_actors(h.service).resealed == 0  # idempotent
    _check_resealed(h, got, before)
    # Retries: the same event is a duplicate, another actor a 409.
    again = h.post_event(evs["old-admin"]).json()
    assert again["duplicate"] and again["leaf"] == answers["old-admin"]["leaf"]
    assert "actor" not in again
    other = {**evs["old-admin"], "actor": {"kind": "user", "id": "admin-zz"}}
    assert h.post_event(other).status_code == 409

    erase(h, ADMIN)
    # c covers the erased actor: nothing of the old event can be verified, it reads erased.
    (res,) = search_raw(h, rid="u-rs-1")["results"]
    assert res.get("erased") is True and "event" not in res
    text = json.dumps(search_raw(h)).encode()
    for needle in (ADMIN, ADMIN_NAME, base64.b64encode(TOK).decode()):
        assert needle.encode() not in text, needle
    assert search_raw(h, actor=ADMIN)["results"] == []
    (new,) = h.auditor().search(rid="u-rs-4").results
    assert new.actor_unlinked
    assert h.post_event(other).status_code == 409
    assert h.post_event(evs["old-admin"]).json()["duplicate"]
    assert _public(h)[2][: len(before[2])] == before[2]


def test_the_cli_reseals_a_stopped_log(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_harness(tmp_path, database=database) as h:
        got = _populate(h, monkeypatch)
        tok = h.tok
        size = h.log.latest.size
    key = tmp_path / "log.key"
    key.write_text(Ed25519Signer(ORIGIN, bytes(range(32))).skey() + "\n")
    key.chmod(0o600)
    db = [] if database is None else ["--database", database, "--replication", "none"]
    with reopened_harness(tmp_path, database, tok) as h:
        before = _public(h)
        assert before[0] == size
    r = tlog_cli("reseal-actors", "--data", str(tmp_path), *db, "--batch", "3")
    assert r.returncode == 0, r.stderr
    assert "2 actor(s) re-sealed" in r.stdout, r.stdout
    r = tlog_cli("reseal-actors", "--data", str(tmp_path), *db)
    assert r.returncode == 0 and "0 actor(s) re-sealed" in r.stdout, (r.stdout, r.stderr)
    with reopened_harness(tmp_path, database, tok) as h:
        _check_resealed(h, got, before)


@pytest.mark.parametrize(
    "change",
    [
        {"s": True},  # the re-sealed mark without a sealed actor
        {"s": False, "a": b"\x00" * 60},  # a mark that is not true
        {"r": b"\x01" * 16},  # a retry digest without a sealed actor
    ],
    ids=["mark-alone", "mark-false", "retry-alone"],
)
def test_a_malformed_actor_part_of_an_envelope_is_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    """Strict reading: the envelope's "a", "r" and "s" only in the combinations the log
    writes; anything else is a damaged record (StorageError), never read as something else."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tlog.backend import StorageError

    h = harness
    d = _old_staging(h, monkeypatch, admin_event("u-bad", "r-bad"))
    lh = base64.b64decode(d["leaf_hash"])
    svc = h.service

    def tamper(tx: Any) -> None:
        tk = svc.keys.tenant(tx, T1)
        env = store.decode_envelope(tx.get(store.envelope_key(lh)))
        dek = svc.keys.dek(tx, tk, env.kid, env.epoch)
        body = {**loads_det(AESGCM(dek).decrypt(env.iv, env.ct, lh)), **change}
        ct = AESGCM(dek).encrypt(env.iv, dumps_det(body), lh)
        tx.put(
            store.envelope_key(lh),
            store.encode_envelope(env.tn, env.eid, env.ts, env.kid, env.epoch, env.iv, ct, env.ix),
        )

    svc.write(tamper)

    def read(tx: Any) -> Any:
        return svc.keys.open_envelope_actor(tx, svc.keys.tenant(tx, T1), lh)

    with pytest.raises(StorageError):
        svc.read(read)
