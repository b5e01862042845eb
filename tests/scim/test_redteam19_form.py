"""Red team 19: ``mods[].form`` where it must not be. The schema admitted ``"form"`` on any
entry of ``mods`` (only its value was checked), so the log stored it on an ``add``, on
``emails``, with an ``old`` side, on a PUT: two byte forms of one meaning (an entry with and one
without it), and a ``form`` the log's effects read to judge a clear (tlog.scim.effects)
where it says nothing. Now the log's intake refuses it anywhere but where the adapter puts
it (``client.scim.event.check_forms``, called by ``ScimService.check_events``); the two
parse paths still agree byte for byte on every mix (a differential with hypothesis), and
events stored before the rule still validate where they are read again. The HTTP routes:
tests/scim_service/test_redteam19_form_routes.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim import EventFormatError, event_from_json, event_to_json, fastjson
from client.scim.actions import ENTERPRISE_MANAGER, parse_request
from client.scim.event import check_forms, encode_event
from tests.scim.helpers import full_event

MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
assert MANAGER.lower() == ENTERPRISE_MANAGER


def event_text(
    mods: list[dict[str, Any]], *, rt: str = "Group", op: str = "patch", intent: bool = True
) -> bytes:
    """A valid event's JSON form with ``mods`` put in as given (not validated), and a
    ``patch`` the entries could come from (a ``replace`` with their path, or path-less for
    ``form: "value"``): the form then stands or falls by where it is, not by the patch
    (faith20's cross-check, test_a_form_contradicting_the_patch_is_refused)."""
    ev = full_event()
    del ev["mods"]
    obj = json.loads(event_to_json(ev))
    patch = [
        {"op": m.get("op", "replace")}
        if m.get("form") == "value"
        else {"op": m.get("op", "replace"), "path": m["attr"]}
        for m in mods
    ]
    obj.update(rt=rt, op=op, mods=mods, patch=patch)
    if not intent:
        del obj["intent"]
    return json.dumps(obj).encode()


def parse_both(text: bytes) -> tuple[Any, Any]:
    """(the reference path's (event, bytes) or its error, the fast path's answer)."""
    try:
        ev = event_from_json(text)
        ref: Any = (ev, encode_event(ev))
    except EventFormatError as e:
        ref = e
    return ref, fastjson.decode_event_json(text)


MISPLACED = {
    "on an add": ({"attr": "members", "op": "add", "new": "null", "form": "path"}, {}),
    "on a remove": ({"attr": "roles", "op": "remove", "form": "value"}, {"rt": "User"}),
    "without an op": ({"attr": "members", "new": "null", "form": "path"}, {}),
    "on emails": ({"attr": "emails", "op": "replace", "new": "[]", "form": "value"}, {}),
    "with an old side": (
        {"attr": "roles", "op": "replace", "old": "[]", "form": "path"},
        {"rt": "User"},
    ),
    "members of a User": ({"attr": "members", "op": "replace", "form": "value"}, {"rt": "User"}),
    "roles of a Group": ({"attr": "roles", "op": "replace", "form": "value"}, {}),
    "on a PUT": (
        {"attr": "members", "op": "replace", "new": "null", "form": "path"},
        {"op": "replace"},
    ),
}


def refused_at_intake(ev: Any) -> str | None:
    try:
        check_forms(ev)
    except EventFormatError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name", sorted(MISPLACED))
def test_a_misplaced_form_is_refused_at_intake_and_parsed_alike(name: str) -> None:
    mod, kw = MISPLACED[name]
    ref, fast = parse_both(event_text([mod], **kw))
    assert not isinstance(ref, EventFormatError), (name, ref)  # the schema: stored ones read
    assert fast is None or fast[1] == ref[1]
    why = refused_at_intake(ref[0])
    assert why is not None and "$.mods[0].form" in why, (name, why)


@pytest.mark.parametrize("form", ["both", "", "PATH", 1, None, True, ["path"]])
def test_an_unknown_form_is_refused_by_both_paths(form: Any) -> None:
    # Holds (the schema's enumeration): guards that only "path" and "value" are forms.
    mod = {"attr": "members", "op": "replace", "new": "null", "form": form}
    ref, fast = parse_both(event_text([mod]))
    assert isinstance(ref, EventFormatError) and fast is None


BODIES = [
    ("Group", {"op": "replace", "path": "members"}),
    ("Group", {"op": "Replace", "path": "members", "value": []}),
    ("Group", {"op": "replace", "value": {"members": []}}),
    ("Group", {"op": "replace", "path": 'members[value eq "u1"]'}),
    ("User", {"op": "replace", "path": "roles", "value": None}),
    ("User", {"op": "replace", "value": {"roles": [], "entitlements": ""}}),
    ("User", {"op": "replace", "path": "entitlements", "value": {}}),
    ("User", {"op": "replace", "path": MANAGER}),
    ("User", {"op": "replace", "value": {MANAGER: None}}),
    ("User", {"op": "replace", "path": "roles.value"}),
]


@pytest.mark.parametrize("digest", [(), ("roles", "entitlements")])
@pytest.mark.parametrize(("rt", "patch_op"), BODIES)
def test_every_form_the_adapter_makes_is_accepted_by_both_paths(
    rt: str, patch_op: dict[str, Any], digest: tuple[str, ...]
) -> None:
    """Holds: guards that the rule refuses nothing the adapter writes (digested values too)."""
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [patch_op]}
    intent = parse_request("patch", rt, body, digest_attrs=digest, ref_pid=lambda t, i: b"p" * 16)
    assert intent.mods is not None and any("form" in m for m in intent.mods), intent.mods
    ev = full_event()
    ev.update(rt=rt, mods=intent.mods, patch=intent.patch)
    text = event_to_json(ev).encode()
    ref, fast = parse_both(text)
    assert not isinstance(ref, EventFormatError), ref
    assert fast is not None and fast[1] == ref[1]
    assert refused_at_intake(ref[0]) is None


