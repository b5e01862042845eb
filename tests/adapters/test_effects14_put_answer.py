"""Effects 14: what a PUT left out is judged from the SP's answer, not from an assumption.

Red team 13 named the manager a PUT leaves out removed (RFC 7644 §3.5.1 replace, as
scim2-server does). An SP that treats a PUT as a merge keeps it, and the event claimed a
removal that never happened. The adapter now records the manager of the SP's answer
(``x.result.manager``: its pseudonym, or null for none) and the log judges by it: kept, not
removed; cleared, removed; another, changed. Without it (a 204, an older adapter, an
answer trimmed by ``attributes``) the assumption stands."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401
from tlog.scim.effects import classify

from .differential import ENT, USER, Driver
from .helpers import scim_asgi_app
from .merge_sp import merging_sp
from .recorded import exchange_event, pid_b64
from .rig import make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

GROUP = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "{G_NAME}"}
MANAGED = {
    "schemas": [USER, ENT],
    "userName": "{T_NAME}",
    "active": True,
    ENT: {"manager": {"value": "{P1}"}},
}
PUT_WITHOUT_MANAGER = ("PUT", "T", {"schemas": [USER, ENT], "userName": "{T_NAME}", "active": True})


def _put_events(driver: Driver) -> list[dict[str, Any]]:
    """The PUT's events, as the log holds them (event and effect)."""
    found = driver.rig.harness.auditor().search_all(rid=driver.ids["T"])
    return [
        {"event": f.event, "effect": f.effect}
        for f in found
        if f.event is not None and f.event["op"] == "replace"
    ]


def _put_without_manager(harness: Harness, tmp_path: Path, sp: Any) -> dict[str, Any]:  # noqa: F811
    """A user with a manager, then a PUT that leaves the manager out, through the audit
    middleware in front of ``sp``: the model-free oracle (the SP's resource read before and
    after) must find nothing the effect gets wrong. The PUT's event and effect."""
    with make_rig(harness, tmp_path, app=sp) as rig:
        driver = Driver(rig, sp, pool=2)
        prog = {"user": MANAGED, "group": GROUP, "writes": [(PUT_WITHOUT_MANAGER, "plain")]}
        bad = driver.run(prog)
        assert not bad, "\n".join(bad)
        (put,) = _put_events(driver)
        put["manager"] = base64.b64encode(driver.pid(driver.ids["P1"])).decode()
        put["kept"] = driver.get(f"/Users/{driver.ids['T']}").json().get(ENT, {}).get("manager")
        return put


@pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")
def test_a_merging_sp_keeps_the_omitted_manager_and_the_event_says_so(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    put = _put_without_manager(harness, tmp_path, merging_sp(scim_asgi_app()))
    assert put["kept"] is not None  # the SP merged: the manager stayed
    assert put["event"]["x"]["result"]["manager"] == put["manager"]
    effect = put["effect"]
    assert not [r for r in effect.get("refs", ()) if r["attr"] == "manager"], effect
    assert [a["a"] for a in effect["acts"]] == ["user.noop"], effect


@pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")
def test_scim2_server_clears_the_omitted_manager_and_the_event_names_it_removed(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    put = _put_without_manager(harness, tmp_path, scim_asgi_app())
    assert put["kept"] is None  # RFC 7644 §3.5.1 replace: cleared
    assert put["event"]["x"]["result"]["manager"] is None  # the SP's answer holds none
    refs = [r for r in put["effect"].get("refs", ()) if r["attr"] == "manager"]
    assert refs == [{"rt": "User", "pid": put["manager"], "op": "remove", "attr": "manager"}]


# --- the classifier, on events the adapter records from an exchange --------------------------


_b64 = pid_b64
_event = exchange_event


def _user(manager: str | None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"schemas": [USER, ENT], "userName": "ann", "active": True, **more}
    if manager is not None:
        out[ENT] = {"manager": {"value": manager}}
    return out


def _managed_state() -> dict[str, Any]:
    created = _event("POST", "/Users", _user("M"), 201, {**_user("M"), "id": "A"})
    _, state, _ = classify(None, created)
    assert state is not None and state["manager"] == _b64("M")
    return state


def _manager_refs(effect: dict[str, Any] | None) -> list[tuple[str, str]]:
    assert effect is not None
    return [(r["op"], r["pid"]) for r in effect.get("refs", ()) if r["attr"] == "manager"]


def test_the_answer_keeping_the_manager_is_no_removal() -> None:
    ev = _event("PUT", "/Users/A", _user(None), 200, {**_user("M"), "id": "A"})
    assert ev["x"]["result"]["manager"] == _b64("M")
    effect, state, _ = classify(_managed_state(), ev)
    assert _manager_refs(effect) == []
    assert effect is not None and [a["a"] for a in effect["acts"]] == ["user.noop"]
    assert state is not None and state["manager"] == _b64("M")


def test_the_answer_without_a_manager_names_it_removed() -> None:
    ev = _event("PUT", "/Users/A", _user(None), 200, {**_user(None), "id": "A"})
    assert ev["x"]["result"]["manager"] is None
    effect, state, _ = classify(_managed_state(), ev)
    assert _manager_refs(effect) == [("remove", _b64("M"))]
    assert state is not None and "manager" not in state


def test_the_answer_with_another_manager_names_it_changed() -> None:
    ev = _event("PUT", "/Users/A", _user(None), 200, {**_user("N"), "id": "A"})
    effect, state, _ = classify(_managed_state(), ev)
    assert _manager_refs(effect) == [("remove", _b64("M")), ("add", _b64("N"))]
    assert state is not None and state["manager"] == _b64("N")


def test_a_patch_answered_with_another_manager_than_asked_follows_the_answer() -> None:
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": f"{ENT}:manager", "value": {"value": "N"}}],
    }
    ev = _event("PATCH", "/Users/A", patch, 200, {**_user("M"), "id": "A"})
    effect, state, _ = classify(_managed_state(), ev)
    assert state is not None and state["manager"] == _b64("M")  # the SP's word
    refs = _manager_refs(effect)
    assert refs[-2:] == [("remove", _b64("N")), ("add", _b64("M"))], refs


@pytest.mark.parametrize(
    ("status", "answer", "query"),
    [
        (204, None, b""),  # no resource in the answer
        (200, {**_user(None), "id": "A"}, b"excludedAttributes=" + ENT.encode()),
        (200, {**_user(None), "id": "A"}, b"attributes=userName"),
    ],
)
def test_without_the_answer_the_omitted_manager_is_not_known(
    status: int, answer: Any, query: bytes
) -> None:
    """Stop 37: marked ``x.unanswered`` and judged not known (a merging SP kept it), no
    removal named; the same event without the mark (an older adapter): not known too since
    faith26 (named removed before)."""
    ev = _event("PUT", "/Users/A", _user(None), status, answer, query)
    assert "manager" not in ((ev.get("x") or {}).get("result") or {})
    assert "manager" in ev["x"]["unanswered"], ev["x"]
    effect, _, _ = classify(_managed_state(), ev)
    assert _manager_refs(effect) == [] and effect is not None
    assert {"attr": "manager"} in effect["changes"], effect
    old = {**ev, "x": {k: v for k, v in ev["x"].items() if k != "unanswered"}}
    effect, _, _ = classify(_managed_state(), old)
    assert _manager_refs(effect) == [] and effect is not None
    assert {"attr": "manager"} in effect["changes"], effect
