"""faith19's trial: what scim2-server and SCIMMY, behind the proxy, do with the path-less
forms of a PATCH ``replace`` (RFC 7644 §3.5.2.3 without ``path``: the value is a map of the
attributes to replace), read directly from each SP after the write, and whether the log's
effect is faithful to both (the differential oracle, ``differential.py``).

What it found, and what the log now relies on:

* a replace naming its path with values (``"path": "members"``) sets exactly those on
  both SPs: after a path-less clear, it states the set again;
* the path-less replace with values (``{"members": [...]}``, ``{"roles": [...]}``) is
  **not** exact: scim2-server replaces, SCIMMY adds the values to its own (before
  faith19 the log named the others removed, SCIMMY kept them);
* the path-less clears of the manager come in three shapes the adapter records alike
  (``{ext: {"manager": null}}``, ``{ext: {"manager": {}}}``, ``{"ext:manager": null}``),
  and the SPs differ on two of them: the manager's path-less clear stays "not known"
  unless the SP's answer says (``x.result.manager``).

Both skip without node/npm for SCIMMY (scim2-server runs everywhere)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from client.scim.actions import parse_request
from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .differential import ENT, GROUP, PATCH, USER, Driver, snapshot, sp_driver

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

pytestmark = [
    pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough"),
    pytest.mark.slow,
]

SPS = ["scim2-server", "SCIMMY"]
PATHLESS_CLEAR = {"op": "replace", "value": {"members": []}}


def _b64(pid: bytes) -> str:
    return base64.b64encode(pid).decode()


def _prog(writes: list[tuple[str, str, dict[str, Any]]], **user: Any) -> dict[str, Any]:
    """A user T (``user``'s attributes) and a group G holding P0 and P1, then ``writes``."""
    return {
        "user": {"schemas": [USER], "userName": "{T_NAME}", **user},
        "group": {
            "schemas": [GROUP],
            "displayName": "{G_NAME}",
            "members": [{"value": "{P0}"}, {"value": "{P1}"}],
        },
        "writes": [((m, who, body), "plain") for m, who, body in writes],
    }


def _patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


def _names(driver: Driver) -> dict[str, str]:
    """The pool's pids (base64) to their names in the programs (P0, P1, ...)."""
    return {_b64(driver.pid(driver.ids[p])): p for p in ("P0", "P1", "P2")}


def _stored(driver: Driver, who: str) -> Any:
    path = {"T": f"/Users/{driver.ids['T']}", "G": f"/Groups/{driver.ids['G']}"}[who]
    return snapshot(driver.get, path)


def _pool(driver: Driver, ids: frozenset[str]) -> set[str]:
    back = {v: k for k, v in driver.ids.items() if k.startswith("P")}
    return {back.get(i, i) for i in ids}


@pytest.mark.parametrize("later", [False, True], ids=["same-patch", "later-event"])
@pytest.mark.parametrize("sp", SPS)
def test_a_replace_naming_its_path_states_the_members_after_a_pathless_clear(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    sp: str,
    later: bool,
) -> None:
    """``[{"members": []}, "path": "members" [P2]]``: P2 alone on both SPs, the log names P0
    and P1 removed and P2 added, nothing left not known (before faith19: "not known"). In
    two PATCHes, the second states the set again (the first's outcome still not known)."""
    replace = {"op": "replace", "path": "members", "value": [{"value": "{P2}"}]}
    if later:
        writes = [("PATCH", "G", _patch(PATHLESS_CLEAR)), ("PATCH", "G", _patch(replace))]
    else:
        writes = [("PATCH", "G", _patch(PATHLESS_CLEAR, replace))]
    with sp_driver(sp, harness, tmp_path) as driver:
        assert driver.run(_prog(writes)) == []
        assert _pool(driver, _stored(driver, "G").members) == {"P2"}
        names = _names(driver)
        effect = driver.effects[-1]
        named = {(r["op"], names.get(r["pid"])) for r in effect.get("refs", ())}
    if later:
        assert ("add", "P2") in named and {"attr": "members"} in effect["changes"]
    else:
        assert named == {("add", "P2"), ("remove", "P0"), ("remove", "P1")}, effect
        assert "changes" not in effect, effect


@pytest.mark.parametrize("sp", SPS)
def test_a_pathless_replace_with_values_is_not_exact(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    sp: str,
) -> None:
    """``{"members": [P2]}`` leaves P2 alone on scim2-server, P0, P1 and P2 on SCIMMY (it
    adds to the members it has); likewise ``{"roles": [...]}``. Before faith19 the log
    judged it an exact replace and named P0 and P1 removed: wrong on SCIMMY."""
    writes = [
        ("PATCH", "G", _patch({"op": "replace", "value": {"members": [{"value": "{P2}"}]}})),
        ("PATCH", "T", _patch({"op": "replace", "value": {"roles": [{"value": "ops"}]}})),
    ]
    prog = _prog(writes, roles=[{"value": "admin"}, {"value": "dev"}])
    with sp_driver(sp, harness, tmp_path) as driver:
        assert driver.run(prog) == []
        members = _pool(driver, _stored(driver, "G").members)
        roles = set(_stored(driver, "T").roles)
        names = _names(driver)
        group_effect = driver.effects[0]
    merged = sp == "SCIMMY"
    assert members == ({"P0", "P1", "P2"} if merged else {"P2"})
    assert roles == ({"admin", "dev", "ops"} if merged else {"ops"})
    named = {(r["op"], names.get(r["pid"])) for r in group_effect.get("refs", ())}
    assert named == {("add", "P2")} and {"attr": "members"} in group_effect["changes"]


# The path-less clears of the manager, and what each SP keeps (None: cleared).
MANAGER_CLEARS = {
    "ext-null": (
        {"op": "replace", "value": {ENT: {"manager": None}}},
        {"scim2-server": None, "SCIMMY": None},
    ),
    "ext-empty": (
        {"op": "replace", "value": {ENT: {"manager": {}}}},
        {"scim2-server": "P0", "SCIMMY": None},
    ),
    "urn-key": (
        {"op": "replace", "value": {f"{ENT}:manager": None}},
        {"scim2-server": None, "SCIMMY": "P0"},
    ),
}
# And by its path: with {} the SPs differ too (the log had judged it an exact clear)
PATH_EMPTY = {"op": "replace", "path": f"{ENT}:manager", "value": {}}


def test_the_manager_clears_look_alike_in_the_event() -> None:
    """The three shapes make one ``mods`` entry: the log cannot tell them apart."""

    def mods(op: dict[str, Any]) -> Any:
        body = _patch(op)
        return parse_request(
            "patch", "User", json.dumps(body).encode(), ref_pid=lambda _rt, r: bytes(16)
        ).mods

    seen = [mods(op) for op, _ in MANAGER_CLEARS.values()]
    assert seen[0] == seen[1] == seen[2], seen


PATH_KEPT = {"scim2-server": "P0", "SCIMMY": None}


@pytest.mark.parametrize("form", [*sorted(MANAGER_CLEARS), "path-empty"])
@pytest.mark.parametrize("sp", SPS)
def test_a_pathless_clear_of_the_manager_is_not_known_unless_the_sp_says(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    sp: str,
    form: str,
) -> None:
    """The SPs differ on two of the three shapes (scim2-server keeps the manager for
    ``{"manager": {}}``, SCIMMY for the ``ext:manager`` key, and answers 204), and on
    ``"path": "...:manager", "value": {}`` (scim2-server keeps it), and the
    event cannot tell the shapes apart: "not known" is right where the SP's answer does not
    say (scim2-server answers every PATCH 204); SCIMMY's 200 answers with the resource
    where it changed it, and the log takes the manager from it (``x.result``)."""
    op, kept = MANAGER_CLEARS[form] if form in MANAGER_CLEARS else (PATH_EMPTY, PATH_KEPT)
    prog = _prog(
        [("PATCH", "T", _patch(op))], schemas=[USER, ENT], **{ENT: {"manager": {"value": "{P0}"}}}
    )
    with sp_driver(sp, harness, tmp_path) as driver:
        assert driver.run(prog) == []
        manager = _stored(driver, "T").manager
        statuses = dict(driver.statuses)
        (effect,) = driver.effects
    assert (None if manager is None else _pool(driver, frozenset([manager])).pop()) == kept[sp]
    if "PATCH 204" in statuses:
        assert {"attr": "manager"} in effect["changes"] and "refs" not in effect, effect
