"""A second SCIM service provider from another ecosystem behind ``tlog scim-proxy``: SCIMMY
(npm ``scimmy`` + ``scimmy-routers`` on express, Node.js), installed by the test at pinned
versions into ``~/.cache/tlog-tests/npm`` and started with ``tests/adapters/scimmy_server.mjs``.

The scim2-tester compliance suite gives the same result per check, and every write the same
status, directly and through the proxy; every write through the proxy is exactly one event
in the log, read back and verified as an auditor (leaf hash, inclusion proof under the
signed checkpoint, commitment, request digest). SCIMMY deviates from scim2-tester's
expectations in places (e.g. 404 rather than 405 for writes to the discovery endpoints):
the point is that the proxy changes nothing about that, and records what happened.

Skips when ``node``/``npm`` are missing or the npm registry cannot be reached.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .helpers import Write, check_writes_logged, run_tester, start_proxy, status_counts, stop
from .logserver import Log, audit_read
from .scimmy import TOKEN, install_scimmy, start_scimmy

pytest.importorskip("scim2_tester", reason="needs the dev extras (scim2-tester)")

pytestmark = pytest.mark.slow

DISCOVERY = ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas")


@pytest.fixture(scope="module")
def scimmy_dir() -> Path:
    return install_scimmy()


def _routing(w: Write) -> bool:
    return any(w.path.rstrip("/").endswith(d) for d in DISCOVERY)


def _sp_base(ev: dict[str, Any]) -> None:
    assert ev["sp"]["base"].endswith("/scim/v2")


def test_scimmy_through_the_proxy_equals_direct_and_every_write_is_one_event(
    tmp_path: Path,
    log: Log,
    scimmy_dir: Path,
) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        direct_p, direct = start_scimmy(scimmy_dir, tmp_path)
        procs.append(direct_p)
        up_p, upstream = start_scimmy(scimmy_dir, tmp_path)
        procs.append(up_p)
        sub, aud = log.tokens("acme-scimmy")
        proxy, proxied = start_proxy(tmp_path, upstream, log.url, sub, "acme-scimmy")
        procs.append(proxy)

        plain, plain_writes = run_tester(direct, TOKEN)
        through, proxy_writes = run_tester(proxied, TOKEN)
        print(
            f"direct: {len(plain)} checks {status_counts(plain)}, {len(plain_writes)} writes "
            f"{dict(Counter(w.status for w in plain_writes))}"
        )
        print(f"proxy:  {len(through)} checks {status_counts(through)}")
        assert len(plain) > 50 and status_counts(plain).get("SUCCESS", 0) > 50
        assert sorted(plain) == sorted(through)
        assert [(w.method, w.status) for w in plain_writes] == [
            (w.method, w.status) for w in proxy_writes
        ]
        assert {w.tlog_status for w in proxy_writes if not _routing(w)} <= {"queued", "logged"}

        expected = sum(1 for w in proxy_writes if not _routing(w))
        events: list[dict[str, Any]] = []
        for _ in range(150):  # the relay delivers within seconds; bounded wait
            events = audit_read(log, aud)
            if len(events) >= expected:
                break
            time.sleep(0.2)
        # writes to the discovery endpoints are not provisioning events
        kinds = check_writes_logged(
            proxy_writes, events, routing=_routing, each=_sp_base, none_ok=True
        )
        print(f"events in the log: {len(events)}, each verified; {dict(kinds)}")
        assert kinds["success"] > 50 and kinds["routing"] > 0
    finally:
        for p in procs:
            stop(p)