FILTERED = 'members[value eq "pid:cGNwY3BjcGNwY3BjcGNwYw=="]'
ATTRS = ["members", "roles", "entitlements", "emails", MANAGER, "ROLES", "roles.value",
         FILTERED, "displayName", "urn:x:y:members"]  # fmt: skip
NEWS = [None, "null", "[]", "{}", '""', '[{"value":"r"}]', '"x"', "0", "false"]


def oracle(ev: dict[str, Any], mod: dict[str, Any]) -> bool:
    """Where a form may stand, spelled out independently of the code."""
    key = mod["attr"].lower().split("[")[0].split(".")[0]
    if key.startswith("urn:"):
        key = "manager" if mod["attr"] == MANAGER else "urn"
    allowed = {"Group": {"members"}, "User": {"roles", "entitlements", "manager"}}[ev["rt"]]
    return (
        ev["op"] == "patch" and mod.get("op") == "replace" and key in allowed and "old" not in mod
    )


@st.composite
def form_events(draw: st.DrawFn) -> tuple[bytes, bool]:
    n = draw(st.integers(1, 3))
    mods = []
    for _ in range(n):
        m: dict[str, Any] = {"attr": draw(st.sampled_from(ATTRS))}
        op = draw(st.sampled_from([None, "add", "remove", "replace", "replace"]))
        if op is not None:
            m["op"] = op
        new = draw(st.sampled_from(NEWS))
        if new is not None:
            m["new"] = new
        if draw(st.booleans()) and draw(st.booleans()):
            m["old"] = '"o"'
        form = draw(st.sampled_from([None, "path", "value"]))
        if form is not None:
            m["form"] = form
        mods.append(m)
    rt = draw(st.sampled_from(["User", "Group"]))
    op = draw(st.sampled_from(["patch", "patch", "replace"]))
    intent = draw(st.booleans()) or draw(st.booleans())
    shape = {"rt": rt, "op": op, "intent": True if intent else None}
    ok = all("form" not in m or oracle(shape, m) for m in mods)
    return event_text(mods, rt=rt, op=op, intent=intent), ok


