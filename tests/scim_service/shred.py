"""The shred scans' machinery (tests/scim_service/test_shred_scan.py explains the
method): the recorder of every AES-GCM encryption, the raw files of a data directory, the
attacker's closure over the keys the log still holds, and the blind window scan."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import tlog.scim.keys
import tlog.scim.service
from tlog.scim import store
from tlog.scim.keys import MASTER_KEY_FILE, SubjectId, read_key_file

from .conftest import (
    BASE_TS,
    ROLES,
    T1,
    T2,
    Harness,
    group_event,
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


def populate(h: Harness) -> None:
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
