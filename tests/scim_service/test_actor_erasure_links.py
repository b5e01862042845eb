"""Erasing a User unlinks the actor pseudonyms keyed by that User's ``userName`` and
e-mails, not only the one keyed by their SCIM id (docs/design.md, "Actors"): an admin who
signs in with HTTP Basic is ``{"kind": "user", "id": <user name>}``, one named by the IdP
``{"name": <e-mail>}``. The log knows the link from the User's resource state (sealed under
the User's DEK). Before, only ``actor.id == the User's id`` was reached."""

from __future__ import annotations

import json
from typing import Any

from .actors import admin_event, erase, search_raw
from .conftest import Harness
from .helpers import create_event

GRACE = "u-grace-5150"


def grace_mods(user_name: str, emails: list[str]) -> list[dict[str, Any]]:
    return [
        {"attr": "userName", "new": json.dumps(user_name)},
        {"attr": "emails", "new": json.dumps([{"value": e, "type": "work"} for e in emails])},
        {"attr": "active", "new": "true"},
    ]


def test_erasing_a_user_unlinks_the_actors_named_by_their_user_name_and_emails(
    harness: Harness,
) -> None:
    h = harness
    mods = grace_mods("Grace.Hopper", ["grace@example.org", "gh@navy.example"])
    assert h.post_event(create_event(GRACE, "r-gc", mods)).status_code == 200
    actors = {
        "Grace.Hopper": {"kind": "user", "id": "Grace.Hopper"},  # HTTP Basic
        "grace.hopper": {"kind": "user", "id": "grace.hopper"},  # casefolded
        "grace@example.org": {"kind": "user", "name": "grace@example.org"},  # an IdP
        "gh@navy.example": {"kind": "bearer", "name": "gh@navy.example", "tok_d": b"\x01" * 32},
        "admin-zed": {"kind": "user", "id": "admin-zed"},  # someone else
    }
    for i, actor in enumerate(actors.values()):
        h.post_event(admin_event(f"u-gt-{i}", f"r-gt{i}", actor=actor))
    aud = h.auditor()
    for handle in actors:
        assert len(aud.search(actor=handle).results) == 1, handle

    erase(h, GRACE)

    for i, handle in enumerate(actors):
        (got,) = aud.search(rid=f"u-gt-{i}").results
        if handle == "admin-zed":
            assert got.who == actors[handle] and not got.actor_unlinked
            assert len(aud.search(actor=handle).results) == 1
        else:
            assert got.actor_unlinked and got.who is None, handle
            assert search_raw(h, actor=handle)["results"] == [], handle
            assert handle not in json.dumps(search_raw(h, rid=f"u-gt-{i}"))


def test_a_resource_whose_id_is_the_user_name_is_not_erased_with_them(harness: Harness) -> None:
    """A subject with events of its own is another resource, even when its id is the erased
    User's user name: its events and keys stay (and so do the actor events keyed by it)."""
    h = harness
    h.post_event(create_event(GRACE, "r-gc", grace_mods("grace", ["grace@example.org"])))
    assert h.post_event(create_event("grace", "r-other", grace_mods("x", []))).status_code == 200
    h.post_event(admin_event("u-ot-1", "r-ot1", actor={"kind": "user", "id": "grace"}))
    erase(h, GRACE)
    aud = h.auditor()
    (own,) = aud.search(rid="grace").results
    assert own.event is not None
    (acted,) = aud.search(actor="grace").results
    assert acted.who == {"kind": "user", "id": "grace"}


def test_an_actor_the_log_cannot_link_is_erased_by_its_handle(harness: Harness) -> None:
    """An actor keyed by a text no User's state holds (an IdP object id, a user name the
    User no longer has): the officers erase (User, that handle) directly."""
    h = harness
    h.post_event(create_event(GRACE, "r-gc", grace_mods("grace2", [])))
    h.post_event(admin_event("u-oid-1", "r-o1", actor={"kind": "user", "id": "oid-8c1f"}))
    erase(h, GRACE)
    assert len(h.auditor().search(actor="oid-8c1f").results) == 1
    erase(h, "oid-8c1f")
    (got,) = h.auditor().search(rid="u-oid-1").results
    assert got.actor_unlinked
    assert search_raw(h, actor="oid-8c1f")["results"] == []
