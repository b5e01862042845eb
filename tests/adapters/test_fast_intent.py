"""The intent parser's fast path (client.scim.actions._fast_intent, for the common POST and
PatchOp shapes the proxy sees) gives exactly what the general path gives: the same acts,
patch, mods and refs, with the same types and member order; every body it is not sure about
goes to the general path (errors included)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim.actions import _fast_intent, _parse_request, parse_request
from client.scim.cbor import EventFormatError

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCHOP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def typed(v: Any) -> Any:
    """``v`` with every scalar's type made visible and the members' order kept."""
    if isinstance(v, dict):
        return ("dict", [(k, typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("list", [typed(x) for x in v])
    return (type(v).__name__, repr(v))


def pid(rt: str, ref_id: str) -> bytes:
    return (rt + ":" + ref_id).encode()[:16].ljust(16, b"\0")


def positional(kw: dict[str, Any]) -> tuple[Any, ...]:
    """The settings after the body that both parsers take positionally (ocsf, secret and
    digest attributes, ref_pid): ``kw``'s, else parse_request's defaults."""
    return (
        kw.get("ocsf", "1.8"),
        kw.get("secret_attrs", ("password",)),
        kw.get("digest_attrs", ()),
        kw.get("ref_pid"),
    )


def general(op: str, rt: str, body: Any, **kw: Any) -> Any:
    try:
        ri = _parse_request(op, rt, body, *positional(kw))
    except (EventFormatError, ValueError) as exc:
        return ("error", type(exc).__name__, str(exc))
    return typed(ri.__dict__)


def same_as_general(op: str, rt: str, body: Any, **kw: Any) -> bool:
    """Assert parse_request and the fast path (when it answers) equal the general path;
    return whether the fast path answered."""
    want = general(op, rt, body, **kw)
    try:
        got = typed(parse_request(op, rt, body, **kw).__dict__)
    except (EventFormatError, ValueError) as exc:
        got = ("error", type(exc).__name__, str(exc))
    assert got == want
    fast = _fast_intent(op, rt, body, *positional(kw))
    if fast is None:
        return False
    assert typed(fast.__dict__) == want
    return True


def test_the_bench_shapes_take_the_fast_path() -> None:
    create = {"schemas": [USER], "userName": "bench-1-2-3-4", "displayName": "Bench User"}
    patch = {
        "schemas": [PATCHOP],
        "Operations": [{"op": "replace", "path": "displayName", "value": "d-1-2"}],
    }
    assert same_as_general("create", "User", create)
    assert same_as_general("patch", "User", patch)
    assert same_as_general("create", "User", create, ref_pid=pid)
    assert same_as_general("patch", "User", patch, ref_pid=pid)


def test_the_special_attributes_match() -> None:
    for body in (
        {"userName": "a", "active": "False", "password": "s3cret", "id": "x", "meta": {}},
        {"userName": "a", "roles": [{"value": "admin"}], "entitlements": []},
        {"displayName": "g", "members": [{"value": "u1"}]},
        {"userName": "x" * 20000},
    ):
        for rt in ("User", "Group", "Thing"):
            assert same_as_general("create", rt, body)
            assert same_as_general("create", rt, body, digest_attrs=("username",))
    ops = [
        {"op": "Replace", "path": "active", "value": "False"},
        {"op": "add", "path": "roles", "value": [{"value": "r"}]},
        {"op": "remove", "path": "roles", "value": [{"value": "r"}]},
        {"op": "remove", "path": "entitlements"},
        {"op": "replace", "path": "password", "value": "p"},
        {"op": "remove", "path": "password"},
        {"op": "replace", "path": "name.givenName", "value": "J"},
        {"op": "add", "path": "members", "value": [{"value": "u1"}]},
        {"op": "remove", "path": "displayName", "value": None},
    ]
    for rt in ("User", "Group"):
        for op in ops:
            assert same_as_general("patch", rt, {"Operations": [op]})
        assert same_as_general("patch", rt, {"operations": ops})


def test_shapes_left_to_the_general_path() -> None:
    # Pseudonymised references, filters, URNs, path-less values, other members, errors.
    for body in (
        {"Operations": [{"op": "add", "path": "members", "value": [{"value": "u1"}]}]},
        {"Operations": [{"op": "remove", "path": 'members[value eq "u1"]'}]},
        {"Operations": [{"op": "replace", "value": {"displayName": "x"}}]},
        {"Operations": [{"op": "replace", "path": f"{USER}:displayName", "value": "x"}]},
        {"Operations": [{"op": "replace", "path": "displayName", "value": "x", "x": 1}]},
        {"Operations": [{"op": "move", "path": "displayName"}]},
        {"Operations": []},
        {"Operations": "x"},
        {},
    ):
        assert not same_as_general("patch", "Group", body, ref_pid=pid)
    for body in (
        {"displayName": "g", "members": [{"value": "u1"}]},
        {"name.givenName": "x"},
        {"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": "m"}},
    ):
        assert not same_as_general("create", "Group", body, ref_pid=pid)
    assert not same_as_general("create", "User", {"userName": "a"}, ocsf="2.0")
    with pytest.raises(ValueError, match="OCSF"):
        parse_request("create", "User", {"userName": "a"}, ocsf="2.0")


def test_ocsf_19_and_custom_secret_sets() -> None:
    body = {"userName": "a", "active": False, "Token": "t", "password": "p"}
    for secret in (("password",), ("token",), frozenset({"TOKEN"}), ["Password"], ()):
        assert same_as_general("create", "User", body, secret_attrs=secret, ocsf="1.9")
        ops = {"Operations": [{"op": "replace", "path": "token", "value": "v"}]}
        assert same_as_general("patch", "User", ops, secret_attrs=secret, ocsf="1.9")


names = st.sampled_from(
    [
        "userName",
        "displayName",
        "active",
        "password",
        "roles",
        "entitlements",
        "members",
        "emails",
        "name",
        "name.givenName",
        "id",
        "schemas",
        "Meta",
        "ROLES",
        "x-y_z$",
        "urn:x:y",
        f"{USER}:userName",
        'emails[type eq "work"].value',
        'members[value eq "u"]',
        "",
        "a" * 130,
        "é",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(["True", "false", "FALSE", "x", ""]),
    st.text(max_size=8),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["value", "type", "display", "Value"]), inner, max_size=3),
    ),
    max_leaves=6,
)
patch_ops = st.dictionaries(
    st.sampled_from(["op", "path", "value", "Op", "PATH", "x"]),
    st.one_of(
        st.sampled_from(["add", "remove", "replace", "Replace", "REMOVE", "move"]), names, values
    ),
    max_size=4,
)


@settings(max_examples=600, deadline=None)
@given(
    rt=st.sampled_from(["User", "Group", "Widget"]),
    body=st.dictionaries(names, values, max_size=6),
    secret=st.sampled_from([("password",), (), ("displayname", "ROLES")]),
    digest=st.sampled_from([(), ("username",), ("emails", "name")]),
    ocsf=st.sampled_from(["1.8", "1.9"]),
    refs=st.booleans(),
)
def test_create_bodies_equal_the_general_path(
    rt: str, body: dict[str, Any], secret: Any, digest: Any, ocsf: str, refs: bool
) -> None:
    kw = {"secret_attrs": secret, "digest_attrs": digest, "ocsf": ocsf}
    same_as_general("create", rt, body, ref_pid=pid if refs else None, **kw)


@settings(max_examples=600, deadline=None)
@given(
    rt=st.sampled_from(["User", "Group", "Widget"]),
    ops=st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"op": st.sampled_from(["add", "remove", "replace", "Add"]), "path": names},
                optional={"value": values},
            ),
            patch_ops,
        ),
        max_size=4,
    ),
    key=st.sampled_from(["Operations", "operations", "OPERATIONS", "ops"]),
    secret=st.sampled_from([("password",), (), ("displayname", "ROLES")]),
    digest=st.sampled_from([(), ("displayname",), ("roles", "name")]),
    ocsf=st.sampled_from(["1.8", "1.9"]),
    refs=st.booleans(),
)
def test_patch_bodies_equal_the_general_path(
    rt: str, ops: list[Any], key: str, secret: Any, digest: Any, ocsf: str, refs: bool
) -> None:
    kw = {"secret_attrs": secret, "digest_attrs": digest, "ocsf": ocsf}
    body = {"schemas": [PATCHOP], key: ops}
    same_as_general("patch", rt, body, ref_pid=pid if refs else None, **kw)
