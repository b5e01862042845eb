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

import fcntl
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, wait_http

from .helpers import Write, check_writes_logged, run_tester, start_proxy, status_counts, stop
from .logserver import Log, audit_read

pytest.importorskip("scim2_tester", reason="needs the dev extras (scim2-tester)")

pytestmark = pytest.mark.slow

NPM_DIR = Path.home() / ".cache" / "tlog-tests" / "npm"
PINS = {"scimmy": "1.3.5", "scimmy-routers": "1.3.2", "express": "4.21.2"}
SCRIPT = Path(__file__).with_name("scimmy_server.mjs")
TOKEN = "scimmy-test-token"
DISCOVERY = ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas")


def _installed() -> bool:
    for name, version in PINS.items():
        pkg = NPM_DIR / "node_modules" / name / "package.json"
        try:
            if json.loads(pkg.read_text())["version"] != version:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return True


@pytest.fixture(scope="module")
def scimmy_dir() -> Path:
    """The npm cache dir with the pinned packages and the server script next to them."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs node and npm (SCIMMY is a Node.js SCIM server)")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    with open(NPM_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        if not _installed():
            try:
                r = subprocess.run(
                    [
                        "npm",
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--prefix",
                        str(NPM_DIR),
                        *(f"{n}@{v}" for n, v in PINS.items()),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    cwd=NPM_DIR,
                )
            except subprocess.TimeoutExpired:
                pytest.skip("npm install of SCIMMY timed out (registry unreachable?)")
            if r.returncode != 0 or not _installed():
                pytest.skip(
                    f"npm install of SCIMMY failed (registry unreachable?): "
                    f"{r.stderr.strip()[-300:]}"
                )
        shutil.copyfile(SCRIPT, NPM_DIR / SCRIPT.name)
    return NPM_DIR


def start_scimmy(npm_dir: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["node", SCRIPT.name, str(port), TOKEN],
        cwd=npm_dir,
        stdout=open(tmp / f"scimmy-{port}.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/scim/v2"
    try:
        wait_http(base + "/ServiceProviderConfig", proc)
    except BaseException:
        stop(proc)
        raise
    return proc, base


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
