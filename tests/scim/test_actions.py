"""Normalised actions from a diff (effect) and from a request body (intent)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.scim.actions import (
    MAX_MOD_VALUE,
    action,
    derive_actions,
    jcs,
    jcs_digest,
    ocsf_pair,
    op_for_method,
    parse_request,
)
from client.scim.cbor import EventFormatError
from client.scim.event import encode_event, new_event
from client.scim.leaf import pid


def names(acts: list[dict[str, Any]]) -> list[str]:
    return [a["a"] for a in acts]


def mod(attr: str, old: Any = ..., new: Any = ...) -> dict[str, Any]:
    m: dict[str, Any] = {"attr": attr}
    if old is not ...:
        m["old"] = json.dumps(old)
    if new is not ...:
        m["new"] = json.dumps(new)
    return m


# --- OCSF mapping (SCIM.md §3.4 table) ------------------------------------------------------

TABLE = {
    "user.create": ((3001, 1), (3007, 1)),
    "user.update": ((3004, 3), (3007, 2)),
    "user.deactivate": ((3001, 5), (3007, 5)),
    "user.activate": ((3001, 2), (3007, 4)),
    "user.delete": ((3001, 6), (3007, 3)),
    "user.password.set": ((3001, 4), (3007, 9)),
    "user.role.grant": ((3005, 1), (3007, 16)),
    "user.role.revoke": ((3005, 2), (3007, 17)),
    "group.create": ((3006, 6), (3006, 6)),
    "group.delete": ((3006, 5), (3006, 5)),
    "group.member.add": ((3006, 3), (3006, 3)),
    "group.member.remove": ((3006, 4), (3006, 4)),
}


@pytest.mark.parametrize("name", TABLE)
def test_ocsf_table(name: str) -> None:
    v18, v19 = TABLE[name]
    assert ocsf_pair(name) == v18 == ocsf_pair(name, "1.8")
    assert ocsf_pair(name, "1.9") == v19
    assert action(name) == {"a": name, "ocsf": list(v18)}


def test_ocsf_generic_and_unknown_version() -> None:
    assert ocsf_pair("device.create") == (3004, 1)
    assert ocsf_pair("device.update") == (3004, 3)
    assert ocsf_pair("device.delete") == (3004, 4)
    assert ocsf_pair("user.noop") == (3004, 99)
    assert ocsf_pair("device.frobnicate") == (3004, 99)
    assert ocsf_pair("user.entitlement.grant") == ocsf_pair("user.role.grant")
    with pytest.raises(ValueError):
        ocsf_pair("user.create", "2.0")


def test_op_for_method() -> None:
    assert [op_for_method(m) for m in ("POST", "PUT", "PATCH", "DELETE")] == [
        "create",
        "replace",
        "patch",
        "delete",
    ]
    for bad in ("GET", "post", ""):
        with pytest.raises(EventFormatError):
            op_for_method(bad)


# --- effect ---------------------------------------------------------------------------------

DERIVE = [
    # (op, rt, mods, patch, expected)
    ("create", "User", None, None, ["user.create"]),
    (
        "create",
        "Group",
        [mod("members", new=[{"value": "u1"}])],
        None,
        ["group.create", "group.member.add"],
    ),
    ("create", "Group", [mod("members", new=[])], None, ["group.create"]),
    (
        "create",
        "User",
        [mod("roles", new=[{"value": "admin"}]), mod("active", new=False)],
        None,
        ["user.create", "user.role.grant"],
    ),
    ("delete", "User", [mod("active", True, False)], None, ["user.delete"]),
    ("delete", "Group", None, None, ["group.delete"]),
    ("delete", "Device", None, None, ["device.delete"]),
    ("patch", "User", [mod("active", True, False)], None, ["user.deactivate"]),
    ("patch", "User", [mod("active", False, True)], None, ["user.activate"]),
    ("patch", "User", [mod("active", "True", "False")], None, ["user.deactivate"]),
    ("patch", "User", [mod("active", True, True)], None, ["user.noop"]),
    ("patch", "User", [mod("active", new=False)], None, ["user.deactivate"]),
    ("patch", "User", [mod("active", True)], None, ["user.update"]),
    (
        "patch",
        "User",
        [{"attr": "active", "old_d": b"1" * 32, "new_d": b"2" * 32}],
        None,
        ["user.update"],
    ),
    (
        "replace",
        "User",
        [mod("urn:ietf:params:scim:schemas:core:2.0:User:active", True, False)],
        None,
        ["user.deactivate"],
    ),
    (
        "replace",
        "User",
        [mod("Active", True, False), mod("displayName", "a", "b")],
        None,
        ["user.deactivate", "user.update"],
    ),
    ("patch", "User", [{"attr": "password"}], None, ["user.password.set"]),
    (
        "patch",
        "User",
        [mod("roles", [{"value": "a"}], [{"value": "a"}, {"value": "b"}])],
        None,
        ["user.role.grant"],
    ),
    ("patch", "User", [mod("roles", [{"value": "a"}], [])], None, ["user.role.revoke"]),
    (
        "patch",
        "User",
        [mod("roles", [{"value": "a"}], [{"value": "b"}])],
        None,
        ["user.role.grant", "user.role.revoke"],
    ),
    (
        "patch",
        "User",
        [mod("entitlements", None, [{"value": "e"}])],
        None,
        ["user.entitlement.grant"],
    ),
    ("patch", "User", [mod("entitlements", [{"value": "e"}])], None, ["user.entitlement.revoke"]),
    (
        "patch",
        "Group",
        [mod("members", [{"value": "a"}], [{"value": "a"}, {"value": "b"}])],
        None,
        ["group.member.add"],
    ),
    ("patch", "Group", [mod("members", ["a", "b"], ["a"])], None, ["group.member.remove"]),
    (
        "patch",
        "Group",
        [mod("members", [{"value": "a"}], [{"value": "a", "display": "A"}])],
        None,
        ["group.update"],
    ),
    ("patch", "Group", [mod("members", [{"value": "a"}], [{"value": "a"}])], None, ["group.noop"]),
    ("patch", "Group", [{"attr": "members", "new_d": b"x" * 32}], None, ["group.update"]),
    ("patch", "Group", [mod("displayName", "a", "b")], None, ["group.update"]),
    ("patch", "Group", [mod("roles", [], [{"value": "x"}])], None, ["group.update"]),
    ("patch", "User", [mod("members", [], [{"value": "x"}])], None, ["user.update"]),
    ("patch", "User", [], None, ["user.noop"]),
    ("patch", "User", [mod("title", "a", "a")], None, ["user.noop"]),
    ("replace", "Device", [mod("name", "a", "b")], None, ["device.update"]),
    ("replace", "My Thing", [], None, ["my_thing.noop"]),
    ("patch", "User", None, None, ["user.update"]),
    # patch paths only (no mods)
    ("patch", "Group", None, [{"op": "add", "path": "members"}], ["group.member.add"]),
    (
        "patch",
        "Group",
        None,
        [{"op": "remove", "path": 'members[value eq "x"]'}],
        ["group.member.remove"],
    ),
    (
        "patch",
        "Group",
        None,
        [{"op": "replace", "path": "members"}],
        ["group.member.add", "group.member.remove"],
    ),
    (
        "patch",
        "User",
        None,
        [{"op": "add", "path": "roles"}, {"op": "remove", "path": "roles"}],
        ["user.role.grant", "user.role.revoke"],
    ),
    ("patch", "User", None, [{"op": "replace", "path": "password"}], ["user.password.set"]),
    ("patch", "User", None, [{"op": "replace", "path": "active"}], ["user.update"]),
    ("patch", "User", None, [{"op": "replace"}], ["user.update"]),
    ("patch", "User", None, [], ["user.noop"]),
]


@pytest.mark.parametrize(
    "op,rt,mods,patch,expected", DERIVE, ids=[str(i) for i in range(len(DERIVE))]
)
def test_derive_actions(
    op: str, rt: str, mods: list[dict[str, Any]] | None, patch: Any, expected: list[str]
) -> None:
    acts = derive_actions(op, rt, mods=mods, patch=patch)
    assert names(acts) == expected
    for a in acts:
        assert a["ocsf"] == list(ocsf_pair(a["a"]))


def test_derive_actions_ocsf_19() -> None:
    acts = derive_actions("patch", "User", mods=[mod("active", True, False)], ocsf="1.9")
    assert acts == [{"a": "user.deactivate", "ocsf": [3007, 5]}]


def test_derive_actions_rejects_bad_input() -> None:
    with pytest.raises(EventFormatError):
        derive_actions("upsert", "User")
    with pytest.raises(EventFormatError):
        derive_actions("patch", "User", mods=[{"old": "1"}])


@given(
    st.permutations(
        [
            mod("active", True, False),
            mod("roles", [], [{"value": "r"}]),
            {"attr": "password"},
            mod("title", "a", "b"),
        ]
    )
)
def test_derive_actions_order_is_canonical(mods: list[dict[str, Any]]) -> None:
    assert names(derive_actions("patch", "User", mods=mods)) == [
        "user.deactivate",
        "user.password.set",
        "user.role.grant",
        "user.update",
    ]


# --- intent ---------------------------------------------------------------------------------

PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def patch_body(*ops: dict[str, Any]) -> bytes:
    return json.dumps({"schemas": [PATCH_SCHEMA], "Operations": list(ops)}).encode()


def test_entra_deactivate_string_boolean() -> None:
    ri = parse_request(
        "patch", "User", patch_body({"op": "Replace", "path": "active", "value": "False"})
    )
    assert names(ri.acts) == ["user.deactivate"]
    assert ri.mods == [{"attr": "active", "op": "replace", "new": "false"}]
    assert ri.patch == [{"op": "replace", "path": "active", "v_d": jcs_digest("False")}]
    assert ri.refs is None


@pytest.mark.parametrize("value", [True, "True", "true", "TRUE"])
def test_activate_forms(value: Any) -> None:
    for body in (
        patch_body({"op": "replace", "path": "active", "value": value}),
        patch_body({"op": "Replace", "value": {"active": value}}),
        patch_body(
            {"op": "add", "value": {"urn:ietf:params:scim:schemas:core:2.0:User:active": value}}
        ),
    ):
        ri = parse_request("patch", "User", body)
        assert names(ri.acts) == ["user.activate"]
        assert ri.mods is not None and ri.mods[0]["new"] == "true"


def test_pathless_value_is_expanded() -> None:
    ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    body = patch_body(
        {
            "op": "Add",
            "value": {"displayName": "Bab", ent: {"department": "R&D", "manager": {"value": "m1"}}},
        }
    )
    ri = parse_request("patch", "User", body)
    assert ri.mods == [
        {"attr": "displayName", "op": "add", "new": '"Bab"'},
        {"attr": f"{ent}:department", "op": "add", "new": '"R&D"'},
        {"attr": f"{ent}:manager", "op": "add", "new": '{"value":"m1"}'},
    ]
    assert names(ri.acts) == ["user.update"]
    assert ri.patch == [
        {"op": "add", "v_d": jcs_digest(json.loads(body)["Operations"][0]["value"])}
    ]


def test_group_members_add_and_remove() -> None:
    body = patch_body(
        {"op": "Add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]},
        {"op": "Remove", "path": 'members[value eq "u3"]'},
    )
    ri = parse_request("patch", "Group", body)
    assert names(ri.acts) == ["group.member.add", "group.member.remove"]
    assert ri.mods == [
        {"attr": "members", "op": "add", "new": '[{"value":"u1"},{"value":"u2"}]'},
        # the filter is kept
        {"attr": 'members[value eq "u3"]', "op": "remove", "old": '[{"value":"u3"}]'},
    ]
    assert ri.patch is not None
    assert ri.patch[1] == {"op": "remove", "path": 'members[value eq "u3"]'}


def test_entra_member_remove_with_value() -> None:
    body = patch_body({"op": "Remove", "path": "members", "value": [{"value": "u9"}]})
    ri = parse_request("patch", "Group", body)
    assert names(ri.acts) == ["group.member.remove"]
    assert ri.mods == [{"attr": "members", "op": "remove", "old": '[{"value":"u9"}]'}]


def test_replace_members_may_add_and_remove() -> None:
    ri = parse_request(
        "patch",
        "Group",
        patch_body({"op": "replace", "path": "members", "value": [{"value": "a"}]}),
    )
    assert names(ri.acts) == ["group.member.add", "group.member.remove"]
    ri = parse_request(
        "patch", "Group", patch_body({"op": "replace", "path": "members", "value": []})
    )
    assert names(ri.acts) == ["group.member.remove"]


def test_roles_and_entitlements() -> None:
    body = patch_body(
        {"op": "add", "path": "roles", "value": [{"value": "admin"}]},
        {"op": "remove", "path": 'entitlements[value eq "e1"]'},
    )
    assert names(parse_request("patch", "User", body).acts) == [
        "user.role.grant",
        "user.entitlement.revoke",
    ]


def test_password_never_recorded() -> None:
    secret = "hunter2-Sup3r-s3cret"
    body = patch_body(
        {"op": "replace", "path": "password", "value": secret},
        {"op": "replace", "value": {"password": secret, "title": "x"}},
    )
    ri = parse_request("patch", "User", body)
    assert names(ri.acts) == ["user.password.set", "user.update"]
    assert ri.mods == [
        {"attr": "password", "op": "replace"},
        {"attr": "password", "op": "replace"},
        {"attr": "title", "op": "replace", "new": '"x"'},
    ]
    assert ri.patch == [{"op": "replace", "path": "password"}, {"op": "replace"}]
    ev = new_event(**_event_args("patch", "User"), **ri.event_fields())
    data = encode_event(ev)
    assert secret.encode() not in data
    for candidate in (secret, {"password": secret, "title": "x"}):
        assert jcs_digest(candidate) not in data
        assert hashlib.sha256(secret.encode()).digest() not in data


def test_digest_attrs_and_large_values() -> None:
    body = patch_body(
        {"op": "replace", "path": "emails", "value": [{"value": "b@example.com"}]},
        {"op": "replace", "path": "photos", "value": "x" * MAX_MOD_VALUE},
    )
    ri = parse_request("patch", "User", body, digest_attrs=["Emails"])
    assert ri.mods == [
        {"attr": "emails", "op": "replace", "new_d": jcs_digest([{"value": "b@example.com"}])},
        {"attr": "photos", "op": "replace", "new_d": jcs_digest("x" * MAX_MOD_VALUE)},
    ]


def test_member_ids_pseudonymised() -> None:
    keys = {"u1": b"1" * 32, "u2": b"2" * 32, "u3": b"3" * 32}

    def ref_pid(rt: str, member_id: str) -> bytes:
        return pid(keys[member_id], member_id)

    body = patch_body(
        {
            "op": "add",
            "path": "members",
            "value": [{"value": "u1", "type": "User"}, {"value": "u2"}],
        },
        {"op": "remove", "path": 'members[value eq "u3"]'},
    )
    ri = parse_request("patch", "Group", body, ref_pid=ref_pid)
    p3 = pid(keys["u3"], "u3")
    assert ri.refs == [
        {"rt": "User", "pid": pid(keys["u1"], "u1"), "op": "add", "attr": "members"},
        {"rt": "User", "pid": pid(keys["u2"], "u2"), "op": "add", "attr": "members"},
        {"rt": "User", "pid": p3, "op": "remove", "attr": "members"},
    ]
    # The filter is kept, naming the member by pseudonym only.
    filtered = 'members[value eq "pid:' + base64.b64encode(p3).decode() + '"]'
    assert ri.mods == [{"attr": "members", "op": "add"}, {"attr": filtered, "op": "remove"}]
    assert ri.patch == [{"op": "add", "path": "members"}, {"op": "remove", "path": filtered}]
    data = encode_event(new_event(**_event_args("patch", "Group"), **ri.event_fields()))
    for member in keys:
        assert member.encode() not in data


def test_put_claims_little() -> None:
    body = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": "u1",
        "meta": {"version": 'W/"1"'},
        "userName": "bjensen",
        "active": True,
        "roles": [{"value": "admin"}],
    }
    ri = parse_request("replace", "User", body)
    assert names(ri.acts) == ["user.update"]
    assert ri.patch is None
    assert ri.mods is not None and [m["attr"] for m in ri.mods] == ["userName", "active", "roles"]
    body["active"] = "False"
    body["password"] = "pw"
    assert names(parse_request("replace", "User", body).acts) == [
        "user.deactivate",
        "user.password.set",
        "user.update",
    ]
    group = {"displayName": "g", "members": [{"value": "u"}]}
    assert names(parse_request("replace", "Group", group).acts) == ["group.update"]


def test_post_create() -> None:
    ri = parse_request("create", "Group", b'{"displayName":"g","members":[{"value":"u"}]}')
    assert names(ri.acts) == ["group.create", "group.member.add"]
    ri = parse_request("create", "User", {"userName": "b", "password": "p", "roles": []})
    assert names(ri.acts) == ["user.create"]
    assert ri.mods == [
        {"attr": "userName", "new": '"b"'},
        {"attr": "password"},
        {"attr": "roles", "new": "[]"},
    ]


def test_delete() -> None:
    for body in (None, b"", ""):
        ri = parse_request("delete", "User", body)
        assert names(ri.acts) == ["user.delete"] and ri.mods is None and ri.patch is None
    with pytest.raises(EventFormatError):
        parse_request("delete", "User", b"{}")


def test_case_insensitive_keys_and_ops() -> None:
    body = b'{"operations":[{"OP":"REMOVE","Path":"roles"}]}'
    assert names(parse_request("patch", "User", body).acts) == ["user.role.revoke"]


def test_floats_in_bodies_are_fine() -> None:
    ri = parse_request(
        "patch", "Device", patch_body({"op": "replace", "path": "weight", "value": 1.50})
    )
    assert ri.mods == [{"attr": "weight", "op": "replace", "new": "1.5"}]
    assert jcs(1e21) == "1e+21"


BAD_BODIES: list[tuple[str, Any]] = [
    ("patch", b"not json"),
    ("patch", b"[]"),
    ("patch", b'{"Operations":[]}'),
    ("patch", b'{"Operations":{}}'),
    ("patch", b"{}"),
    ("patch", b'{"Operations":[1]}'),
    ("patch", b'{"Operations":[{"op":"move","path":"a"}]}'),
    ("patch", b'{"Operations":[{"path":"a","value":1}]}'),
    ("patch", b'{"Operations":[{"op":"remove"}]}'),
    ("patch", b'{"Operations":[{"op":"add","value":1}]}'),
    ("patch", b'{"Operations":[{"op":"add","value":{}}]}'),
    ("patch", b'{"Operations":[{"op":"add","path":"","value":1}]}'),
    ("patch", b'{"Operations":[{"op":"add","path":5,"value":1}]}'),
    ("patch", b'{"Operations":[{"op":"add","path":"a","value":NaN}]}'),
    ("patch", b'{"Operations":[{"op":"add","path":"a","path":"b","value":1}]}'),
    ("patch", b'{"Operations":[{"op":"add","path":"a","value":1}]}' + b"x"),
    ("patch", b'\xff{"Operations":[{"op":"add","path":"a","value":1}]}'),
    ("patch", b"[" * 100000),
    ("patch", b" " * (1 << 20) + b"{}"),
    ("patch", None),
    ("create", b"[1]"),
    ("create", None),
    ("upsert", b"{}"),
]


@pytest.mark.parametrize("op,body", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_bodies_rejected(op: str, body: Any) -> None:
    with pytest.raises(EventFormatError):
        parse_request(op, "User", body)


def test_intent_event_is_marked() -> None:
    ri = parse_request(
        "patch", "User", patch_body({"op": "replace", "path": "active", "value": False})
    )
    fields = ri.event_fields()
    assert fields["intent"] is True
    ev = new_event(**_event_args("patch", "User"), **fields)
    assert ev["intent"] is True and names(ev["acts"]) == ["user.deactivate"]


def _event_args(op: str, rt: str) -> dict[str, Any]:
    return {
        "tenant": "t",
        "sp": "sp",
        "op": op,
        "rt": rt,
        "rid": "r1",
        "actor": {"kind": "system"},
        "corr": "req",
        "req": {"m": "PATCH", "p": "/x", "dig": bytes(32), "len": 1},
        "res": 204,
        "outcome": "success",
    }
