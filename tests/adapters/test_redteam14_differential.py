"""Red team 14: red team 13's differential (``differential.py``: random SCIM writes, the SP's
stored resource read directly before and after each, every effect the log claims checked
against the SP's change) through the app ``tlog scim-proxy`` serves (``build_proxy``: the
audit middleware around the HTTP forwarder) in front of two real SPs over HTTP: scim2-server
(Python) and SCIMMY (Node.js, another ecosystem, with its own PUT/PATCH semantics).

Where an SP's answer to a write differs from what the request alone says, the log's effect
must follow the SP's answer (recorded by the adapter) or say it does not know; never a
wrong known claim."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .differential import GROUP, PATCH, USER, Driver, hunt, scimmy_driver, served_sp
from .rig import proxy_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")


def test_effects_match_scim2_server_through_the_proxy(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    with served_sp() as (sp, upstream), proxy_rig(harness, tmp_path, upstream) as rig:
        driver = Driver(rig, sp)
        hunt(driver, 60, "RT14_EXAMPLES")
        print(f"scim2-server: {driver.statuses}, effects by basis {driver.bases}")
        assert set(driver.applied) == {"plain", "gzip", "bom", "utf16", "dup"}, driver.applied


@pytest.mark.slow
def test_effects_match_scimmy_through_the_proxy(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    with scimmy_driver(harness, tmp_path) as driver:
        hunt(driver, 60, "RT14_EXAMPLES")
        print(f"SCIMMY: {driver.statuses}, effects by basis {driver.bases}")
        # express reads gzip, a BOM and UTF-16 too: each encoding applied in some write
        assert set(driver.applied) == {"plain", "gzip", "bom", "utf16", "dup"}, driver.applied


@pytest.mark.parametrize("key", ["roles", "entitlements"])
def test_a_pathless_replace_with_an_empty_list_is_not_known(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    key: str,
) -> None:
    """Found by the SCIMMY run: ``{"op": "replace", "value": {"roles": []}}`` leaves SCIMMY's
    roles as they were (204), scim2-server clears them; the log claimed the revoke."""
    prog = {
        "user": {"schemas": [USER], "userName": "{T_NAME}", key: [{"value": "admin"}]},
        "group": {"schemas": [GROUP], "displayName": "{G_NAME}"},
        "writes": [
            (
                (
                    "PATCH",
                    "T",
                    {"schemas": [PATCH], "Operations": [{"op": "replace", "value": {key: []}}]},
                ),
                "plain",
            )
        ],
    }
    with scimmy_driver(harness, tmp_path) as driver:
        assert driver.run(prog) == []
        assert driver.statuses == {"PATCH 204": 1}  # SCIMMY: nothing changed, no body


def _members_prog(*operations: dict[str, Any]) -> dict[str, Any]:
    """A group holding P0 and P1, then one PATCH of ``operations`` on it."""
    return {
        "user": {"schemas": [USER], "userName": "{T_NAME}"},
        "group": {
            "schemas": [GROUP],
            "displayName": "{G_NAME}",
            "members": [{"value": "{P0}"}, {"value": "{P1}"}],
        },
        "writes": [(("PATCH", "G", {"schemas": [PATCH], "Operations": list(operations)}), "plain")],
    }


PATHLESS_CLEAR = {"op": "replace", "value": {"members": []}}


@pytest.mark.parametrize(
    "operations",
    [
        [PATHLESS_CLEAR],
        # the "double clear": the adapter numbers the second, and the log placed both in
        # order as exact clears, naming P0 and P1 removed that SCIMMY kept
        [PATHLESS_CLEAR, PATHLESS_CLEAR],
        [{"op": "add", "path": "members", "value": [{"value": "{P2}"}]}, PATHLESS_CLEAR],
    ],
    ids=["one", "double", "after-add"],
)
def test_a_pathless_replace_of_the_members_with_nothing_is_not_known(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    operations: list[dict[str, Any]],
) -> None:
    """The same for a Group: ``{"members": []}`` leaves SCIMMY's members; the log claimed
    every known member removed (open until the adapter recorded the form, mods[].form)."""
    with scimmy_driver(harness, tmp_path) as driver:
        assert driver.run(_members_prog(*operations)) == []
        (effect,) = driver.effects
        assert not any(r["op"] == "remove" for r in effect.get("refs", ())), effect
        assert {"attr": "members"} in effect["changes"]  # not known


@pytest.mark.parametrize("key", ["members", "roles", "entitlements"])
def test_a_replace_naming_its_path_with_nothing_is_an_exact_clear(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    key: str,
) -> None:
    """``"path": "members"`` (or ``roles``, ``entitlements``) with ``[]`` clears them on
    every SP: against scim2-server through the proxy, the log names each value removed
    (the roles and entitlements were "not known" for both forms before mods[].form)."""
    clear = {"op": "replace", "path": key, "value": []}
    if key == "members":
        prog = _members_prog(clear)
        want = {("members", "remove", "{P0}"), ("members", "remove", "{P1}")}
    else:
        prog = {
            "user": {
                "schemas": [USER],
                "userName": "{T_NAME}",
                key: [{"value": "admin"}, {"value": "dev"}],
            },
            "group": {"schemas": [GROUP], "displayName": "{G_NAME}"},
            "writes": [(("PATCH", "T", {"schemas": [PATCH], "Operations": [clear]}), "plain")],
        }
    with served_sp() as (sp, upstream), proxy_rig(harness, tmp_path, upstream) as rig:
        driver = Driver(rig, sp)
        assert driver.run(prog) == []
        (effect,) = driver.effects
        names = {_b64(driver.pid(driver.ids[p])): "{" + p + "}" for p in ("P0", "P1")}
    if key == "members":
        got = {(r["attr"], r["op"], names.get(r["pid"], r["pid"])) for r in effect["refs"]}
        assert got == want, effect
    else:
        assert effect["changes"] == [{"attr": key, "removed": ["admin", "dev"]}], effect


def _b64(pid: bytes) -> str:
    return base64.b64encode(pid).decode()
