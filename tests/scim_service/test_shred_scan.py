"""Issue 10 part 1: after an approved erasure (and after retention expiry) nothing of the
subject decrypts from ANY byte of the data directory with ANY key the log still holds.

Every AES-GCM encryption the log performs during the test is recorded (key, iv, ciphertext,
AAD): that is the complete set of ciphertexts that can exist anywhere in the data directory,
live or in freed LMDB pages. After the erasure the test

1. reads every file of the data directory raw (``data.mdb`` with its freed pages,
   ``lock.mdb``, the key file, anything else) and finds which recorded ciphertexts are still
   physically there;
2. starts from every key the log still holds (the key file's master key and everything it
   unwraps from the live store) and plays the attacker: every ciphertext found in the files
   is tried with every key known so far and every AAD the log ever used; every key that comes
   out joins the set, until nothing new comes out;
3. asserts that none of the subject's DEKs or pseudonym keys is in that set and none of the
   subject's bodies decrypts; and, so that the scan is known to be able to find something,
   that the very same scan with the keys the log held *before* the erasure does recover them
   from the files (freed pages really do hold them);
4. slides a window over every offset of every file and tries every held key on every
   wrapped-key-sized window with every AAD (no recorded positions assumed);
5. greps every file for the subject's plaintext identifiers.

On PostgreSQL "every byte of the store" is: the on-disk files of every table, index and
TOAST relation of the log's schema after a CHECKPOINT (dead row versions included: no VACUUM
is run, and none is needed, because what they hold is sealed under keys the log no longer
holds), and the raw WAL written since the test began (what a WAL archive, a streaming
replica or a point-in-time-recovery backup keeps). The blind window scan (4) covers the
relation files; the WAL gets steps 1-3 and 5 (its records may split a row across WAL pages,
so positions there are not windows of a row).
"""

from __future__ import annotations

import base64
import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.testclient import TestClient

import tlog.scim.keys
import tlog.scim.service
from tlog.backend import StorageError
from tlog.integrity import RollbackDetected
from tlog.scim import store
from tlog.scim.keys import MASTER_KEY_FILE, SubjectId, read_key_file
from tlog.server import build_app

from ..pgsupport import (
    OldCopy,
    clone_store,
    recover_into,
    relation_files,
    wal_position,
    wal_since,
)
from ..support import app_parts, serve_config
from .conftest import (
    BASE_TS,
    ROLES,
    T1,
    T2,
    Harness,
    group_event,
    make_signer,
    open_harness,
    user_event,
)

ALICE = "u-alice-7f3a"
ALICE_XID = "alice.liddell@example.org"
BOB = "u-bob-55c1"
DAY = 24 * 3600 * 1000
WRAPPED_KEY = 12 + 32 + 16

# The roles the shredding scans need: two submitters, an auditor, two officers.
SHRED_ROLES = [r for r in ROLES if r[0] in ("sub1", "sub2", "aud1", "po_a", "po_b")]


@dataclass(frozen=True)
class Sealed:
    key: bytes
    iv: bytes
    ct: bytes
    aad: bytes
    pt: bytes


class Recorder:
    def __init__(self) -> None:
        self.items: list[Sealed] = []

    def aesgcm(self) -> type:
        rec = self

        class RecordingAESGCM:
            def __init__(self, key: bytes) -> None:
                self._key = bytes(key)
                self._a = AESGCM(key)

            def encrypt(self, iv: bytes, pt: bytes, aad: bytes | None) -> bytes:
                ct = self._a.encrypt(iv, pt, aad)
                rec.items.append(Sealed(self._key, bytes(iv), ct, aad or b"", bytes(pt)))
                return ct

            def decrypt(self, iv: bytes, ct: bytes, aad: bytes | None) -> bytes:
                return self._a.decrypt(iv, ct, aad)

        return RecordingAESGCM


Files = Callable[[], dict[str, bytes]]
WAL = "pg_wal"  # the name the WAL written during the test is scanned under


