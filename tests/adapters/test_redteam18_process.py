"""Red team 18: the differential (``differential.py``: SCIM writes, the SP's stored resource
read directly before and after, every effect the log claims checked against the SP's
change) through the real ``tlog scim-proxy`` **process** in front of scim2-server, recording
to a real ``tlog serve``; the events read back over HTTP as the tenant's auditor reads them
(its own token, the log's key). Besides red team 13's random single writes: bulk requests
and requests split into linked events."""

from __future__ import annotations

from pathlib import Path

import pytest

from .differential import GROUP, PATCH, USER, Driver, hunt, hunt_bulk, served_sp
from .logserver import Log
from .rig import process_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

pytestmark = [
    pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough"),
    pytest.mark.slow,  # the proxy as a process, with scim2-server
]


def test_effects_match_scim2_server_through_the_proxy_process(log: Log, tmp_path: Path) -> None:
    with served_sp() as (sp, upstream), process_rig(log, tmp_path, upstream) as rig:
        driver = Driver(rig, sp)
        hunt(driver, 25, "RT18_EXAMPLES")
        print(f"scim2-server: {driver.statuses}, effects by basis {driver.bases}")
        assert set(driver.applied) == {"plain", "gzip", "bom", "utf16", "dup"}, driver.applied


def test_bulk_effects_match_scim2_server_through_the_proxy_process(
    log: Log, tmp_path: Path
) -> None:
    with served_sp() as (sp, upstream), process_rig(log, tmp_path, upstream) as rig:
        driver = Driver(rig, sp)
        hunt_bulk(driver, 25, "RT18_EXAMPLES")
        print(f"scim2-server: {driver.statuses}")


def test_split_requests_through_the_proxy_process(log: Log, tmp_path: Path) -> None:
    with served_sp() as (sp, upstream), process_rig(log, tmp_path, upstream) as rig:
        driver = Driver(rig, sp, pool=0)
        bad = [
            # adds and removes (by filter: scim2-server takes minutes for a thousand)
            *driver.run_split(keep=5, add=1400, remove=5, form="filter"),
            # one replace whose members run over the parts: 100 removed, 1,300 added
            *driver.run_split(keep=100, add=1300, remove=100, form="replace"),
            # a PUT stating 1,400 members: 100 dropped
            *driver.run_split(keep=100, add=1300, remove=100, form="put"),
        ]
        print(driver.parts, driver.statuses)
        assert bad == [], bad
        assert all(n > 1 for n in driver.parts), driver.parts  # each one was split
        # split operations inside a bulk request: a new group of 1,400 members (one a
        # bulkId reference), and a PATCH adding 1,400 to an existing group
        big = [f"big-{i}" for i in range(2800)]
        driver.resolve(big)
        created = {"method": "POST", "path": "/Users", "bulkId": "u0"}
        created["data"] = {"schemas": [USER], "userName": "{T_NAME}-u0"}
        group = {"schemas": [GROUP], "displayName": "{G_NAME}-n"}
        group["members"] = [{"value": m} for m in ["bulkId:u0", *big[:1400]]]
        add = {"op": "add", "path": "members", "value": [{"value": m} for m in big[1400:]]}
        patch = {"schemas": [PATCH], "Operations": [add]}
        prog = {
            "user": {"schemas": [USER], "userName": "{T_NAME}"},
            "group": {"schemas": [GROUP], "displayName": "{G_NAME}"},
            "ops": [
                {"method": "POST", "path": "/Groups", "bulkId": "g", "data": group},
                {"method": "PATCH", "path": "/Groups/{G}", "data": patch},
                created,
            ],
            "fail": None,
        }
        assert driver.run_bulk(prog) == []
        assert len(driver.parts) == 5 and min(driver.parts) > 1, driver.parts
