"""Red team 19: ``mods[].form`` where it must not be, sent to the log's routes (the single
event as JSON and as CBOR, and the batch): a clear 400 naming the field, never a 5xx, and
nothing stored; the event as the adapter made it is accepted; and one a log stored before
the rule is still served and verified (the rule is the intake's, not the schema's).
tests/scim/test_redteam19_form for the parsers themselves."""

from __future__ import annotations

import json

import pytest

import tlog.scim.service
from client.scim import event_from_json, event_to_json
from client.scim.cbor import dumps_det

from .actors import search_raw
from .conftest import Harness
from .forms import form_event, misplace_form

HOW = ["on the add", "with an old side", "on another attribute", "on a remove"]


@pytest.mark.parametrize("how", HOW)
def test_a_misplaced_form_is_a_400_on_every_route_and_nothing_is_stored(
    harness: Harness, how: str
) -> None:
    h = harness
    ev = misplace_form(form_event(f"rt19-{HOW.index(how)}"), how)
    raw = dict(ev, req={**ev["req"], "dig": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})
    raw["refs"] = [{**r, "pid": "cGlkcGlkcGlkcGlkcGlkcA=="} for r in ev["refs"]]
    sent = [
        h.post_raw(json.dumps(raw).encode(), "application/json"),
        h.post_raw(dumps_det(ev), "application/cbor"),
        h.post_raw(
            json.dumps(
                {"events": [json.loads(event_to_json(form_event("rt19-ok"))), raw]}
            ).encode(),
            "application/json",
            path="/v1/scim/events/batch",
        ),
    ]
    for r in sent:
        assert r.status_code == 400, (how, r.status_code, r.text)
        assert "form" in r.json()["error"], r.text
    assert h.log.latest.size == 0
    assert search_raw(h, req=ev["corr"]["req"])["results"] == []


def test_the_form_the_adapter_makes_is_stored(harness: Harness) -> None:
    """Holds: guards that the rule refuses nothing the adapter writes, on the routes."""
    ev = form_event("rt19-good")
    assert harness.post_event(ev).status_code == 200
    assert harness.post_event(ev, cbor=True).json()["duplicate"]
    (got,) = search_raw(harness, req="rt19-good")["results"]
    assert got["event"]["mods"][0]["form"] == "path"


def test_a_misplaced_form_stored_before_the_rule_is_still_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holds by design: the schema would have made such a stored event unreadable (the
    log's envelopes, its search answers and an auditor's client validate it again)."""
    ev = misplace_form(form_event("rt19-old"), "on the add")
    with monkeypatch.context() as m:  # the log as it was before the rule
        m.setattr(tlog.scim.service, "check_forms", lambda ev: None)
        assert harness.post_event(ev).status_code == 200
    (got,) = search_raw(harness, req="rt19-old")["results"]
    assert got["event"]["mods"][1]["form"] == "path"
    assert event_from_json(json.dumps(got["event"]))["mods"][1]["form"] == "path"


def test_a_retry_of_an_event_stored_before_the_rule_is_its_duplicate(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faith20: an event the log stored before the rule, sent again with the same bytes (a
    relay's retry), gets the duplicate answer (its index, leaf hash, nonce) on the single
    route (JSON and CBOR) and in a batch; before, a 400, as if it were new. A new event
    with the same misplaced form, alone or beside a retry, is still refused."""
    h = harness
    ev = misplace_form(form_event("f20-old"), "on the add")
    with monkeypatch.context() as m:  # the log as it was before the rule
        m.setattr(tlog.scim.service, "check_forms", lambda ev: None)
        first = h.post_event(ev)
    assert first.status_code == 200, first.text
    size = h.log.latest.size
    for cbor in (False, True):
        again = h.post_event(ev, cbor=cbor)
        assert again.status_code == 200, (cbor, again.text)
        got = again.json()
        assert got["duplicate"] is True
        for key in ("index", "leaf_hash", "nonce"):
            assert got[key] == first.json()[key], key
    good = form_event("f20-new")
    batch = {"events": [json.loads(event_to_json(good)), json.loads(event_to_json(ev))]}
    r = h.post_raw(json.dumps(batch).encode(), "application/json", path="/v1/scim/events/batch")
    assert r.status_code == 200, r.text
    new, old = r.json()["results"]
    assert not new["duplicate"] and old["duplicate"]
    assert old["index"] == first.json()["index"]
    assert old["leaf_hash"] == first.json()["leaf_hash"]
    assert h.log.latest.size == size + 1  # only the new event
    fresh = misplace_form(form_event("f20-fresh"), "on the add")
    for body in (
        {"events": [json.loads(event_to_json(ev)), json.loads(event_to_json(fresh))]},
        {"events": [json.loads(event_to_json(fresh))]},
    ):
        r = h.post_raw(json.dumps(body).encode(), "application/json", path="/v1/scim/events/batch")
        assert r.status_code == 400 and "form" in r.json()["error"], r.text
    assert h.post_event(fresh).status_code == 400
    assert h.log.latest.size == size + 1
    assert search_raw(h, req="f20-fresh")["results"] == []
