"""faith31: an erasure request by ``userName`` reaches the events keyed by that name
whatever its case and Unicode normal form (SCIM's ``userName`` is not case-exact, RFC 7643
§4.1.1; ``José`` precomposed, NFC, and ``Jose`` with a combining accent, NFD, are one name
to a person). The subject of an event without a resource id (a failed create) is keyed by
the name casefolded and in NFC (``user_name_key``); before, only casefolded, so a request by
the other normal form reached nothing. A store keyed before (a name sent in NFD, keyed
casefolded only) is still reached by that form.

Both store backends (the ``database`` fixture)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tlog.scim import service as service_mod

from .conftest import T1, Harness, open_harness, user_event

NFC = "Jos\u00e9.Garc\u00eda@example.org"
NFD = "Jos" + "e\u0301" + ".Garc" + "i\u0301" + "a@example.org"


def _failed_create(h: Harness, name: str, req: str) -> dict[str, Any]:
    failed = user_event(None, xid=None, op="create", outcome="failure", req=req)
    failed["mods"] = [{"attr": "userName", "new": json.dumps(name)}]
    failed["res"] = {"st": 409}
    assert h.post_event(failed).status_code == 200
    return failed


def hold_id(h: Harness) -> str:
    (held,) = h.client.get("/v1/scim/holds", headers=h.h("po_a")).json()["holds"]
    return str(held["id"])


def _erase(h: Harness, name: str) -> None:
    body = {"tenant": T1, "rt": "User", "userName": name, "reason": "dsar"}
    r = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a"))
    assert r.status_code == 201, r.text
    r = h.client.post(f"/v1/scim/erasures/{r.json()['id']}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done", r.text


@pytest.mark.parametrize(("stored", "asked"), [(NFC, NFD.upper()), (NFD, NFC.lower())])
def test_an_erasure_by_user_name_reaches_it_in_any_case_and_normal_form(
    tmp_path: Path, database: str | None, stored: str, asked: str
) -> None:
    with open_harness(tmp_path, database=database) as h:
        failed = _failed_create(h, stored, "req-f31")
        a = h.auditor()
        assert len(a.search(req="req-f31").results) == 1
        _erase(h, asked)
        # (before: the other normal form's subject had no keys: nothing erased)
        assert a.search(req="req-f31").results == []
        (rc,) = a.receipts(eid=failed["eid"])
        assert rc.erased


def test_a_name_keyed_before_faith31_is_still_reached(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_harness(tmp_path, database=database) as h:
        # stored as a version before faith31 keyed it: casefolded only (NFD stays NFD)
        with monkeypatch.context() as m:
            m.setattr(service_mod, "user_name_key", str.casefold)
            failed = _failed_create(h, NFD, "req-f31-old")
        a = h.auditor()
        # a hold by that form suspends its erasure (the same subject as the request's)
        hold = {"tenant": T1, "rt": "User", "userName": NFD, "reason": "litigation"}
        r = h.client.post("/v1/scim/holds", json=hold, headers=h.h("po_a"))
        assert r.status_code == 201, r.text
        body = {"tenant": T1, "rt": "User", "userName": NFD, "reason": "dsar"}
        req = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a")).json()["id"]
        r = h.client.post(f"/v1/scim/erasures/{req}/approve", headers=h.h("po_b"))
        assert r.status_code == 409 and "hold" in r.text, r.text
        released = h.client.post(f"/v1/scim/holds/{hold_id(h)}/release", headers=h.h("po_a"))
        assert released.status_code == 200, released.text
        r = h.client.post(f"/v1/scim/erasures/{req}/approve", headers=h.h("po_b"))
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
        assert a.search(req="req-f31-old").results == []
        (rc,) = a.receipts(eid=failed["eid"])
        assert rc.erased


@pytest.mark.parametrize("sent_after", [NFD, NFC], ids=["after-nfd", "after-nfc"])
@pytest.mark.parametrize("asked", [NFD, NFD.upper(), NFC])
def test_a_name_keyed_before_faith31_stays_one_subject_after_the_upgrade(
    tmp_path: Path,
    database: str | None,
    monkeypatch: pytest.MonkeyPatch,
    asked: str,
    sent_after: str,
) -> None:
    """A name keyed before faith31 (NFD, casefolded only) that gets events after the
    upgrade: they are sealed under the same subject's keys, so one erasure reaches the
    events from before and after, whichever form the later events and the request use.
    (Lead: when ingestion keyed them by the new form, the name became two subjects and the
    erasure reached only the new one: the old event stayed readable; review 40b: so it did
    still when the later event came in NFC.)"""
    with open_harness(tmp_path, database=database) as h:
        with monkeypatch.context() as m:
            m.setattr(service_mod, "user_name_key", str.casefold)
            before = _failed_create(h, NFD, "req-f31-before")
        after = _failed_create(h, sent_after, "req-f31-after")
        a = h.auditor()
        assert len(a.search(req="req-f31-before").results) == 1
        assert len(a.search(req="req-f31-after").results) == 1
        _erase(h, asked)
        for req, ev in (("req-f31-before", before), ("req-f31-after", after)):
            assert a.search(req=req).results == [], req
            (rc,) = a.receipts(eid=ev["eid"])
            assert rc.erased, req
