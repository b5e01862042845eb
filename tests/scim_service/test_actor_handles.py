"""Actors without an ``id`` are pseudonymised too (docs/design.md, "Actors"): an actor
that names or links a person by any member (``name``, ``client_id``, the token digest
``tok_d``, the certificate thumbprint ``x5t_s256``) is stored as ``{kind, pid, sd}``, keyed
by the most specific of them (:func:`client.scim.event.actor_handle`), all of it sealed
under the keys of the subject (tenant, User, that handle). ``actor=`` with that value finds
its events; erasing (User, that handle) unlinks them. Before, such actors were stored as
sent (the adapters' default bearer actor, ``{kind, tok_d}``, among them)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from client.adapters.receipts import check_commitments
from client.scim import event_to_json
from client.scim.cbor import dumps_det
from client.scim.event import actor_handle
from client.scim.leaf import verify_commitment

from .actors import admin_event, commit_of, erase, search_raw
from .conftest import T1, Harness

TOK = b"\x5a" * 32
X5T = b"\x3c" * 32

# (actor as sent, the value actor= finds it by)
HANDLED = [
    ({"kind": "bearer", "tok_d": TOK}, base64.b64encode(TOK).decode()),
    ({"kind": "mtls", "x5t_s256": X5T, "tid": "t-9"}, base64.b64encode(X5T).decode()),
    ({"kind": "oauth_client", "client_id": "c-prov-77", "scope": ["scim"]}, "c-prov-77"),
    (
        {"kind": "user", "name": "erin.admin@example.org", "client_id": "portal", "tok_d": TOK},
        "erin.admin@example.org",
    ),
]


def _members(actor: dict[str, Any]) -> list[bytes]:
    """What of ``actor`` names or links someone, as it could appear in bytes anywhere."""
    out: list[bytes] = []
    for k, v in actor.items():
        if k in ("kind", "scope"):
            continue
        if type(v) is bytes:
            out += [v, base64.b64encode(v)]
        else:
            out.append(v.encode())
    return out


def _body(h: Harness, lh: bytes) -> bytes:
    """The event's envelope as the log decrypts it with the event subject's keys."""
    svc = h.service

    def run(tx: Any) -> bytes:
        tk = svc.keys.tenant(tx, T1)
        assert tk is not None
        got = svc.keys.open_envelope(tx, tk, lh)
        assert got is not None
        return dumps_det(got[0])

    return svc.read(run)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("actor", "handle"), HANDLED, ids=["tok_d", "x5t", "client_id", "name"])
def test_an_actor_without_an_id_is_a_pseudonym(
    harness: Harness, actor: dict[str, Any], handle: str
) -> None:
    h = harness
    assert actor_handle(actor) == handle
    ev = admin_event("u-hd-1", "r-hd1", actor=actor)
    d = h.post_event(ev).json()
    assert set(d["actor"]) == {"pid", "sd", "nonce"}
    # The adapter's check of the answer holds (its sd opens to the actor it sent).
    from client.adapters.outbox import Receipt

    c = commit_of(d)
    rec = Receipt(eid=ev["eid"], index=d["index"], leaf_hash=d["leaf_hash"], tree_size=1,
                  checkpoint=d["checkpoint"], duplicate=False)  # fmt: skip
    assert check_commitments([rec], {ev["eid"]: (c["leaf"], c["nonce"], c["actor"])},
                             {ev["eid"]: event_to_json(ev)}) == 0  # fmt: skip
    aud = h.auditor()
    (got,) = aud.search(actor=handle).results
    assert got.who == actor and not got.actor_unlinked
    assert set(got.event["actor"]) == {"kind", "pid", "sd"}  # type: ignore[index]
    # What the event keeps with it names no one: only the kind is in the stored event.
    body = _body(h, got.leaf_hash)
    for m in _members(actor):
        assert m not in body, m

    # An officer erases the actor as (User, handle): unlinked, actor= finds nothing.
    erase(h, handle)
    (after,) = aud.search(rid="u-hd-1").results
    assert after.actor_unlinked and after.who is None
    verify_commitment(after.leaf, after.event, after.nonce)  # type: ignore[arg-type]
    raw = search_raw(h, rid="u-hd-1")
    assert raw["results"][0]["actor"] == {"unlinked": True}
    text = json.dumps(raw).encode()
    for m in _members(actor):
        assert m not in text, m
    assert search_raw(h, actor=handle)["results"] == []


def test_the_most_specific_member_keys_the_actor(harness: Harness) -> None:
    """``id`` before ``name`` before ``client_id`` before ``tok_d``: one person's events
    sent with and without a token digest, or through another app, are one pseudonym."""
    h = harness
    a1 = {"kind": "user", "name": "frank@example.org", "tok_d": TOK}
    a2 = {"kind": "user", "name": "frank@example.org", "client_id": "other-app"}
    p1 = h.post_event(admin_event("u-ms-1", "r-ms1", actor=a1)).json()["actor"]["pid"]
    p2 = h.post_event(admin_event("u-ms-2", "r-ms2", actor=a2)).json()["actor"]["pid"]
    assert p1 == p2
    found = h.auditor().search(actor="frank@example.org").results
    assert [e.who for e in found] == [a1, a2]
    # Not found by a member it is not keyed by.
    assert h.auditor().search(actor="other-app").results == []
    assert h.auditor().search(actor=base64.b64encode(TOK).decode()).results == []


def test_an_actor_that_names_no_one_stays_as_sent(harness: Harness) -> None:
    h = harness
    for actor in ({"kind": "anonymous"}, {"kind": "bearer", "iss": "https://idp.example/"}):
        ev = admin_event(f"u-no-{actor['kind']}", f"r-no-{actor['kind']}", actor=actor)
        d = h.post_event(ev).json()
        assert "actor" not in d
        (got,) = h.auditor().search(rid=ev["rid"]).results
        assert got.event == ev and got.who == actor
