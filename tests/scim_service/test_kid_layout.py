"""A subject's key id starts with the log time it was made at (tlog.scim.keys.new_kid), so
the records keyed by kid of subjects made together sit together in the store."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from client.scim import event_to_json
from tlog.scim import store
from tlog.scim.keys import KID_SIZE, new_kid

from .conftest import Harness, user_event


def _counter() -> Callable[[int], bytes]:
    n = iter(range(1, 1 << 30))
    return lambda k: next(n).to_bytes(k, "big")


def test_new_kid_is_time_then_random() -> None:
    rand = _counter()
    kid = new_kid(0x0102030405AB, rand)
    assert len(kid) == KID_SIZE
    assert kid[:6] == bytes.fromhex("0102030405ab")
    assert kid[6:] == (1).to_bytes(10, "big")  # 10 bytes drawn, nothing else
    # A time beyond 48 bits (a clock gone wild) wraps instead of raising; negative too.
    assert new_kid((1 << 48) + 7, rand)[:6] == (7).to_bytes(6, "big")
    assert new_kid(-1, rand)[:6] == b"\xff" * 6
    # Two kids in one ms differ by their random part.
    assert new_kid(5, rand) != new_kid(5, rand)


def test_every_path_makes_time_ordered_kids(harness: Harness) -> None:
    h = harness
    # The batch fast path (new subjects created by a batch), the general path (single
    # events), and the pseudonym endpoint (a subject made before its first event).
    evs = [user_event(rid=f"u-kid-{i}", req=f"req-k{i}", op="create") for i in range(4)]
    r = h.post_raw(
        json.dumps({"events": [json.loads(event_to_json(e)) for e in evs]}).encode(),
        "application/json",
        path="/v1/scim/events/batch",
    )
    assert r.status_code == 200, r.text
    for i in range(3):
        assert h.post_event(user_event(rid=f"u-one-{i}", req=f"req-o{i}")).status_code == 200
    r = h.client.post(
        "/v1/scim/pseudonyms",
        headers=h.h("sub1"),
        json={"refs": [{"rt": "User", "id": "u-later"}]},
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["refs"][0]["pid"])

    with h.service.storage.read() as rv:
        envelopes = [store.decode_envelope(v) for _, v in rv.aux_range(b"scim/E")]
        subjects = [store.decode_record(v, "subject")["kid"] for _, v in rv.aux_range(b"scim/S")]
    first_ts: dict[bytes, int] = {}
    for env in envelopes:
        assert isinstance(env, store.Envelope)
        first_ts[env.kid] = min(env.ts, first_ts.get(env.kid, env.ts))
    # and one made by the pseudonym call, and the actor's (its keys seal the actor)
    assert len(first_ts) == 7 and len(subjects) == 9
    for kid, ts in first_ts.items():
        # Made by its first event's staging: the kid carries that event's log time.
        assert int.from_bytes(kid[:6], "big") == ts
    actor, later = sorted(set(subjects) - set(first_ts))
    # The actor's subject was made by the first staging that named it (the batch's).
    assert int.from_bytes(actor[:6], "big") == min(first_ts.values())
    # The pseudonym call came last, on a clock that ticks a second a reading.
    assert int.from_bytes(later[:6], "big") > max(first_ts.values())
