"""SCIMMY (npm ``scimmy`` + ``scimmy-routers`` on express, Node.js) for the adapter tests:
installed at pinned versions into ``~/.cache/tlog-tests/npm`` (:func:`install_scimmy`, which
skips the test without node/npm or the registry) and started with ``scimmy_server.mjs``
(:func:`start_scimmy`)."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import free_port, wait_http

from .helpers import stop

__all__ = ["NPM_DIR", "TOKEN", "install_scimmy", "start_scimmy"]

NPM_DIR = Path.home() / ".cache" / "tlog-tests" / "npm"
PINS = {"scimmy": "1.3.5", "scimmy-routers": "1.3.2", "express": "4.21.2"}
SCRIPT = Path(__file__).with_name("scimmy_server.mjs")
TOKEN = "scimmy-test-token"


def _installed() -> bool:
    for name, version in PINS.items():
        pkg = NPM_DIR / "node_modules" / name / "package.json"
        try:
            if json.loads(pkg.read_text())["version"] != version:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return True


def install_scimmy() -> Path:
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


def start_scimmy(
    npm_dir: Path, tmp: Path, token: str = TOKEN
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["node", SCRIPT.name, str(port), token],
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
