"""review11: a re-sealed event (``tlog reseal-actors``) whose actor has been erased reads as
erased in a search (its commitment ``c`` covers the actor as sent: nothing of it can be
verified any more); its receipt says the same (``/v1/scim/receipts`` answered
``"erased": false`` for it, the search ``"erased": true``). A pseudonymous event whose actor
is erased stays readable (it only names no one): its receipt stays not erased."""

from __future__ import annotations

import pytest

from tlog.scim.reseal import reseal_actors
from tlog.scim.service import ScimService

from .actors import ADMIN, admin_event, erase, search_raw
from .conftest import Harness


def _receipt(h: Harness, eid: str, who: str) -> dict[str, object]:
    r = h.client.get(f"/v1/scim/receipts?eid={eid}", headers=h.h(who))
    assert r.status_code == 200, r.text
    (rc,) = r.json()["receipts"]
    return rc  # type: ignore[no-any-return]


def test_a_resealed_event_of_an_erased_actor_is_erased_in_its_receipt(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    old = admin_event("u-r11-1", "r-r11-1")
    with monkeypatch.context() as m:  # stored as the code before actor9 did (actor in clear)
        m.setattr(ScimService, "_actor_keys", lambda *a, **k: None)
        assert h.post_event(old).status_code in (200, 201)
    new = admin_event("u-r11-2", "r-r11-2")
    assert h.post_event(new).status_code in (200, 201)
    assert reseal_actors(h.service).resealed == 1
    for ev in (old, new):
        for who in ("sub1", "aud1"):
            assert _receipt(h, ev["eid"], who)["erased"] is False
    erase(h, ADMIN)
    (res,) = search_raw(h, rid="u-r11-1")["results"]
    assert res["erased"] is True
    for who in ("sub1", "aud1"):
        assert _receipt(h, old["eid"], who)["erased"] is True
        assert _receipt(h, new["eid"], who)["erased"] is False  # readable, names no one
    by_req = h.client.get("/v1/scim/receipts?req=r-r11-1", headers=h.h("aud1")).json()
    assert [r["erased"] for r in by_req["receipts"]] == [True]
    (live,) = search_raw(h, rid="u-r11-2")["results"]
    assert "event" in live
