"""faith19: what a PUT leaves out, judged from the SP's answer for every attribute the log's
state keeps, not only the manager and ``active`` (effects 14).

A PUT that left out ``userName`` or ``emails`` named them "changed, not known" and marked
the state's values stale even when the SP's answer held them; a Group PUT without
``members`` was judged to clear them whatever the SP did (RFC 7644 §3.5.1 lets it keep
them, as a merging SP does). The adapter now records a PUT's ``userName`` and ``emails``
(unless a policy hides them) and a Group PUT's members (as pseudonyms) in ``x.result``, and
the log judges the omitted ones from it. Without it (a 204, an answer trimmed by
``attributes``, an adapter from before it) the judgement is as before: scim2-server and
SCIMMY both clear omitted members and emails (faith19's trial), so a Group PUT without
members and without an answer still counts as clearing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401
from tlog.scim.effects import classify

from .differential import ENT, GROUP, USER, Driver, snapshot, sp_driver
from .helpers import scim_asgi_app
from .merge_sp import merging_sp
from .recorded import exchange_event, pid_b64
from .rig import make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

EMAILS = [{"value": "ann@example.org", "primary": True}]


def _user(**more: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": "ann", "active": True, **more}


def _user_state() -> dict[str, Any]:
    body = _user(emails=EMAILS)
    _, state, _ = classify(None, exchange_event("POST", "/Users", body, 201, {**body, "id": "A"}))
    assert state is not None and "emails" in state
    return state


def _named(effect: dict[str, Any] | None) -> set[str]:
    assert effect is not None
    return {c["attr"] for c in effect.get("changes", ())}


def test_an_answer_keeping_the_omitted_emails_is_no_change() -> None:
    ev = exchange_event("PUT", "/Users/A", _user(), 200, {**_user(emails=EMAILS), "id": "A"})
    assert ev["x"]["result"]["emails"] == EMAILS and ev["x"]["result"]["userName"] == "ann"
    effect, state, _ = classify(_user_state(), ev)
    assert _named(effect) == set(), effect
    assert effect is not None and [a["a"] for a in effect["acts"]] == ["user.noop"]
    assert state is not None and "stale" not in state  # still known


def test_an_answer_without_the_omitted_emails_names_them_changed_and_known_gone() -> None:
    ev = exchange_event("PUT", "/Users/A", _user(), 200, {**_user(), "id": "A"})
    assert ev["x"]["result"]["emails"] is None
    effect, state, _ = classify(_user_state(), ev)
    assert _named(effect) == {"emails"}
    assert state is not None and "emails" not in state and "stale" not in state
    # known now: a PUT stating no emails again changes nothing
    effect, _, _ = classify(state, exchange_event("PUT", "/Users/A", _user(), 200, None))
    assert _named(effect) == set(), effect


@pytest.mark.parametrize(
    ("status", "answer", "query", "cfg"),
    [
        (204, None, b"", {}),  # no resource in the answer
        (200, {**_user(emails=EMAILS), "id": "A"}, b"attributes=userName", {}),
        (200, {**_user(emails=EMAILS), "id": "A"}, b"", {"digest_attrs": ("emails",)}),
    ],
    ids=["204", "trimmed", "digested"],
)
def test_without_the_answer_the_omitted_emails_are_not_known(
    status: int, answer: Any, query: bytes, cfg: dict[str, Any]
) -> None:
    """As before: named changed, the state's values stale. A policy that records the emails
    only as a digest keeps them out of ``x.result`` too."""
    ev = exchange_event("PUT", "/Users/A", _user(), status, answer, query, **cfg)
    assert "emails" not in ((ev.get("x") or {}).get("result") or {})
    effect, state, _ = classify(_user_state(), ev)
    assert _named(effect) == {"emails"}
    assert state is not None and state.get("stale") == ["emails"]


def _group_state(*members: str) -> dict[str, Any]:
    body = {"schemas": [GROUP], "displayName": "g", "members": [{"value": m} for m in members]}
    created = exchange_event("POST", "/Groups", body, 201, {**body, "id": "G"})
    _, state, _ = classify(None, created)
    assert state is not None and "members" in state["full"]
    return state


def _members_answer(*members: str) -> dict[str, Any]:
    out: dict[str, Any] = {"schemas": [GROUP], "id": "G", "displayName": "g2"}
    if members:
        out["members"] = [{"value": m} for m in members]
    return out


@pytest.mark.parametrize(
    ("kept", "answered"),
    [(("M1", "M2"), True), (("M1",), True), ((), True), ((), False)],
    ids=["kept", "one-kept", "none", "no-answer"],
)
def test_a_group_put_without_members_is_judged_from_the_answer(
    kept: tuple[str, ...], answered: bool
) -> None:
    """Kept (a merging SP): no member named removed, the set still known; cleared: each
    named removed. No answer (faith20): the adapter marks the members not shown
    (``x.unanswered``) and the log names them changed without values, none removed, the
    set not known from there (before: cleared, each named removed, which a merging SP
    had kept). The same event without the mark (an adapter from before it): the same since
    faith26 (before, cleared)."""
    body = {"schemas": [GROUP], "displayName": "g2"}
    answer = _members_answer(*kept) if answered else None
    ev = exchange_event("PUT", "/Groups/G", body, 200 if answered else 204, answer)
    effect, state, _ = classify(_group_state("M1", "M2"), ev)
    assert effect is not None and state is not None
    removed = {r["pid"] for r in effect.get("refs", ()) if r["op"] == "remove"}
    if not answered:
        assert ev["x"]["unanswered"] == ["members"], ev["x"]
        assert removed == set() and {"attr": "members"} in effect["changes"], effect
        assert state["members"] == [] and "members" not in state["full"]
        old = {**ev, "x": {k: v for k, v in ev["x"].items() if k != "unanswered"}}
        effect, state, _ = classify(_group_state("M1", "M2"), old)
        assert effect is not None and state is not None
        assert not [r for r in effect.get("refs", ()) if r["op"] == "remove"], effect
        assert {"attr": "members"} in effect["changes"], effect
        assert state["members"] == [] and "members" not in state["full"]
        return
    else:
        assert ev["x"]["result"]["members"] == sorted(pid_b64(m) for m in kept)
        assert "unanswered" not in ev["x"]
    assert removed == {pid_b64(m) for m in {"M1", "M2"} - set(kept)}, effect
    assert state["members"] == sorted(pid_b64(m) for m in kept)
    assert "members" in state["full"]


def test_after_an_unanswered_put_a_removal_is_named_as_asked() -> None:
    """faith20: the members not known after a Group PUT without them and without an answer:
    a later removal of a member is named as asked (a merging SP kept them), never a noop
    (before: the set was claimed empty, and the removal of M1, still a member on the
    merging SP, was counted a noop)."""
    put = exchange_event("PUT", "/Groups/G", {"schemas": [GROUP], "displayName": "g2"}, 204, None)
    _, state, _ = classify(_group_state("M1", "M2"), put)
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "remove", "path": 'members[value eq "M1"]'}],
    }
    effect, _, _ = classify(state, exchange_event("PATCH", "/Groups/G", patch, 204, None))
    assert effect is not None and "noop" not in effect, effect
    assert [(r["pid"], r["op"]) for r in effect["refs"]] == [(pid_b64("M1"), "remove")]


def test_only_a_puts_answer_records_the_members_and_emails() -> None:
    """A PATCH's answer records neither (the log does not use them there: no pseudonym
    lookups per member, no values twice in the event)."""
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "displayName", "value": "g3"}],
    }
    ev = exchange_event("PATCH", "/Groups/G", patch, 200, _members_answer("M1"))
    assert "result" not in (ev.get("x") or {})
    ev = exchange_event("PATCH", "/Users/A", patch, 200, {**_user(emails=EMAILS), "id": "A"})
    assert not {"userName", "emails"} & set(ev["x"]["result"])


# --- against real SPs: scim2-server, SCIMMY, and scim2-server made to merge a PUT ----------


@pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")
@pytest.mark.parametrize("sp", ["scim2-server", "SCIMMY", "merging"])
def test_a_put_leaving_out_members_and_emails_against_real_sps(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    sp: str,
) -> None:
    """The differential oracle finds nothing wrong on any of them, and the log names what
    each did: scim2-server and SCIMMY clear the omitted members and emails, the merging SP
    keeps them (before faith19: named removed and changed all the same)."""
    prog = {
        "user": {"schemas": [USER], "userName": "{T_NAME}", "emails": EMAILS},
        "group": {
            "schemas": [GROUP],
            "displayName": "{G_NAME}",
            "members": [{"value": "{P0}"}, {"value": "{P1}"}],
        },
        "writes": [
            (("PUT", "T", {"schemas": [USER], "userName": "{T_NAME}"}), "plain"),
            (("PUT", "G", {"schemas": [GROUP], "displayName": "{G_NAME}"}), "plain"),
        ],
    }
    if sp == "merging":
        app = merging_sp(scim_asgi_app())
        with make_rig(harness, tmp_path, app=app) as rig:
            driver = Driver(rig, app, pool=2)
            assert driver.run(prog) == []
            members = snapshot(driver.get, f"/Groups/{driver.ids['G']}")
            user_effect, group_effect = driver.effects
    else:
        with sp_driver(sp, harness, tmp_path) as driver:
            assert driver.run(prog) == []
            members = snapshot(driver.get, f"/Groups/{driver.ids['G']}")
            user_effect, group_effect = driver.effects
    assert members is not None
    kept = sp == "merging"
    assert bool(members.members) == kept
    assert ("emails" in _named(user_effect)) != kept, user_effect
    removals = [r for r in group_effect.get("refs", ()) if r["op"] == "remove"]
    assert len(removals) == (0 if kept else 2), group_effect


@pytest.mark.parametrize("answered", [True, False], ids=["answer-none", "no-answer"])
def test_a_manager_the_log_forgot_is_said_not_known_when_a_put_leaves_it_out(
    answered: bool,
) -> None:
    """Found by the random hunt once it drew the manager's path-less clears: after
    ``{ext: {"manager": {}}}`` (scim2-server keeps the manager; the log forgets it, not
    known), a PUT leaving the manager out was answered with none (scim2-server cleared it),
    and the effect said nothing of the manager. The state now marks a manager it forgot
    (``manager_unknown``): such a PUT names it changed without values (not known)."""
    managed = _user(**{ENT: {"manager": {"value": "M"}}}, schemas=[USER, ENT])
    created = exchange_event("POST", "/Users", managed, 201, {**managed, "id": "A"})
    _, state, _ = classify(None, created)
    pathless = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {ENT: {"manager": {}}}}],
    }
    effect, state, _ = classify(state, exchange_event("PATCH", "/Users/A", pathless, 204, None))
    assert _named(effect) == {"manager"}
    answer = {**_user(), "id": "A"} if answered else None
    put = exchange_event("PUT", "/Users/A", _user(), 200 if answered else 204, answer)
    effect, state, _ = classify(state, put)
    assert "manager" in _named(effect), effect
    assert effect is not None and "refs" not in effect


# --- faith20: the attributes the state keeps only as digests ----------------------------------

ENT_NUMBER = ENT + ":employeeNumber"


def _user_with_others() -> dict[str, Any]:
    body = _user(title="boss", displayName="Ann", **{ENT: {"employeeNumber": "7"}})
    body["schemas"] = [USER, ENT]
    _, state, _ = classify(None, exchange_event("POST", "/Users", body, 201, {**body, "id": "A"}))
    assert state is not None and {"title", "displayname", "employeenumber"} <= set(state["other"])
    return state


def _answer(**more: Any) -> dict[str, Any]:
    return {**_user(), "id": "A", **more}


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (_answer(title="boss", displayName="Ann", **{ENT: {"employeeNumber": "7"}}), set()),
        (_answer(title="chief", displayName="Ann", **{ENT: {"employeeNumber": "7"}}), {"title"}),
        (_answer(displayName="Ann"), {"title", "employeenumber"}),
    ],
    ids=["kept", "another", "none"],
)
def test_other_attributes_a_put_leaves_out_are_judged_from_the_answer(
    answer: dict[str, Any], named: set[str]
) -> None:
    """faith20: a PUT leaving out attributes the state keeps only as digests (``title``,
    ``displayName``, an extension's ``employeeNumber``) records the answer's digests of them
    (``x.result.other``); kept is no change (a merging SP: ``user.noop``, before an
    ``update`` with nothing named), another value or none is named changed, and the state
    knows the answer's from there."""
    ev = exchange_event("PUT", "/Users/A", _user(), 200, answer)
    assert set(ev["x"]["result"]["other"]) >= {"title", "displayName"} & set(answer)
    effect, state, _ = classify(_user_with_others(), ev)
    assert effect is not None and state is not None
    assert _named(effect) == named, effect
    acts = [a["a"] for a in effect["acts"]]
    assert acts == (["user.noop"] if not named else ["user.update"]), acts
    if "title" in named and "title" in answer:
        # known now: a PUT stating the answer's title changes nothing on it
        again = exchange_event("PUT", "/Users/A", _user(title="chief"), 204, None)
        effect, _, _ = classify(state, again)
        assert effect is not None and "title" not in _named(effect), effect


def test_without_the_answer_other_attributes_left_out_stay_not_known() -> None:
    """Holds (as before): a 204 or a trimmed answer says nothing of them: ``update``, the
    digests forgotten, nothing named."""
    for status, answer, query in (
        (204, None, b""),
        (200, _answer(title="boss"), b"attributes=userName"),
    ):
        ev = exchange_event("PUT", "/Users/A", _user(), status, answer, query)
        assert "other" not in (ev.get("x") or {}).get("result", {}), ev.get("x")
        effect, state, _ = classify(_user_with_others(), ev)
        assert effect is not None and state is not None
        assert [a["a"] for a in effect["acts"]] == ["user.update"]
        assert "title" not in state["other"]


def test_a_secret_attribute_is_never_digested_into_the_result() -> None:
    ev = exchange_event(
        "PUT", "/Users/A", _user(), 200, _answer(title="boss", ssn="123"),
        secret_attrs=("password", "ssn"),
    )  # fmt: skip
    assert "ssn" not in ev["x"]["result"]["other"] and "title" in ev["x"]["result"]["other"]