@pytest.fixture
def rec_harness(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database: str | None,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Harness, Recorder, Files]]:
    """The harness, the recorder of every encryption, and ``files()``: every byte the log's
    store and data directory hold now (see the module docstring)."""
    rec = Recorder()
    monkeypatch.setattr(tlog.scim.keys, "AESGCM", rec.aesgcm())
    monkeypatch.setattr(tlog.scim.service, "AESGCM", rec.aesgcm())
    cluster = None if database is None else request.getfixturevalue("pg_cluster")
    start = None if cluster is None else wal_position(cluster)
    with open_harness(tmp_path, SHRED_ROLES, scim_expiry_interval=0, database=database) as h:

        def files() -> dict[str, bytes]:
            out = raw_files(h.data)
            if cluster is None:
                assert "db/data.mdb" in out and "db/lock.mdb" in out
                return out
            assert database is not None and start is not None
            out[WAL] = wal_since(cluster, start)  # before the CHECKPOINT may recycle it
            out.update(relation_files(cluster, database))
            return out

        yield h, rec, files


def raw_files(data: Path) -> dict[str, bytes]:
    out = {str(p.relative_to(data)): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert MASTER_KEY_FILE in out
    return out


def held_keys(h: Harness) -> set[bytes]:
    """Every key the log holds now: the key file's master key(s) and everything they unwrap
    from the live store, recursively (tn key, tenant KEKs and index keys, P keys, DEKs)."""
    cur, nxt = read_key_file(h.data / MASTER_KEY_FILE)
    assert nxt is None  # no second key left behind in the file
    keys = {cur}
    svc = h.service
    with svc.storage.read() as rv:
        tx = store.Overlay(rv)
        keys.add(svc.keys._tn_key)
        for tenant in (T1, T2):
            tk = svc.keys.tenant(tx, tenant)
            if tk is None:
                continue
            keys |= {tk.kek, tk.ik}
            for _, raw in tx.scan(store.subject_key(tk.tn, b"")):
                r = store.decode_record(raw, "subject")
                sk = tlog.scim.keys.SubjectKeys(r["kid"], r["p"])
                keys.add(svc.keys.pseudonym_key(tk, sk))
                for dkey, _ in tx.scan(store.dek_prefix(r["kid"])):
                    dek = svc.keys.dek(tx, tk, r["kid"], int.from_bytes(dkey[-4:], "big"))
                    assert dek is not None
                    keys.add(dek)
    return keys


def _present(files: dict[str, bytes], s: Sealed) -> bool:
    # Wrapped keys are stored as iv ‖ ct; envelopes keep iv and ct in separate fields.
    return any(s.iv + s.ct in b or (s.ct in b and s.iv in b) for b in files.values())


def attacker_closure(files: dict[str, bytes], rec: Recorder, start: set[bytes]) -> set[bytes]:
    """Every key obtainable from ``start`` and the ciphertexts physically in ``files``."""
    found = [s for s in rec.items if _present(files, s)]
    aads = {s.aad for s in rec.items}
    known = set(start)
    opened: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(found):
            if i in opened:
                continue
            for k in known:
                pt = _try(k, s.iv, s.ct, aads)
                if pt is not None:
                    opened.add(i)
                    if len(pt) == 32 and pt not in known:
                        known.add(pt)
                        changed = True
                    break
    return known


def _try(key: bytes, iv: bytes, ct: bytes, aads: set[bytes]) -> bytes | None:
    a = AESGCM(key)
    for aad in aads:
        try:
            return a.decrypt(iv, ct, aad)
        except InvalidTag:
            continue
    return None


def subject_secrets(h: Harness, rec: Recorder, subject: SubjectId) -> dict[str, Any]:
    """The subject's DEKs, pseudonym key and the ciphertexts under its DEKs (before erasure)."""
    svc = h.service
    with svc.storage.read() as rv:
        tx = store.Overlay(rv)
        tk = svc.keys.tenant(tx, T1)
        assert tk is not None
        sk = svc.keys.subject(tx, tk, subject)
        assert sk is not None
        deks = set()
        for dkey, _ in tx.scan(store.dek_prefix(sk.kid)):
            dek = svc.keys.dek(tx, tk, sk.kid, int.from_bytes(dkey[-4:], "big"))
            assert dek is not None
            deks.add(dek)
        p = svc.keys.pseudonym_key(tk, sk)
    bodies = [s for s in rec.items if s.key in deks]
    assert deks and bodies
    return {"deks": deks, "p": p, "bodies": bodies}


def _windows_scan(files: dict[str, bytes], keys: set[bytes], aads: set[bytes]) -> list[str]:
    """Try every held key on every wrapped-key-sized window at every offset of every file."""
    hits = []
    ciphers = [AESGCM(k) for k in keys]
    for name, data in files.items():
        for off in range(0, max(0, len(data) - WRAPPED_KEY + 1)):
            w = data[off : off + WRAPPED_KEY]
            if w.count(0) > 8:  # zero padding, page headers: not a random-looking blob
                continue
            for a in ciphers:
                for aad in aads:
                    try:
                        a.decrypt(w[:12], w[12:], aad)
                    except InvalidTag:
                        continue
                    hits.append(f"{name}@{off}")
    return hits


def assert_nothing_decrypts(
    h: Harness,
    rec: Recorder,
    secrets: dict[str, Any],
    before: set[bytes],
    idents: list[str],
    files: dict[str, bytes],
) -> None:
    """``secrets["p"]`` None: the pseudonym key is not meant to go (retention expiry shreds
    bodies, not subjects)."""
    held = held_keys(h)
    gone = secrets["deks"] | ({secrets["p"]} if secrets["p"] is not None else set())
    assert not (held & gone)
    # Non-vacuity: with the keys the log held before, the same files still give it all back.
    old = attacker_closure(files, rec, before)
    assert secrets["deks"] <= old, "freed pages no longer hold the old wrapped keys?"
    assert any(_present(files, s) for s in secrets["bodies"])
    # Now: nothing.
    now = attacker_closure(files, rec, held)
    assert not (now & gone)
    aads = {s.aad for s in rec.items}
    for s in secrets["bodies"]:
        for k in now:
            assert _try(k, s.iv, s.ct, aads) is None
    # Blind scan, no recorded positions assumed: no window anywhere in the files is the
    # subject's DEK or P key wrapped under a wrapping key still held (the master key and the
    # tenant KEKs: nothing else ever wraps a key).
    dek_aads = {s.aad for s in rec.items if s.pt in gone}
    assert dek_aads
    wrapping = {
        s.key for s in rec.items if s.aad in dek_aads or s.aad.startswith(b"tlog-scim/v1/kek")
    }
    master = read_key_file(h.data / MASTER_KEY_FILE)[0]
    pages = {k: v for k, v in files.items() if k != WAL}
    assert _windows_scan(pages, (now & wrapping) | {master}, dek_aads) == []
    # ...while the KEK of before the erasure finds them in freed pages or dead row versions
    # (the scan can see).
    assert _windows_scan(pages, before & wrapping, dek_aads)
    # And no plaintext identifier anywhere.
    for name, data in files.items():
        for ident in idents:
            assert ident.encode() not in data, (name, ident)


def _populate(h: Harness) -> None:
    month = 31 * DAY
    ticks = iter([BASE_TS, BASE_TS + 1000, BASE_TS + month])
    h.service.clock = lambda: next(ticks)
    for i in range(3):
        ev = user_event(ALICE, xid=ALICE_XID, req=f"req-a{i}")
        assert h.post_event(ev).status_code == 200
    counter = itertools.count()
    h.service.clock = lambda: BASE_TS + 2 * month + 1000 * next(counter)
    assert h.post_event(user_event(BOB, xid="bob@example.org", req="req-b")).status_code == 200
    pid = h.client.post(
        "/v1/scim/pseudonyms", headers=h.h("sub1"), json={"refs": [{"rt": "User", "id": ALICE}]}
    ).json()["refs"][0]["pid"]
    assert h.post_event(group_event([base64.b64decode(pid)])).status_code == 200
    assert h.post_event(user_event("u-t2", tenant=T2, req="req-t2"), "sub2").status_code == 200


def test_nothing_decryptable_after_erasure(
    rec_harness: tuple[Harness, Recorder, Files],
) -> None:
    h, rec, files = rec_harness
    _populate(h)
    secrets = subject_secrets(h, rec, SubjectId("User", "rid", ALICE))
    before = held_keys(h)
    rid = h.request_erasure(ALICE).json()["id"]
    r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done"
    idents = [ALICE, ALICE_XID, "admin-bob-9921"]
    assert_nothing_decrypts(h, rec, secrets, before, idents, files())
    # Everyone else is still readable after the rotation (in memory and after a restart).
    a = h.auditor()
    assert [x.event["rid"] for x in a.search(rid=BOB).results] == [BOB]
    assert len(a.search(rid="g-engineering-42").results) == 1
    assert a.search(rid=ALICE).results == []


def test_nothing_decryptable_after_retention_expiry(
    rec_harness: tuple[Harness, Recorder, Files],
) -> None:
    h, rec, files = rec_harness
    _populate(h)
    secrets = subject_secrets(h, rec, SubjectId("User", "rid", ALICE))
    # Retention 30 days; 100 days after Alice's events, only her months (June, July 2024)
    # are due; Bob (August) and the group are not.
    r = h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))
    assert r.status_code == 200, r.text
    before = held_keys(h)
    h.service.clock = lambda: BASE_TS + 100 * DAY
    size = h.log.latest.size
    root = h.client.get("/checkpoint").text.split("\n")[2]
    r = h.client.post("/v1/scim/expire", json={"tenant": T1}, headers=h.h("po_a"))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["events"] == 3 and res["deks"] == 2
    secrets["p"] = None
    idents = [ALICE, ALICE_XID, "admin-bob-9921"]
    assert_nothing_decrypts(h, rec, secrets, before, idents, files())
    a = h.auditor()
    assert a.search(rid=ALICE).results == []
    assert [x.event["rid"] for x in a.search(rid=BOB).results] == [BOB]
    # Proofs and roots unchanged; an expiry event appended.
    assert h.client.get(f"/v1/proof/consistency?old_size={size}&tree_size={size}").status_code
    (ev,) = [x.event for x in a.search(action="tlog.expiry.run").results]
    assert ev["x"]["events"] == 3
    with h.log.storage.read() as rv:
        assert rv.tree_size() > size
    assert h.client.get(f"/v1/proof/inclusion?index=0&tree_size={size}").status_code == 200
    assert root  # the old checkpoint's root is still what consistency proofs start from


