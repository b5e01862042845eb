"""Red team 13 made the effects name a write to part of ``emails`` (``emails[type eq
"work"].value``) and a PUT that leaves ``emails`` out as changes the log cannot value. The
state does not drop the old e-mails for it (it marks them stale): a User's erasure reaches
the actors named by every ``userName`` and ``emails`` value the state holds
(tlog.scim.erasure), and an admin known to the log by an old e-mail is still that User."""

from __future__ import annotations

import json

from client.scim import new_event

from .actors import admin_event, erase, search_raw
from .conftest import T1, Harness
from .helpers import create_event

GRACE = "u-grace-1906"


def _write(req: str, op: str, mods: list[dict[str, str]]) -> object:
    return new_event(
        tenant=T1, sp="app-1", op=op, rt="User", rid=GRACE,
        actor={"kind": "user", "id": "admin-bob-9921"}, corr=req,
        req={"m": "PATCH" if op == "patch" else "PUT", "p": f"/Users/{GRACE}",
             "dig": bytes(32), "len": 42},
        res=200, outcome="success", mods=mods,
    )  # fmt: skip


def test_erasure_reaches_the_actor_named_by_an_email_changed_in_part_or_left_out(
    harness: Harness,
) -> None:
    h = harness
    emails = [{"value": "grace@example.org", "type": "work"}]
    mods = [
        {"attr": "userName", "new": json.dumps("grace")},
        {"attr": "emails", "new": json.dumps(emails)},
    ]
    assert h.post_event(create_event(GRACE, "r-c", mods)).status_code == 200
    part = [{"attr": 'emails[type eq "work"].value', "op": "replace", "new": '"g2@example.org"'}]
    r = h.post_event(_write("r-p", "patch", part))
    assert r.status_code == 200, r.text
    r = h.post_event(_write("r-put", "replace", [{"attr": "userName", "new": '"grace"'}]))
    assert r.status_code == 200, r.text
    aud = h.auditor()
    for req in ("r-p", "r-put"):  # each names emails changed, without values
        (f,) = aud.search(req=req).results
        assert {"attr": "emails"} in (f.effect or {}).get("changes", []), f.effect
    old = {"kind": "user", "name": "grace@example.org"}
    assert h.post_event(admin_event("u-other-1", "r-a", actor=old)).status_code == 200
    assert len(aud.search(actor="grace@example.org").results) == 1

    erase(h, GRACE)

    (got,) = aud.search(rid="u-other-1").results
    assert got.actor_unlinked and got.who is None
    assert search_raw(h, actor="grace@example.org")["results"] == []
