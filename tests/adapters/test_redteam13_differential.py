"""Red team 13: are the log's effects faithful to what a real SP did? A differential,
model-free check: random sequences of SCIM writes (PATCH add/replace/remove with and without
value filters, path-less replaces, string booleans, roles, entitlements, the enterprise
manager, group member lists, PUTs that restate some attributes and leave others out,
DELETE; bodies gzip-compressed, with a UTF-8 BOM, in UTF-16LE, with duplicate members) go
through the audit middleware to scim2-server. Around each write the SP's stored resource is
read directly (not through the adapter); the auditor reads the events back from the log
(search by resource, verified and decrypted) and every effect is compared with the SP's
before/after (``differential.disagreements``): a claimed activation, deactivation, member
or manager added or removed, role granted or revoked, or "nothing changed" must be what the
SP did, and what the SP changed must be named (or marked not known).

The SP is only the oracle of what happened; no model of it is involved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .differential import ENT, POOL, Driver, reading_sp
from .helpers import scim_asgi_app
from .rig import make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ROLES = ["admin", "dev", "ops"]

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")


def _p(i: int) -> str:
    return "{P" + str(i) + "}"


# --- the writes --------------------------------------------------------------------------

users = st.lists(st.integers(0, POOL - 1), max_size=POOL, unique=True)
boolish = st.sampled_from([True, False, "True", "False"])

user_op = st.one_of(
    st.builds(lambda b: {"op": "replace", "path": "active", "value": b}, boolish),
    st.builds(lambda b: {"op": "replace", "value": {"active": b}}, st.booleans()),
    st.builds(
        lambda op, key, rs: {"op": op, "path": key, "value": [{"value": r} for r in rs]},
        st.sampled_from(["add", "replace"]),
        st.sampled_from(["roles", "entitlements"]),
        st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True),
    ),
    st.builds(
        lambda key, r: {"op": "remove", "path": f'{key}[value eq "{r}"]'},
        st.sampled_from(["roles", "entitlements"]),
        st.sampled_from(ROLES),
    ),
    st.builds(
        lambda op, i: {"op": op, "path": f"{ENT}:manager", "value": {"value": _p(i)}},
        st.sampled_from(["add", "replace"]),
        st.integers(0, POOL - 1),
    ),
    st.just({"op": "remove", "path": f"{ENT}:manager"}),
    st.just({"op": "remove", "path": "active"}),
    st.just({"op": "add", "path": "emails", "value": [{"type": "home", "value": "h@x.test"}]}),
    st.just({"op": "remove", "path": 'emails[type eq "home"]'}),
    st.builds(
        lambda n: {
            "op": "replace",
            "path": 'emails[type eq "work"].value',
            "value": f"w{n}@x.test",
        },
        st.integers(0, 2),
    ),
    st.builds(
        lambda n: {"op": "replace", "path": "displayName", "value": f"D{n}"}, st.integers(0, 2)
    ),
)


@st.composite
def user_put(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [USER, ENT], "userName": "{T_NAME}"}
    if draw(st.booleans()):
        body["active"] = draw(st.booleans())
    if draw(st.booleans()):
        body["roles"] = [{"value": r} for r in draw(st.lists(st.sampled_from(ROLES), unique=True))]
    if draw(st.booleans()):
        body["emails"] = [{"type": "work", "value": f"w{draw(st.integers(0, 2))}@x.test"}]
    if draw(st.booleans()):
        body[ENT] = {"manager": {"value": _p(draw(st.integers(0, POOL - 1)))}}
    if draw(st.booleans()):
        body["displayName"] = f"D{draw(st.integers(0, 2))}"
    return body


group_op = st.one_of(
    st.builds(
        lambda op, ms: {"op": op, "path": "members", "value": [{"value": _p(i)} for i in ms]},
        st.sampled_from(["add", "replace"]),
        users,
    ),
    st.builds(
        lambda i: {"op": "remove", "path": f'members[value eq "{_p(i)}"]'},
        st.integers(0, POOL - 1),
    ),
    st.just({"op": "remove", "path": "members"}),
    st.builds(
        lambda n: {"op": "replace", "path": "displayName", "value": f"G{n}"}, st.integers(0, 2)
    ),
)


@st.composite
def group_put(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [GROUP], "displayName": "{G_NAME}"}
    if draw(st.booleans()):
        body["members"] = [{"value": _p(i)} for i in draw(users)]
    return body


def _patch(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": ops}


write = st.one_of(
    st.tuples(
        st.just("PATCH"), st.just("T"), st.lists(user_op, min_size=1, max_size=3).map(_patch)
    ),
    st.tuples(st.just("PUT"), st.just("T"), user_put()),
    st.tuples(
        st.just("PATCH"), st.just("G"), st.lists(group_op, min_size=1, max_size=3).map(_patch)
    ),
    st.tuples(st.just("PUT"), st.just("G"), group_put()),
    st.tuples(st.just("DELETE"), st.sampled_from(["T", "G"]), st.none()),
)
encoding = st.sampled_from(["plain", "plain", "plain", "gzip", "bom", "utf16", "dup"])


@st.composite
def program(draw: st.DrawFn) -> dict[str, Any]:
    user: dict[str, Any] = {
        "schemas": [USER, ENT],
        "userName": "{T_NAME}",
        "active": draw(st.booleans()),
    }
    if draw(st.booleans()):
        user["roles"] = [{"value": r} for r in draw(st.lists(st.sampled_from(ROLES), unique=True))]
    if draw(st.booleans()):
        user[ENT] = {"manager": {"value": _p(draw(st.integers(0, POOL - 1)))}}
    group = {
        "schemas": [GROUP],
        "displayName": "{G_NAME}",
        "members": [{"value": _p(i)} for i in draw(users)],
    }
    writes = draw(st.lists(st.tuples(write, encoding), min_size=1, max_size=6))
    return {"user": user, "group": group, "writes": writes}


def test_effects_match_what_the_sp_did(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    sp = scim_asgi_app()
    with make_rig(harness, tmp_path, app=reading_sp(sp)) as rig:
        driver = Driver(rig, sp)

        @settings(
            max_examples=int(os.environ.get("RT13_EXAMPLES", "150")),
            deadline=None,
            derandomize="RT13_EXAMPLES" not in os.environ,  # a wider hunt: random
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(prog=program())
        def check(prog: dict[str, Any]) -> None:
            bad = driver.run(prog)
            assert not bad, "\n".join(bad)

        check()
        # each encoding reached the SP and was applied (not only refused) in some write
        assert set(driver.applied) == {"plain", "gzip", "bom", "utf16", "dup"}, driver.applied
