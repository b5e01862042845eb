"""A retry is a duplicate only when it is the same submission, after the actor's erasure
too (docs/design.md, "Actors"). Once the actor's keys are gone the stored ``sd`` no longer
opens; before, the log then compared the retry with the stored actor put in its place, so a
retry with *another* actor and an identical event was taken as a duplicate. The envelope
now keeps a digest of the actor as sent that only the log can compute
(``TenantKeys.actor_retry_digest``): the same actor is a duplicate, any other a 409, as an
eid reused with another body always was."""

from __future__ import annotations

import json
from typing import Any

import pytest

import tlog.scim.service
from client.scim import event_to_json
from tlog.scim.keys import envelope_plaintext

from .actors import ADMIN, admin_event, erase
from .conftest import Harness

OTHERS: list[dict[str, Any]] = [
    {"kind": "user", "id": "admin-live-2"},  # a live actor the log knows
    {"kind": "user", "id": "admin-never-seen"},  # an actor the log never saw
    {"kind": "user", "id": ADMIN, "name": "Another Name"},  # the same id, another actor map
    {"kind": "bearer", "id": ADMIN},  # another kind
    {"kind": "user"},  # an actor that names no one
]


def test_after_the_actor_s_erasure_only_the_same_actor_is_a_duplicate(harness: Harness) -> None:
    h = harness
    h.post_event(admin_event("u-live", "r-live", actor=OTHERS[0]))
    ev = admin_event("u-rt-1", "r-rt1")
    d = h.post_event(ev).json()
    erase(h, ADMIN)
    for other in OTHERS:
        r = h.post_event({**ev, "actor": other})
        assert r.status_code == 409, (other, r.text)
        assert "already logged with a different event" in r.text
    same = h.post_event(ev).json()
    assert same["duplicate"] and same["leaf"] == d["leaf"] and same["nonce"] == d["nonce"]
    assert same["actor"] == {"pid": d["actor"]["pid"], "sd": d["actor"]["sd"]}
    # In a batch as well.
    body = {"events": [json.loads(event_to_json({**ev, "actor": OTHERS[1]}))]}
    r = h.post_raw(json.dumps(body).encode(), "application/json", path="/v1/scim/events/batch")
    assert r.status_code == 409, r.text


def test_an_envelope_from_before_the_retry_digest(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events stored before the digest was kept: the kind is compared, and a retry actor the
    log holds keys of must have the stored pid; an actor it has no keys of cannot be told
    from the erased one (taken as the same)."""
    h = harness
    h.post_event(admin_event("u-live", "r-live", actor=OTHERS[0]))
    with monkeypatch.context() as m:
        m.setattr(
            tlog.scim.service,
            "envelope_plaintext",
            lambda n, b, e=None, a=None, r=None: envelope_plaintext(n, b, e, a),
        )
        ev = admin_event("u-rt-2", "r-rt2")
        d = h.post_event(ev).json()
    erase(h, ADMIN)
    for other in (OTHERS[0], OTHERS[3], OTHERS[4]):
        assert h.post_event({**ev, "actor": other}).status_code == 409, other
    assert h.post_event({**ev, "actor": OTHERS[1]}).json()["duplicate"]
    same = h.post_event(ev).json()
    assert same["duplicate"] and same["leaf"] == d["leaf"]


def test_envelope_plaintext_with_the_retry_digest_is_the_deterministic_encoding() -> None:
    """The envelope written by concatenation equals dumps_det of its map, with the retry
    digest "r" (last key) and without, with and without an effect; "r" alone is refused."""
    from client.scim.cbor import dumps_det

    ev = admin_event("u-env", "r-env")
    b, n, a, r = dumps_det(ev), b"\x01" * 32, b"\x02" * 80, b"\x03" * 16
    for effect in (None, {"basis": "event", "acts": []}):
        e = None if effect is None else dumps_det(effect)
        want: dict[str, Any] = {"a": a, "b": ev, "n": n, "r": r}
        if effect is not None:
            want["e"] = effect
        assert envelope_plaintext(n, b, e, a, r) == dumps_det(want)
        del want["r"]
        assert envelope_plaintext(n, b, e, a) == dumps_det(want)
    with pytest.raises(ValueError):
        envelope_plaintext(n, b, None, None, r)
    with pytest.raises(ValueError):
        envelope_plaintext(n, b, None, a, b"\x03" * 15)
