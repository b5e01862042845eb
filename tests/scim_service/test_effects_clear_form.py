"""A PATCH replacing members, roles, entitlements or the manager with nothing, judged by the
form the request used (red team 14).

``{"op": "replace", "path": "members", "value": []}`` clears the members on every SP tried;
the path-less ``{"op": "replace", "value": {"members": []}}`` does not on SCIMMY (RFC 7643
§2.5: an empty array is as if the attribute were absent), while scim2-server clears them.
The adapter now records which form the operation had (``mods[].form``: ``path`` or
``value``), and the log judges the path form an exact clear and the path-less one not known
(the attribute named changed without values, its values forgotten). An event without the
mark (an adapter from before it) is judged as before: the members' clear exact, the roles'
not known. Events as the adapter makes them (``parse_request``), judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim import EventFormatError, event_from_json, event_to_json
from client.scim.event import decode_event, encode_event, validate_event
from client.scim.fastjson import decode_event_json
from tests.adapters.differential import ref_steps

from . import members_model
from .members_model import PATCH_OP, b64, changes, group_event, judge, pid_of, user_event

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATHLESS = members_model.PATHLESS_CLEAR
PATH = members_model.PATH_CLEAR
FORM_OPS = members_model.FORM_OPS
_form_op = members_model.form_op
_sp = members_model.sp_forms


def _patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


def _group(*rids: str) -> Any:
    body = {"displayName": "g", "members": [{"value": r} for r in rids]}
    return judge(None, group_event("create", body, "c"))[1]


def _user(**attrs: Any) -> Any:
    return judge(None, user_event("create", {"userName": "u9", **attrs}, "c"))[1]


def _unknown(effect: dict[str, Any]) -> set[str]:
    """The attributes the effect names changed without values: not known."""
    return {c["attr"] for c in effect.get("changes", ()) if len(c) == 1}


def _without_form(ev: dict[str, Any]) -> dict[str, Any]:
    """``ev`` as an adapter from before ``mods[].form`` sent it."""
    for m in ev.get("mods", ()):
        m.pop("form", None)
    validate_event(ev)
    return ev


def test_the_adapter_records_the_form_of_a_replace_only() -> None:
    pathless = group_event("patch", _patch(PATHLESS), "r1")
    path = group_event("patch", _patch(PATH), "r2")
    assert pathless["mods"] == [
        {"attr": "members", "op": "replace", "new": "null", "form": "value"}
    ]
    assert path["mods"] == [{"attr": "members", "op": "replace", "new": "null", "form": "path"}]
    roles = user_event("patch", _patch({"op": "replace", "path": "roles", "value": []}), "r3")
    assert roles["mods"] == [{"attr": "roles", "op": "replace", "new": "[]", "form": "path"}]
    # a replace with values too (faith19: SCIMMY merges the path-less one)
    for op, form in (
        ({"op": "replace", "path": "roles", "value": [{"value": "a"}]}, "path"),
        ({"op": "replace", "value": {"roles": [{"value": "a"}]}}, "value"),
    ):
        ev = user_event("patch", _patch(op), "r4")
        assert [m.get("form") for m in ev["mods"]] == [form], op
    # every other entry keeps its bytes: a remove, an add, a replace of another attribute
    for op in (
        {"op": "replace", "path": "displayName", "value": "x"},
        {"op": "remove", "path": "roles"},
        {"op": "add", "path": "roles", "value": []},
    ):
        ev = user_event("patch", _patch(op), "r4")
        assert not any("form" in m for m in ev["mods"]), op
    with pytest.raises(EventFormatError, match="form"):
        bad = group_event("patch", _patch(PATH), "r5")
        bad["mods"][0]["form"] = "values"
        validate_event(bad)


def test_a_pathless_replace_of_the_members_with_nothing_is_not_known() -> None:
    state = _group("u1", "u2")
    effect, state = judge(state, group_event("patch", _patch(PATHLESS), "r"))
    assert changes(effect) == []  # no member claimed removed (SCIMMY keeps them)
    assert _unknown(effect) == {"members"}
    assert "members" not in state["full"]
    # so a later removal is named as asked, never called a noop
    remove = {"op": "remove", "path": 'members[value eq "u1"]'}
    effect, _ = judge(state, group_event("patch", _patch(remove), "r2"))
    assert changes(effect) == [("remove", b64(pid_of("User", "u1")))]
    assert "noop" not in effect


def test_the_path_form_is_an_exact_clear() -> None:
    state = _group("u1", "u2")
    effect, state = judge(state, group_event("patch", _patch(PATH), "r"))
    assert changes(effect) == sorted(("remove", p) for p in members_model.members({"u1", "u2"}))
    assert state["members"] == [] and "members" in state["full"]


def test_an_event_without_the_form_is_judged_as_before() -> None:
    """Before mods[].form, a replace of the members with nothing was an exact clear."""
    state = _group("u1", "u2")
    old = _without_form(group_event("patch", _patch(PATHLESS), "r"))
    effect, state = judge(state, old)
    assert changes(effect) == sorted(("remove", p) for p in members_model.members({"u1", "u2"}))
    assert state["members"] == [] and "members" in state["full"]


@pytest.mark.parametrize("key", ["roles", "entitlements"])
def test_roles_by_form(key: str) -> None:
    revoke = f"user.{key[:-1] if key == 'roles' else 'entitlement'}.revoke"
    start = {key: [{"value": "admin"}, {"value": "dev"}]}
    # the path form: an exact clear (it was "not known" for both forms)
    op = {"op": "replace", "path": key, "value": []}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r1"))
    assert {"attr": key, "removed": ["admin", "dev"]} in effect["changes"]
    assert revoke in [a["a"] for a in effect["acts"]]
    assert state[key] == [] and key in state["full"]
    # the path-less form: not known (SCIMMY keeps them)
    op = {"op": "replace", "value": {key: []}}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r2"))
    assert effect["changes"] == [{"attr": key}]
    assert key not in state and key not in state["full"]
    # an event without the form, of either: not known, as before
    for op in ({"op": "replace", "path": key, "value": []}, {"op": "replace", "value": {key: []}}):
        old = _without_form(user_event("patch", _patch(op), "r3"))
        effect, state = judge(_user(**start), old)
        assert effect["changes"] == [{"attr": key}], op
        assert key not in state["full"]
    # a filtered path replaced with nothing is no clear of the whole: not known
    op = {"op": "replace", "path": f'{key}[value eq "admin"]', "value": []}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r4"))
    assert effect["changes"] == [{"attr": key}]


@pytest.mark.parametrize(
    "operations",
    [
        [PATHLESS, PATHLESS],  # the "double clear": numbered, so judged in order before
        [{"op": "add", "path": "members", "value": [{"value": "u3"}]}, PATHLESS],
        [PATHLESS, {"op": "add", "path": "members", "value": [{"value": "u3"}]}],
        [PATHLESS, PATH],
    ],
)
def test_a_pathless_clear_among_other_operations_claims_no_removal_it_cannot_know(
    operations: list[dict[str, Any]],
) -> None:
    """Two path-less clears in one PATCH are numbered by the adapter (a clear after another
    operation on the attribute), and the log placed each in order as an exact clear: u1 and
    u2 named removed although SCIMMY kept them. Whatever the order, no member the SP may
    have kept is named removed, and the set is not known after a path-less clear."""
    state = _group("u1", "u2")
    ev = group_event("patch", _patch(*operations), "r")
    effect, state = judge(state, ev)
    kept = {b64(pid_of("User", r)) for r in ("u1", "u2")}
    named_removed = {p for op, p in changes(effect) if op == "remove"}
    if operations[-1] is PATH:
        # the path form last: every SP ends without u1, u2: naming them removed is right,
        # but the set may still be claimed only if the whole is known
        assert named_removed <= kept
    else:
        assert not named_removed & kept, effect
        assert "members" in _unknown(effect)
        assert "members" not in state["full"]


def test_a_pathless_clear_in_a_split_request_is_not_known() -> None:
    """The same when the request is cut into linked parts, the clear in the first."""
    state = _group("u1", "u2")
    add = {"op": "add", "path": "members", "value": [{"value": r} for r in ("u3", "u4")]}
    whole = group_event("patch", _patch(PATHLESS, add), "big")
    n = len(whole["patch"])
    for cut in range(1, n + len(whole["mods"]) + len(whole["refs"])):
        state2, _, _ = members_model.judge_in_parts(state, whole, [cut])
        assert "members" not in state2["full"], cut


def test_a_pathless_replace_of_the_manager_with_nothing_is_not_known() -> None:
    start = {ENTERPRISE: {"manager": {"value": "m1"}}}
    op = {"op": "replace", "value": {ENTERPRISE: {"manager": None}}}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r1"))
    assert "refs" not in effect  # the manager not claimed removed
    assert _unknown(effect) == {"manager"}
    assert "manager" not in state
    # the path form: not known either since faith19 (with {} scim2-server keeps it, SCIMMY
    # clears it, and the event cannot tell {} from null); a remove by its path is exact
    op = {"op": "replace", "path": f"{ENTERPRISE}:manager", "value": None}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r2"))
    assert "refs" not in effect and _unknown(effect) == {"manager"}
    op = {"op": "remove", "path": f"{ENTERPRISE}:manager"}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r3"))
    assert [(r["op"], r["pid"]) for r in effect["refs"]] == [("remove", b64(pid_of("User", "m1")))]


def test_an_event_with_the_form_is_valid_json_and_cbor() -> None:
    """The mark is part of the event (and so of the leaf's commitment): both encodings, and
    the compiled JSON decoder, accept it; a bad value is refused by both paths."""
    ev = group_event("patch", _patch(PATHLESS), "r")
    text = event_to_json(ev)
    assert event_from_json(text) == ev
    assert decode_event(encode_event(ev)) == ev
    fast = decode_event_json(text.encode())
    assert fast is not None and fast[0] == ev and fast[1] == encode_event(ev)
    bad = text.replace('"form":"value"', '"form":"both"').encode()
    assert bad != text.encode() and decode_event_json(bad) is None
    with pytest.raises(EventFormatError, match="form"):
        event_from_json(bad.decode())


@pytest.mark.parametrize(
    "then",
    [
        {"op": "remove", "path": 'members[value eq "u1"]'},  # u1 may be gone already
        {"op": "add", "path": "members", "value": [{"value": "u1"}]},  # may still be there
        {"op": "replace", "path": "members", "value": [{"value": "u3"}]},  # who else went?
        {"op": "remove", "path": "members"},  # the same
    ],
)
def test_after_a_pathless_clear_the_next_member_change_says_it_is_not_known(
    then: dict[str, Any],
) -> None:
    """Found by the random differential once it drew the path-less clear again: after it,
    scim2-server had no members and SCIMMY both, and a later ``remove u1`` was named a
    removal of a member (on scim2-server, of one not there), with nothing saying the log
    did not know. Now each step the state cannot place is named as asked and the effect
    says what is left is not known; one it can place is exact."""
    state = _group("u1", "u2")
    _, state = judge(state, group_event("patch", _patch(PATHLESS), "r1"))
    effect, state = judge(state, group_event("patch", _patch(then), "r2"))
    assert {"attr": "members"} in effect["changes"], effect
    assert [a["a"] for a in effect["acts"]] != ["group.noop"]
    # a member the log saw added since is known: its removal is exact
    add = {"op": "add", "path": "members", "value": [{"value": "u4"}]}
    _, state = judge(state, group_event("patch", _patch(add), "r3"))
    if "members" not in state["full"]:
        remove = {"op": "remove", "path": 'members[value eq "u4"]'}
        effect, _ = judge(state, group_event("patch", _patch(remove), "r4"))
        assert changes(effect) == [("remove", b64(pid_of("User", "u4")))]
        assert "changes" not in effect


def test_members_are_named_not_known_once() -> None:
    """A path-less clear after an add on a set not known whole: the references judged, then
    the set forgotten, and ``members`` named not known once, not twice."""
    state = _group("u1")
    _, state = judge(state, group_event("patch", _patch(PATHLESS), "r1"))  # not known now
    add = {"op": "add", "path": "members", "value": [{"value": "u2"}]}
    effect, _ = judge(state, group_event("patch", _patch(add, PATHLESS), "r2"))
    assert effect["changes"] == [{"attr": "members"}], effect


# --- faith19: each path-less write judged in its place, the rest of the request exactly ---


def _faithful(effect: dict[str, Any], before: set[str], after: set[str]) -> list[str]:
    """What the effect's member steps get wrong about one SP's change (as the differential
    judges it, tests/adapters/differential.py); nothing where it says it does not know."""
    if "members" in _unknown(effect):
        return []
    was, now = set(members_model.members(before)), set(members_model.members(after))
    return ref_steps(effect.get("refs", ()), "members", was, now)


@settings(max_examples=300, deadline=None)
@given(start=st.sets(st.sampled_from(members_model.POOL)), ops=FORM_OPS)
def test_a_pathless_write_leaves_only_what_it_may_have_kept_not_known(
    start: set[str], ops: list[tuple[str, list[str]]]
) -> None:
    """Before faith19, one path-less clear made the request's whole member change "not
    known" (``[clear by path, clear path-less]`` empties the group on every SP, yet no
    removal was named), a path replace after it did not state the set again, and a
    path-less replace with values was judged exact (SCIMMY adds to its members: the others
    were named removed while it kept them). Now each step is placed in order, the members a
    path-less write may have kept are set apart, and only they leave the set not known:
    against both SPs' outcomes the effect is faithful, and a set the state says known whole
    is what both hold."""
    state = _group(*sorted(start))
    effect, state = judge(state, group_event("patch", _patch(*(_form_op(*o) for o in ops)), "r"))
    for merges in (False, True):
        after = _sp(start, ops, merges=merges)
        assert _faithful(effect, start, after) == [], (merges, effect)
        if "members" in state["full"]:
            assert state["members"] == members_model.members(after), merges
    if {"clear", "replace"} & {o for o, _ in ops[-1:]}:
        assert "members" in state["full"]  # the path form last: known whole again


def test_a_path_clear_then_a_pathless_one_is_exact() -> None:
    """``[clear by path, clear path-less]``: empty on every SP, each member named removed
    (before faith19: no removal named, the whole request "not known")."""
    effect, state = judge(_group("u1", "u2"), group_event("patch", _patch(PATH, PATHLESS), "r"))
    assert changes(effect) == sorted(("remove", p) for p in members_model.members({"u1", "u2"}))
    assert "members" not in _unknown(effect)
    assert state["members"] == [] and "members" in state["full"]


@pytest.mark.parametrize("later", [False, True], ids=["same-patch", "later-event"])
def test_a_path_replace_after_a_pathless_clear_states_the_set_again(later: bool) -> None:
    """A replace naming its path sets exactly its values on both SPs (faith19's trial): the
    set is known again from it. In the same PATCH the members the clear may have kept are
    named removed; in a later event the log never knew them: said not known, then known."""
    replace = {"op": "replace", "path": "members", "value": [{"value": "u3"}]}
    state = _group("u1", "u2")
    if later:
        _, state = judge(state, group_event("patch", _patch(PATHLESS), "r1"))
        effect, state = judge(state, group_event("patch", _patch(replace), "r2"))
        assert changes(effect) == [("add", b64(pid_of("User", "u3")))]
        assert _unknown(effect) == {"members"}
    else:
        effect, state = judge(state, group_event("patch", _patch(PATHLESS, replace), "r"))
        assert changes(effect) == sorted(
            [
                ("add", b64(pid_of("User", "u3"))),
                *(("remove", p) for p in members_model.members({"u1", "u2"})),
            ]
        )
        assert "changes" not in effect  # known: nothing left in doubt
    assert state["members"] == members_model.members({"u3"}) and "members" in state["full"]


@pytest.mark.parametrize("key", ["roles", "entitlements"])
def test_roles_after_a_pathless_write(key: str) -> None:
    """The same for a user's roles and entitlements: a path-less clear then a path replace
    in one PATCH is exact; a path-less replace with values grants them and says the rest is
    not known (before faith19: the old values named revoked, which SCIMMY keeps)."""
    start = {key: [{"value": "admin"}, {"value": "dev"}]}
    both = _patch(
        {"op": "replace", "value": {key: []}},
        {"op": "replace", "path": key, "value": [{"value": "ops"}]},
    )
    effect, state = judge(_user(**start), user_event("patch", both, "r1"))
    assert sorted(effect["changes"], key=str) == sorted(
        [{"attr": key, "added": ["ops"]}, {"attr": key, "removed": ["admin", "dev"]}], key=str
    )
    assert state[key] == ["ops"] and key in state["full"]
    merge = _patch({"op": "replace", "value": {key: [{"value": "dev"}, {"value": "ops"}]}})
    effect, state = judge(_user(**start), user_event("patch", merge, "r2"))
    assert effect["changes"] == [{"attr": key, "added": ["ops"]}, {"attr": key}]
    assert key not in state["full"]
    # a later path replace states it again, and says what went is not known
    then = _patch({"op": "replace", "path": key, "value": [{"value": "ops"}]})
    effect, state = judge(state, user_event("patch", then, "r3"))
    assert {"attr": key} in effect["changes"] and key in state["full"]


def test_a_pathless_replace_with_values_in_a_split_request_names_no_removal() -> None:
    """Cut into linked parts (its ``mods`` entry in one part, its references in the same or
    later ones), the path-less replace with values named u1 and u2 removed (in the part
    with its references), which SCIMMY keeps: now no part judges it exact."""
    pathless = {"op": "replace", "value": {"members": [{"value": r} for r in ("u3", "u4")]}}
    whole = group_event("patch", _patch(pathless), "big")
    kept = {b64(pid_of("User", r)) for r in ("u1", "u2")}
    for cut in range(1, len(members_model.split_items(whole))):
        parts, _ = members_model.split_parts(whole, [cut])
        state = _group("u1", "u2")
        named = set()
        for ev in parts:
            effect, state = judge(state, ev)
            named |= {p for op, p in changes(effect) if op == "remove"}
        assert not named & kept, cut
        assert "members" not in state["full"] and "merging" not in state, cut


def test_a_manager_replaced_by_one_without_an_id_is_a_clear() -> None:
    """``{ext: {"manager": {"value": ""}}}``: scim2-server and SCIMMY both store a manager
    without an id (faith19's trial), the one before is gone; the event held no reference
    and no clear, and the log judged ``user.noop``. Now it is a clear: not known, as every
    replace of the manager with nothing (the event cannot tell the values apart)."""
    start = {ENTERPRISE: {"manager": {"value": "m1"}}}
    op = {"op": "replace", "value": {ENTERPRISE: {"manager": {"value": ""}}}}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r1"))
    assert _unknown(effect) == {"manager"} and "manager" not in state
    op = {"op": "replace", "path": f"{ENTERPRISE}:manager", "value": {"value": ""}}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r2"))
    assert "refs" not in effect and _unknown(effect) == {"manager"}


def test_the_manager_replaced_by_its_path_with_an_empty_map_is_not_known() -> None:
    """``"path": "...:manager", "value": {}``: SCIMMY clears the manager, scim2-server keeps
    it (faith19's trial); the log named it removed (an exact clear of the path form)."""
    start = {ENTERPRISE: {"manager": {"value": "m1"}}}
    op = {"op": "replace", "path": f"{ENTERPRISE}:manager", "value": {}}
    effect, state = judge(_user(**start), user_event("patch", _patch(op), "r1"))
    assert "refs" not in effect and _unknown(effect) == {"manager"}
    assert "manager" not in state and state.get("manager_unknown") is True


def test_a_manager_set_after_a_clear_of_either_form_is_exact() -> None:
    """The manager is one value: a set after the clear decides alone on every SP, so the
    request is exact (before faith19 the path-less clear first made it not known, the set
    after it never applied: the state had no manager while the SP had u1)."""
    start = {ENTERPRISE: {"manager": {"value": "m1"}}}
    for clear in (
        {"op": "replace", "value": {ENTERPRISE: {"manager": None}}},
        {"op": "replace", "path": f"{ENTERPRISE}:manager", "value": {}},
    ):
        then = {"op": "add", "path": f"{ENTERPRISE}:manager", "value": {"value": "u1"}}
        effect, state = judge(_user(**start), user_event("patch", _patch(clear, then), "r"))
        assert [(r["op"], r["pid"]) for r in effect["refs"]] == [
            ("remove", b64(pid_of("User", "m1"))),
            ("add", b64(pid_of("User", "u1"))),
        ], clear
        assert state["manager"] == b64(pid_of("User", "u1")) and "manager_unknown" not in state


def _rm(rid: str) -> dict[str, Any]:
    return {"op": "remove", "path": f'members[value eq "{rid}"]'}


def _add(*rids: str) -> dict[str, Any]:
    return {"op": "add", "path": "members", "value": [{"value": r} for r in rids]}


SPLIT_CASES = {
    # every member it may have left placed by a later step: known whole
    "placed": [PATHLESS, _rm("u1"), _rm("u2"), _add("u3")],
    "placed by an add": [PATHLESS, _add("u1"), _rm("u2")],
    # u1 and u2 placed by no step: not known, in one part as in parts
    "not placed": [PATHLESS, _add("u3")],
}


def _judged(state: Any, parts: list[dict[str, Any]]) -> tuple[Any, set[Any], bool]:
    named: set[Any] = set()
    unknown = False
    for ev in parts:
        effect, state = judge(state, ev)
        named |= set(changes(effect))
        unknown = unknown or "members" in _unknown(effect)
    return state, named, unknown


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
def test_a_pathless_clear_in_a_split_request_is_judged_as_in_one_part(name: str) -> None:
    """faith20: a path-less clear first in a request cut into linked parts, the parts
    arriving in order, is judged as in one event: the members it may have left (SCIMMY
    keeps them) are carried from part to part and placed by the later steps, and only what
    no step places is not known. Before, the whole request's members were not known."""
    whole = group_event("patch", _patch(*SPLIT_CASES[name]), "big")
    one, one_named, one_unknown = _judged(_group("u1", "u2"), [whole])
    assert ("members" in one["full"]) == (name != "not placed"), one
    for cut in range(1, len(members_model.split_items(whole))):
        parts, _ = members_model.split_parts(whole, [cut])
        state, named, unknown = _judged(_group("u1", "u2"), parts)
        assert state["members"] == one["members"], cut
        assert ("members" in state["full"]) == ("members" in one["full"]), (cut, state)
        assert named == one_named and unknown == one_unknown, (cut, named, one_named)
        assert "maybe_req" not in state and "maybe_members" not in state


def test_a_pathless_clear_in_a_split_request_with_a_part_missing_is_not_known() -> None:
    """Holds (red team 10's gap, faith20's carried members with it): a part that never
    came leaves the members not known, whatever the later parts place."""
    whole = group_event("patch", _patch(*SPLIT_CASES["placed"]), "big")
    n = len(members_model.split_items(whole))
    for cut in range(1, n - 1):
        parts, _ = members_model.split_parts(whole, [cut, cut + 1])
        state, _, _ = _judged(_group("u1", "u2"), [parts[0], parts[2]])
        assert "members" not in state["full"], cut


def _merge(*rids: str) -> dict[str, Any]:
    """A path-less replace with values (SCIMMY adds them, scim2-server replaces)."""
    return {"op": "replace", "value": {"members": [{"value": r} for r in rids]}}


SPLIT_CASES_22 = {
    # a path-less replace with values, the members it may have left placed or not
    "merge placed": [_merge("u3", "u4"), _rm("u1"), _add("u2")],
    "merge not placed": [_merge("u3", "u4"), _rm("u1")],
    "merge after an add": [_add("u4"), _merge("u3"), _rm("u1"), _rm("u2"), _rm("u4")],
    # a numbered path-less clear (after other member operations), placed or not
    "numbered clear placed": [_add("u3"), PATHLESS, _rm("u1"), _add("u2"), _rm("u3")],
    "numbered clear not placed": [_add("u3"), PATHLESS, _rm("u1")],
    "numbered clear after a remove": [_rm("u1"), PATHLESS, _add("u2"), _add("u4")],
    # a replace by its path whose references end where a part ends (found by the random
    # cuts below: the members it replaced were named removed nowhere)
    "path replace then an add": [
        {"op": "replace", "path": "members", "value": [{"value": "u3"}]},
        _add("u4"),
    ],
}


@pytest.mark.parametrize("name", sorted(SPLIT_CASES_22))
def test_a_split_pathless_replace_or_numbered_clear_is_judged_as_in_one_part(name: str) -> None:
    """faith22: a path-less replace with values, and a path-less clear after other member
    operations (numbered), in a request cut into linked parts arriving in order, are judged
    as in one event (the members they may have left carried from part to part and placed by
    the later steps); before, the whole request's members were not known whatever the later
    parts placed. Every cut in one place and in two."""
    whole = group_event("patch", _patch(*SPLIT_CASES_22[name]), "big")
    one, one_named, one_unknown = _judged(_group("u1", "u2"), [whole])
    assert ("members" in one["full"]) == ("not placed" not in name), (one, name)
    n = len(members_model.split_items(whole))
    cuts = [[c] for c in range(1, n)] + [[a, b] for a in range(1, n) for b in range(a + 1, n)]
    for cut in cuts:
        parts, _ = members_model.split_parts(whole, cut)
        state, named, unknown = _judged(_group("u1", "u2"), parts)
        assert state["members"] == one["members"], (cut, state, one)
        assert ("members" in state["full"]) == ("members" in one["full"]), (cut, state)
        assert named == one_named and unknown == one_unknown, (cut, named, one_named)
        for key in ("maybe_req", "maybe_members", "merging", "cleared", "touched"):
            assert key not in state, (cut, state)


@pytest.mark.parametrize("name", sorted(SPLIT_CASES_22))
def test_those_split_requests_with_a_part_missing_are_not_known(name: str) -> None:
    """Holds: a part that never came leaves the members not known."""
    whole = group_event("patch", _patch(*SPLIT_CASES_22[name]), "big")
    n = len(members_model.split_items(whole))
    for cut in range(1, n - 1):
        parts, _ = members_model.split_parts(whole, [cut, cut + 1])
        state, _, _ = _judged(_group("u1", "u2"), [parts[0], parts[2]])
        assert "members" not in state["full"], cut


@settings(max_examples=300, deadline=None)
@given(
    start=st.sets(st.sampled_from(members_model.POOL)),
    ops=FORM_OPS,
    cuts=st.lists(st.integers(1, 20), max_size=3),
)
def test_a_split_request_of_any_forms_is_faithful_to_both_sps(
    start: set[str], ops: list[tuple[str, list[str]]], cuts: list[int]
) -> None:
    """faith22: any request of path and path-less member operations, cut into linked parts
    anywhere and judged part by part, is faithful to both SPs (every named step, over all
    its parts), and a set the state says known whole after its last part is what both
    hold; and no mark of the request is left behind. Where the whole request leaves the set
    known whole, so do its parts (before faith22 a path-less replace with values, or a
    path-less clear after other member operations, left it not known in any cut; before
    faith24 a request with two or more replaces, one path-less, too)."""
    whole = group_event("patch", _patch(*(_form_op(*o) for o in ops)), "r")
    one = judge(_group(*sorted(start)), whole)[1]
    parts, _ = members_model.split_parts(whole, cuts)
    state = _group(*sorted(start))
    effect: dict[str, Any] = {"refs": [], "changes": []}
    for ev in parts:
        got, state = judge(state, ev)
        effect["refs"] += got.get("refs", [])
        effect["changes"] += got.get("changes", [])
    for merges in (False, True):
        after = _sp(start, ops, merges=merges)
        assert _faithful(effect, start, after) == [], (merges, effect)
        if "members" in state["full"]:
            assert state["members"] == members_model.members(after), merges
    for key in (
        *("maybe_req", "maybe_members", "merging", "merged", "merged_i", "merge_n"),
        *("patch_n", "merge_i", "pclear", "cleared"),
    ):
        assert key not in state, state
    if "members" in one["full"]:
        assert "members" in state["full"], (ops, [p.get("x") for p in parts])