def test_a_backup_from_before_an_erasure_opens_only_with_the_key_file_of_its_moment(
    tmp_path: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
) -> None:
    """What a restore does to an erasure (docs/operations.md, "Backups and erasure"): a
    store backup taken before an erasure (an mdb_copy; a pg_dump, as a point-in-time restore
    to a moment before it would be), restored and brought forward with ``tlog recover`` (the
    log's entries only), does not serve with the current key file: its SCIM keys are sealed
    under the master key the erasure destroyed, and serve refuses rather than lose them
    silently. Only the key file of the backup's moment opens it, and it brings the erased
    subject back: which is why that pair must not be kept past the erasure deadline."""
    backup = old_copy("backup")
    old_key = tmp_path / "old-master.key"
    with open_harness(tmp_path, SHRED_ROLES, scim_expiry_interval=0, database=database) as h:
        _populate(h)
        backup.take(h.log.storage)
        shutil.copy2(tmp_path / MASTER_KEY_FILE, old_key)  # the key file of that moment
        rid = h.request_erasure(ALICE).json()["id"]
        r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
        assert r.status_code == 200 and r.json()["state"] == "done"
        tokens = dict(h.tok)
    replica = clone_store(database, tmp_path, new_database(), tmp_path / "replica")
    backup.restore(tmp_path)
    signer = make_signer()
    with pytest.raises(RollbackDetected):  # behind the log: the entries come back first
        build_app(serve_config(tmp_path, database), signer)
    recover_into(database, tmp_path, signer, replica, [])
    with pytest.raises(StorageError, match="does not match this store"):
        build_app(serve_config(tmp_path, database), signer)
    # The pair of that moment opens it, and the erased subject is readable again.
    shutil.copy2(old_key, tmp_path / MASTER_KEY_FILE)
    app, log_, token_store = build_app(serve_config(tmp_path, database), signer)
    try:
        with TestClient(app) as c:
            again = Harness(c, log_, token_store, signer, tmp_path, app_parts(app).scim, tokens)
            assert ALICE in {x.event["rid"] for x in again.auditor().search(rid=ALICE).results}
    finally:
        log_.storage.close()
