"""review11: ``Erasures.reapply`` (``tlog reapply-erasures``, a certificate applied again to a
store restored from before the erasure) shreds the User as an approval does, the actor keys
named by its userName and e-mails with it (``_shred_keys`` → ``_actor_aliases``). No test
covered the aliases on that path. The store here is the one a restore gives back: the User
and its actor keys alive, the certificate naming the User's key id by its hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from client.scim.erasure import VerifiedErasure
from tlog.scim import store

from .actors import admin_event, search_raw
from .conftest import T1, Harness
from .helpers import create_event

GRACE = "u-grace-r11b"


def _kid(h: Harness, rid: str) -> bytes:
    svc = h.service

    def run(tx: Any) -> bytes:
        tk = svc.keys.tenant(tx, T1)
        assert tk is not None
        raw = tx.get(store.subject_key(tk.tn, tk.subject_hash_of("User", "rid", rid)))
        kid: bytes = store.decode_record(raw, "subject")["kid"]
        return kid

    return svc.read(run)


def test_reapplying_an_erasure_destroys_the_actor_keys_of_the_user(harness: Harness) -> None:
    h = harness
    mods = [
        {"attr": "userName", "new": json.dumps("Grace.R11b")},
        {"attr": "emails", "new": json.dumps([{"value": "g11b@example.org"}])},
    ]
    assert h.post_event(create_event(GRACE, "r-g11b", mods)).status_code == 200
    actors = [
        {"kind": "user", "id": "grace.r11b"},  # HTTP Basic, casefolded
        {"kind": "user", "name": "g11b@example.org"},  # an IdP
        {"kind": "user", "id": "someone-else-r11"},
    ]
    for i, actor in enumerate(actors):
        assert (
            h.post_event(admin_event(f"u-ra11-{i}", f"r-ra11{i}", actor=actor)).status_code == 200
        )
    cert = VerifiedErasure(
        request="ab" * 16,
        origin="",
        tenant=T1,
        index=0,
        tree_size=0,
        erased_at=0,
        subject_rt="User",
        reason="gdpr-art17",
        kid_hash=hashlib.sha256(_kid(h, GRACE)).hexdigest(),
        requested_by="",
        approved_by="",
        event={},
    )
    assert h.client.portal is not None
    done = h.client.portal.call(h.service.erasures.reapply, [cert])
    assert done["subjects"] == 1
    aud = h.auditor()
    assert aud.search(rid=GRACE).results == []  # its index records gone with it
    for i, actor in enumerate(actors):
        (got,) = aud.search(rid=f"u-ra11-{i}").results
        if i < 2:
            assert got.actor_unlinked and got.who is None, actor
            assert search_raw(h, actor=actor.get("id") or actor["name"])["results"] == []
        else:
            assert got.who == actor and not got.actor_unlinked
