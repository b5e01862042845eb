"""The relay's commitment check, made cheaper (proxy11), gives the verdicts it gave before.

:func:`client.adapters.receipts._as_stored` builds the det-CBOR of the event as the log stored
it by replacing the sent actor's bytes in the sent event's encoding (as the log does), instead
of encoding the whole stored event again (:func:`_as_stored_reference`, the previous path);
:func:`client.scim.event.hmac_sha256` (behind the commitment and ``sd``) computes HMAC-SHA256
from two hash objects instead of ``hmac.digest``.
Each is held equal to what it replaced, errors included, on random events, actors, pseudonyms
and nonces (hypothesis); the splice must also fall back when the actor's bytes occur twice.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client.adapters import receipts
from client.adapters.receipts import (
    _as_stored,
    _as_stored_reference,
    check_commitments,
)
from client.formats.merkle import VerificationError
from client.scim import event_to_json
from client.scim.cbor import EventFormatError
from client.scim.event import (
    ACTOR_KINDS,
    actor_handle,
    actor_seal_digest,
    hmac_sha256,
    validate_event,
)

from ..scim.helpers import digests, events, ident
from .receipt_tree import honest_answer

_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.binary(max_size=100), st.binary(max_size=3000))
def testhmac_sha256_is_hmac_digest(key: bytes, msg: bytes) -> None:
    assert hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256")


def testhmac_sha256_fails_when_wrong() -> None:
    # The test above catches a pad or a block size off by one (keys of 63, 64, 65 bytes).
    for n in (0, 1, 32, 63, 64, 65, 99):
        key = bytes(range(n))
        assert hmac_sha256(key, b"m") == hmac.new(key, b"m", hashlib.sha256).digest()
        assert hmac_sha256(key, b"m") != hashlib.sha256(key + b"m").digest()


_actors = st.fixed_dictionaries(
    {"kind": st.sampled_from(ACTOR_KINDS)},
    optional={
        "id": ident,
        "name": ident,
        "client_id": ident,
        "tid": ident,
        "scope": st.lists(ident, max_size=3),
        "tok_d": digests,
        "x5t_s256": digests,
    },
)


@st.composite
def _sent(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An event's JSON form as the outbox holds it, and the event."""
    ev = draw(events())
    ev["actor"] = draw(_actors)
    if draw(st.booleans()):  # the actor's bytes again elsewhere: the splice must not apply
        text_only = {k: v for k, v in ev["actor"].items() if type(v) is not bytes}
        ev["x"] = {"actor": text_only, "n": draw(st.integers(0, 3))}
        if draw(st.booleans()):
            ev["actor"] = text_only
    try:
        valid = validate_event(ev)
    except EventFormatError:
        assume(False)  # the schema refuses it: no outbox record
    return event_to_json(valid), valid


_pids = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))
_sds = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
_nonces = st.one_of(st.none(), st.binary(min_size=32, max_size=32), st.binary(max_size=40))


def _verdict(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (VerificationError, EventFormatError, ValueError) as exc:
        return (type(exc), str(exc))


@_SETTINGS
@given(_sent(), _pids, _sds, _nonces, st.integers(0, 3))
def test_as_stored_equals_the_reference(
    sent: tuple[str, dict[str, Any]], pid: bytes, sd: bytes, an: bytes | None, how: int
) -> None:
    body, ev = sent
    if how == 0 and an is not None and len(an) == 32:
        sd = actor_seal_digest(an, ev["actor"])  # the log's honest sd
    stored: Any = None if how == 3 else (pid, sd, an)
    assert _verdict(_as_stored, body, stored) == _verdict(_as_stored_reference, body, stored)


def _one(ev: dict[str, Any], pid: bytes, an: bytes, nonce: bytes) -> tuple[Any, ...]:
    r, commit = honest_answer(ev, nonce, (pid, an))
    return event_to_json(ev), r, commit


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sent(), st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32))
def test_check_commitments_passes_the_honest_answer_and_only_it(
    sent: tuple[str, dict[str, Any]], pid: bytes, an: bytes
) -> None:
    _, ev = sent
    assume(actor_handle(ev["actor"]) is not None)  # the log pseudonymises only these
    nonce = hashlib.sha256(an).digest()
    body, r, commit = _one(ev, pid, an, nonce)
    assert check_commitments([r], {r.eid: commit}, {r.eid: body}) == 0
    leaf, _, (_, sd, _) = commit
    for bad in [
        (leaf, nonce, (pid, sd, bytes(b ^ 1 for b in an))),  # another actor nonce
        (leaf, nonce, (bytes(b ^ 1 for b in pid), sd, an)),  # another pid
        (leaf, bytes(b ^ 1 for b in nonce), (pid, sd, an)),  # another commitment nonce
        (leaf, nonce, None),  # the actor stored as sent
    ]:
        with pytest.raises(VerificationError):
            check_commitments([r], {r.eid: bad}, {r.eid: body})
    with pytest.raises(EventFormatError):
        check_commitments([r], {r.eid: (leaf, nonce[:31], (pid, sd, an))}, {r.eid: body})


def test_the_splice_is_used_and_a_wrong_splice_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common event takes the splice (not the re-encoding), and the equality test above
    fails if the splice writes anything else (here: the actor as sent, unreplaced)."""
    ev = validate_event(
        {
            "v": 1,
            "eid": "0190a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b",
            "ts": 1_700_000_000_000,
            "tenant": "t1",
            "sp": {"id": "sp"},
            "op": "patch",
            "rt": "User",
            "rid": "u1",
            "actor": {"kind": "bearer", "tok_d": b"\x07" * 32},
            "corr": {"req": "r1"},
            "req": {"m": "PATCH", "p": "/Users/u1", "dig": b"\x00" * 32, "len": 3},
            "res": {"st": 204},
            "outcome": "success",
            "acts": [{"a": "user.update", "ocsf": [3001, 3]}],
        }
    )
    body = event_to_json(ev)
    stored = (b"\x02" * 16, b"\x03" * 32, None)
    calls: list[object] = []
    real = receipts.dumps_det
    monkeypatch.setattr(receipts, "dumps_det", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert _as_stored(body, stored) == _as_stored_reference(body, stored)
    assert len(calls) == 1  # the reference's; the splice encoded nothing
    monkeypatch.setattr(receipts, "pseudonymous_actor_cbor", lambda *a: b"\xa0")
    assert _as_stored(body, stored) != _as_stored_reference(body, stored)
