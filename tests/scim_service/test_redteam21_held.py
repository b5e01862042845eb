"""Red team 21: batches that mix the retries of events stored before the ``mods[].form``
rule (held: answered as duplicates), new events with a misplaced form (refused), the same
event twice in one batch and good events. Every event of an accepted batch gets what it
would get sent alone, in order (its index, leaf hash, duplicate flag); a refused batch
leaves every record of the store as it was (the aux records scanned before and after), on
each backend."""

from __future__ import annotations

import json
from typing import Any

import pytest

import tlog.scim.service
from client.scim import event_to_json

from .actors import erase
from .conftest import Harness, user_event
from .forms import form_event, misplace_form, user_misplaced_form

BATCH = "/v1/scim/events/batch"


def _aux(h: Harness) -> dict[bytes, bytes]:
    """Every record the store holds beside the tree (the SCIM records)."""
    with h.log.storage.read() as rv:
        return {bytes(k): bytes(v) for k, v in rv.aux_range(b"")}


def _batch(h: Harness, events: list[dict[str, Any]]) -> Any:
    body = {"events": [json.loads(event_to_json(ev)) for ev in events]}
    return h.post_raw(json.dumps(body).encode(), "application/json", path=BATCH)


def _stored_before_the_rule(
    h: Harness, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    with monkeypatch.context() as m:  # the log as it was before the rule
        m.setattr(tlog.scim.service, "check_forms", lambda ev: None)
        for ev in events:
            assert h.post_event(ev).status_code == 200


def _answer(r: Any) -> tuple[int, str, bool]:
    return r["index"], r["leaf_hash"], r["duplicate"]


def test_redteam21_a_mixed_batch_answers_each_event_as_alone(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    old1 = misplace_form(form_event("rt21-old1"), "on the add")
    old2 = misplace_form(form_event("rt21-old2"), "with an old side")
    _stored_before_the_rule(h, monkeypatch, [old1, old2])
    good1, good2 = form_event("rt21-good1"), form_event("rt21-good2")
    order = [old1, good1, old1, good1, old2, good2, old2]
    r = _batch(h, order)
    assert r.status_code == 200, r.text
    got = [_answer(x) for x in r.json()["results"]]
    assert [d for _, _, d in got] == [True, False, True, True, True, False, True]
    # each alone afterwards: the same place, a duplicate
    for ev, (index, leaf, _) in zip(order, got, strict=True):
        again = h.post_event(ev).json()
        assert (again["index"], again["leaf_hash"], again["duplicate"]) == (index, leaf, True)
    assert got[1][:2] == got[3][:2] and got[0][:2] == got[2][:2] and got[4][:2] == got[6][:2]
    assert h.log.latest.size == 4


@pytest.mark.parametrize("where", [0, 1, 3, 5])
def test_redteam21_a_fresh_misplaced_form_anywhere_refuses_all_and_writes_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, where: int
) -> None:
    h = harness
    old = misplace_form(form_event("rt21-old"), "on the add")
    _stored_before_the_rule(h, monkeypatch, [old])
    fresh = misplace_form(form_event("rt21-fresh"), "on another attribute")
    new_a = form_event("rt21-new-a")
    rest = [old, new_a, old, form_event("rt21-new-b"), new_a]
    before, size = _aux(h), h.log.latest.size
    r = _batch(h, [*rest[:where], fresh, *rest[where:]])
    assert r.status_code == 400 and "form" in r.json()["error"], r.text
    assert _aux(h) == before
    assert h.log.latest.size == size
    # the good ones of it go in afterwards, as new events (nothing of them was kept)
    r = _batch(h, rest)
    assert r.status_code == 200, r.text
    assert [x["duplicate"] for x in r.json()["results"]] == [True, False, True, False, True]


def test_redteam21_a_held_event_twice_with_other_bytes_is_a_conflict_not_a_duplicate(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry's eid must carry the stored event's bytes: the same eid with another misplaced
    form is refused (nothing answered as the stored one's duplicate)."""
    h = harness
    old = misplace_form(form_event("rt21-old"), "on the add")
    _stored_before_the_rule(h, monkeypatch, [old])
    other = dict(misplace_form(form_event("rt21-old"), "with an old side"), eid=old["eid"])
    before = _aux(h)
    for events in ([other], [old, other], [other, old]):
        r = _batch(h, events)
        assert r.status_code in (400, 409), r.text
        assert _aux(h) == before


def test_redteam21_a_held_retry_after_its_subject_was_erased_is_answered_as_any_retry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held event (stored before the rule) whose subject was erased since: its retry gets
    the duplicate answer without a nonce (the body is gone), as a retry of an event the rule
    never held does; nothing is written by it, nor by a fresh misplaced event of another
    subject beside it (refused)."""
    h = harness
    held = user_misplaced_form("u-gone", "rt21-held")
    plain = user_event("u-gone", req="rt21-plain")
    _stored_before_the_rule(h, monkeypatch, [held, plain])
    first = h.post_event(held).json()
    erase(h, "u-gone")
    before = _aux(h)
    for ev in (held, plain):
        again = h.post_event(ev)
        assert again.status_code == 200, again.text
        got = again.json()
        assert got["duplicate"] is True and "nonce" not in got, got
    r = _batch(h, [held, plain, held])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["index"] == results[2]["index"] == first["index"]
    assert all(x["duplicate"] and "nonce" not in x for x in results), results
    assert _aux(h) == before
    fresh = user_misplaced_form("u-other", "rt21-fresh")
    r = _batch(h, [held, fresh])
    assert r.status_code == 400 and "form" in r.json()["error"], r.text
    assert _aux(h) == before