@given(form_events())
@settings(max_examples=300, deadline=None)
def test_both_paths_agree_on_forms(case: tuple[bytes, bool]) -> None:
    text, ok = case
    ref, fast = parse_both(text)
    assert not isinstance(ref, EventFormatError), (text, ref)
    assert (refused_at_intake(ref[0]) is None) is ok, (text, ref)
    assert fast is None or fast[1] == ref[1]
    batch = fastjson.decode_batch(b'{"events":[' + text + b"]}")
    assert batch is None or batch[0][1] == ref[1]


def test_a_path_cut_to_its_digest_carries_no_form() -> None:
    # A path over 512 bytes is recorded as "sha256:<hex>" (no attribute the log can read):
    # a form there decides nothing, and the validator refuses it, so the adapter leaves it
    # out (its event would otherwise be refused).
    path = "roles." + "x" * 600
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": path}],
    }
    intent = parse_request("patch", "User", body)
    assert intent.mods is not None and intent.mods[0]["attr"].startswith("sha256:")
    assert "form" not in intent.mods[0]
    ev = full_event()
    ev.update(mods=intent.mods)
    check_forms(ev)


def _patch_event(rt: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}
    intent = parse_request("patch", rt, body, ref_pid=lambda t, i: b"p" * 16)
    ev = full_event()
    ev.update(rt=rt, mods=intent.mods, patch=intent.patch)
    ev.pop("x", None)
    return ev


CONTRADICTIONS = [
    # (resource type, operations, entry to alter, its new form)
    ("Group", [{"op": "replace", "value": {"members": []}}], 0, "path"),
    ("Group", [{"op": "replace", "path": "members", "value": []}], 0, "value"),
    ("User", [{"op": "replace", "path": "roles", "value": [{"value": "r"}]}], 0, "value"),
    ("User", [{"op": "replace", "value": {"roles": [{"value": "r"}]}}], 0, "path"),
    ("User", [{"op": "replace", "path": MANAGER}], 0, "value"),
    # numbered: the form must be the one of its own PatchOp (patch[i])
    (
        "Group",
        [
            {"op": "add", "path": "members", "value": [{"value": "u1"}]},
            {"op": "replace", "value": {"members": []}},
            {"op": "replace", "path": "members", "value": []},
        ],
        1,
        "path",
    ),
]


@pytest.mark.parametrize("case", range(len(CONTRADICTIONS)))
def test_a_form_contradicting_the_patch_is_refused(case: int) -> None:
    """faith20: a ``form`` is checked against the event's own ``patch`` items: ``"path"``
    where the replace had no path (or ``"value"`` where it named one) would have the log
    judge a clear or a replace by the form the request did not have. Before, only where a
    form may stand was checked."""
    rt, ops, at, form = CONTRADICTIONS[case]
    ev = _patch_event(rt, ops)
    assert refused_at_intake(ev) is None  # as the adapter made it
    assert ev["mods"][at].get("form") not in (None, form), ev["mods"]
    ev["mods"][at]["form"] = form
    why = refused_at_intake(ev)
    assert why is not None and f"$.mods[{at}].form" in why, why
    # the patch without the PatchOp the form came from: refused as well
    ev = _patch_event(rt, ops)
    ev["patch"] = [p for p in ev["patch"] if p["op"] != "replace"] or [{"op": "add"}]
    assert refused_at_intake(ev) is not None


def test_a_split_part_is_not_cross_checked() -> None:
    """Holds by design: a part of a split request carries its ``mods`` apart from the
    ``patch`` items (other parts), so there the form is taken as written."""
    ev = _patch_event("Group", [{"op": "replace", "path": "members", "value": []}])
    ev["mods"][0]["form"] = "value"
    ev["x"] = {"part": 1, "parts": 2, "first": "0" * 36}
    del ev["patch"]
    assert refused_at_intake(ev) is None
