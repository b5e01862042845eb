"""review11: erasing a User also destroys the actor keys named by its userName and e-mails
(tlog.scim.erasure.Erasures._actor_aliases), except one under a legal hold. The hold on such
an actor subject was not tested (removing the check left every test green)."""

from __future__ import annotations

import json

from .actors import admin_event, erase
from .conftest import T1, Harness
from .helpers import create_event

GRACE = "u-grace-r11"


def _mods(user_name: str, email: str) -> list[dict[str, str]]:
    return [
        {"attr": "userName", "new": json.dumps(user_name)},
        {"attr": "emails", "new": json.dumps([{"value": email, "type": "work"}])},
        {"attr": "active", "new": "true"},
    ]


def test_an_actor_key_under_a_hold_outlives_the_erasure_of_its_user(harness: Harness) -> None:
    h = harness
    assert (
        h.post_event(
            create_event(GRACE, "r-g11", _mods("grace.r11", "g11@example.org"))
        ).status_code
        == 200
    )
    held = {"kind": "user", "id": "grace.r11"}  # HTTP Basic: keyed by the user name
    free = {"kind": "user", "name": "g11@example.org"}  # an IdP: keyed by the e-mail
    for i, actor in enumerate((held, free)):
        assert h.post_event(admin_event(f"u-h11-{i}", f"r-h11{i}", actor=actor)).status_code == 200
    r = h.client.post(
        "/v1/scim/holds",
        json={"tenant": T1, "reason": "litigation-r11", "rt": "User", "rid": "grace.r11"},
        headers=h.h("po_a"),
    )
    assert r.status_code == 201, r.text

    erase(h, GRACE)

    aud = h.auditor()
    (kept,) = aud.search(rid="u-h11-0").results
    assert kept.who == held and not kept.actor_unlinked  # held: its keys stay
    assert len(aud.search(actor="grace.r11").results) == 1
    (gone,) = aud.search(rid="u-h11-1").results
    assert gone.actor_unlinked and gone.who is None  # not held: destroyed with the User
