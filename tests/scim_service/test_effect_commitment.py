"""Issue 9 part 1: the derived effect is in the leaf commitment, verified like the event.

The log derives each successful event's effect (tlog.scim.effects) *before* it makes the
leaf, and the leaf carries ``e`` = HMAC(nonce, "tlog-scim-effect\\0" ‖ det_cbor(effect)) next
to ``c``. An auditor with the nonce checks both; a log that later shows another effect, or
withholds the one it committed to, is caught. Leaves without ``e`` (failures, and leaves
logged before effects were committed) still parse; their effect is reported as unattested.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from client.formats.merkle import VerificationError
from client.scim.cbor import EventFormatError, dumps_det
from client.scim.leaf import (
    effect_commitment,
    make_leaf,
    parse_leaf,
    verify_effect,
)

from .conftest import Harness, user_event

NONCE = bytes(range(32))
EFFECT: dict[str, Any] = {"basis": "state", "acts": [{"a": "user.activate", "ocsf": [3001, 2]}]}


def _raw_results(h: Harness, **params: str) -> list[dict[str, Any]]:
    r = h.client.get("/v1/scim/events", params=params, headers=h.h("aud1"))
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def test_leaf_with_effect_round_trips_and_is_strict() -> None:
    e = effect_commitment(NONCE, EFFECT)
    leaf = make_leaf(1_717_200_000_000, b"t" * 16, b"c" * 32, e)
    assert leaf[:1] == b"\xa5"  # five fields
    parsed = parse_leaf(leaf)
    assert parsed.e == e and parsed.encode() == leaf
    assert (
        dumps_det({"c": b"c" * 32, "e": e, "v": 1, "tn": b"t" * 16, "ts": 1_717_200_000_000})
        == leaf
    )
    assert verify_effect(parsed, EFFECT, NONCE) is True
    with pytest.raises(EventFormatError):
        make_leaf(1, b"t" * 16, b"c" * 32, b"short")
    bad = dumps_det({"c": b"c" * 32, "e": b"x" * 31, "v": 1, "tn": b"t" * 16, "ts": 1})
    with pytest.raises(EventFormatError):
        parse_leaf(bad)
    other = dumps_det({"c": b"c" * 32, "f": b"x" * 32, "v": 1, "tn": b"t" * 16, "ts": 1})
    with pytest.raises(EventFormatError):
        parse_leaf(other)


def test_effect_commitment_is_domain_separated_from_the_event_commitment() -> None:
    from client.scim.leaf import commitment_unchecked

    data = dumps_det(EFFECT)
    assert effect_commitment(NONCE, EFFECT) != commitment_unchecked(NONCE, data)
    assert effect_commitment(NONCE, data) == effect_commitment(NONCE, EFFECT)


def test_verify_effect_outcomes() -> None:
    e = effect_commitment(NONCE, EFFECT)
    with_e = parse_leaf(make_leaf(1, b"t" * 16, b"c" * 32, e))
    without = parse_leaf(make_leaf(1, b"t" * 16, b"c" * 32))
    assert verify_effect(without, None, NONCE) is False
    assert verify_effect(without, EFFECT, NONCE) is False  # unattested (legacy leaf)
    changed = copy.deepcopy(EFFECT)
    changed["acts"][0]["a"] = "user.update"
    with pytest.raises(VerificationError):
        verify_effect(with_e, changed, NONCE)
    with pytest.raises(VerificationError):
        verify_effect(with_e, None, NONCE)  # withheld
    with pytest.raises(VerificationError):
        verify_effect(with_e, EFFECT, bytes(32))  # another nonce


def test_logged_effects_are_committed_and_verified_by_the_auditor(harness: Harness) -> None:
    h = harness
    assert h.post_event(user_event("u-eff", req="r1", active=("true", "false"))).status_code == 200
    assert h.post_event(user_event("u-eff", req="r2", active=("false", "true"))).status_code == 200
    failed = user_event("u-eff", req="r3", outcome="failure")
    assert h.post_event(failed).status_code == 200
    found = sorted(h.auditor().search_all(rid="u-eff"), key=lambda f: f.index)
    assert [f.event["corr"]["req"] for f in found if f.event] == ["r1", "r2", "r3"]
    ok, react, fail = found
    assert ok.effect is not None and ok.leaf.e is not None and ok.effect_attested
    assert react.effect is not None and react.effect_attested
    assert [a["a"] for a in react.effect["acts"]] == ["user.activate"]
    assert fail.effect is None and fail.leaf.e is None and not fail.effect_attested


def test_a_log_that_changes_or_withholds_a_committed_effect_is_caught(harness: Harness) -> None:
    h = harness
    assert h.post_event(user_event("u-lie", req="r1", active=("true", "false"))).status_code == 200
    assert h.post_event(user_event("u-lie", req="r2", active=("false", "true"))).status_code == 200
    results = _raw_results(h, rid="u-lie")
    target = next(r for r in results if r["event"]["corr"]["req"] == "r2")
    auditor = h.auditor()
    auditor._result(copy.deepcopy(target), {})  # the honest answer verifies

    lie = copy.deepcopy(target)  # the reactivation shown as a mere update
    lie["effect"]["acts"] = [{"a": "user.update", "ocsf": [3004, 3]}]
    with pytest.raises(VerificationError, match="effect does not match"):
        auditor._result(lie, {})

    withheld = copy.deepcopy(target)
    del withheld["effect"]
    with pytest.raises(VerificationError, match="did not report"):
        auditor._result(withheld, {})

    # The leaf itself cannot be swapped for one without e: its hash is in the tree.
    stripped = copy.deepcopy(target)
    leaf = parse_leaf(base64.b64decode(target["leaf"]))
    stripped["leaf"] = base64.b64encode(make_leaf(leaf.ts, leaf.tn, leaf.c)).decode()
    with pytest.raises(VerificationError):
        auditor._result(stripped, {})
