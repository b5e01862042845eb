"""The shred scan of test_shred_scan.py, for an erased *actor*: after an admin's erasure
nothing of the admin (their DEKs, their pseudonym key, the actor sealed inside other
subjects' envelopes, their own events) decrypts from any byte of the data directory with
any key the log still holds, and the admin's id and name appear nowhere in clear; the events
the admin made about others stay readable and name no one (docs/design.md, "Actors")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tlog.scim.keys
import tlog.scim.service
from tlog.scim.keys import SubjectId

from .conftest import Harness, open_harness, user_event
from .shred import (
    ALICE,
    BOB,
    SHRED_ROLES,
    Files,
    Recorder,
    assert_nothing_decrypts,
    held_keys,
    raw_files,
    subject_secrets,
)

ADMIN, ADMIN_NAME = "admin-dana-7731", "Bob Admin"  # user_event names its actor "Bob Admin"


@pytest.fixture
def rec_lmdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Harness, Recorder, Files]]:
    rec = Recorder()
    monkeypatch.setattr(tlog.scim.keys, "AESGCM", rec.aesgcm())
    monkeypatch.setattr(tlog.scim.service, "AESGCM", rec.aesgcm())
    with open_harness(tmp_path, SHRED_ROLES, scim_expiry_interval=0, database=None) as h:
        yield h, rec, lambda: raw_files(h.data)


def test_nothing_of_an_erased_actor_decrypts(rec_lmdb: tuple[Harness, Recorder, Files]) -> None:
    h, rec, files = rec_lmdb
    # The admin's own account, then what the admin did to others.
    assert h.post_event(user_event(ADMIN, xid=None, req="r-own", actor="root-1")).status_code == 200
    for i, rid in enumerate([ALICE, BOB, ALICE]):
        ev = user_event(rid, xid=None, req=f"r-{i}", actor=ADMIN)
        assert h.post_event(ev).status_code == 200
    a = h.auditor()
    assert len(a.search(actor=ADMIN).results) == 3
    secrets = subject_secrets(h, rec, SubjectId("User", "rid", ADMIN))
    # What the admin's DEK sealed: their own envelope, and the actor inside three others.
    assert len(secrets["bodies"]) >= 4
    before = held_keys(h)
    rid = h.request_erasure(ADMIN).json()["id"]
    r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done"
    assert_nothing_decrypts(h, rec, secrets, before, [ADMIN], files())
    # The events about Alice and Bob: readable, verified, unlinked from the admin.
    got = a.search(rid=ALICE).results + a.search(rid=BOB).results
    assert len(got) == 3 and all(x.event is not None and x.actor_unlinked for x in got)
    assert a.search(actor=ADMIN).results == []
