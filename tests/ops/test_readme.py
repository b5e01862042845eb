"""The README's commands, run as printed (ports moved to free ones): quick start, the curl
lines, the SCIM proxy in front of scim2-server, and the offline verification snippet."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, http_get, wait_http

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.slow


def commands(block: str) -> list[str]:
    """Shell commands of a block, backslash continuations joined."""
    out: list[str] = []
    cur = ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out


def blocks(after: str) -> list[str]:
    """The sh blocks of the README section whose heading contains ``after``."""
    section = README.split(after, 1)[1].split("\n## ", 1)[0]
    return [commands(b) for b in re.findall(r"```sh\n(.*?)```", section, re.S)]  # type: ignore[misc]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's commands use curl")
def test_readme_commands_work_as_printed(tmp_path: Path) -> None:
    pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    ports = {"8080": str(free_port()), "9000": str(free_port()), "8081": str(free_port())}

    def local(cmd: str) -> str:
        for old, new in ports.items():
            cmd = cmd.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
            cmd = cmd.replace(f"--port {old}", f"--port {new}")
        return cmd

    env = {k: v for k, v in os.environ.items() if not k.startswith("TLOG_")}
    env["TLOG_PORT"] = ports["8080"]  # the quick start's `tlog serve` takes no port flag
    procs: list[subprocess.Popen[bytes]] = []

    def background(cmd: str, port: str, name: str) -> None:
        # The child gets its own copy of the descriptor: ours is closed at once.
        with open(tmp_path / f"{name}.log", "wb") as log:
            p = subprocess.Popen(
                ["bash", "-c", "exec " + local(cmd)],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(p)
        out = tmp_path / f"{name}.log"  # any HTTP answer means it is up
        wait_http(
            f"http://127.0.0.1:{port}/", p, 60, output=lambda: out.read_text("utf-8", "replace")
        )

    def run(cmd: str) -> str:
        r = subprocess.run(
            ["bash", "-c", local(cmd)],
            cwd=tmp_path,
            env=env,
            timeout=60,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        return r.stdout

    try:
        quick = blocks("## Quick start")
        serve = quick[0][0].split("&&")[-1].strip()
        assert serve == ".venv/bin/tlog serve"
        background(serve, ports["8080"], "serve")
        curl = quick[2]
        assert curl[0].startswith("TOKEN=")
        out = run("\n".join(curl))
        assert '"index":0' in out and "localhost/tlog-demo" in out
        assert (tmp_path / "hello.tlog-proof").read_text().startswith("c2sp.org/tlog-proof@v1")

        for cmd in blocks("## SCIM provisioning events")[0]:
            if "pip install" in cmd:
                continue  # the dev extras have it
            if cmd.endswith("&"):
                port = "9000" if "scim2-server" in cmd else "8081"
                background(cmd[:-1], ports[port], cmd.split()[0].rsplit("/", 1)[-1])
            else:
                out = run(cmd)
        assert '"userName":' in out.replace(" ", "") and "alice" in out
        assert (tmp_path / "proxy.token").stat().st_mode & 0o777 == 0o600
        # The proxy's event reaches the log (the relay runs in the background).
        base = f"http://127.0.0.1:{ports['8080']}"
        deadline = time.monotonic() + 30
        while http_get(base + "/v1/log").json()["tree_size"] < 2:
            assert time.monotonic() < deadline, "the SCIM event never reached the log"
            time.sleep(0.2)

        vkey = httpx.get(base + "/v1/log").json()["vkey"]
        code = README.split("```python\n", 1)[1].split("```", 1)[0]
        code = re.sub(r'"localhost/tlog-demo\+[^"]*"', repr(vkey), code)
        r = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
