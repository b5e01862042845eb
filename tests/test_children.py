"""A ``tlog serve`` started by a test never outlives the pytest that started it: SIGKILL the
pytest (as a CI timeout or the OOM killer would) and the kernel kills the server too
(tests/pdeathsig.py, used by :func:`tests.support.start_server`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.pgwatchdog import alive, proc_stat
from tests.support import ROOT

BOUND = 30.0  # seconds the server may take to go once pytest is gone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux"),
]


def test_a_killed_pytest_takes_its_tlog_serve_with_it(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_hold.py").write_text(
        textwrap.dedent(
            """
            import os
            import pathlib
            import time

            from tests.support import start_server


            def test_hold(tmp_path):
                srv = start_server(tmp_path / "data")
                pathlib.Path(os.environ["HOLD_FILE"]).write_text(f"{srv.proc.pid}\\n")
                time.sleep(600)
            """
        )
    )
    hold, log = tmp_path / "hold", tmp_path / "inner.log"
    env = dict(os.environ, HOLD_FILE=str(hold), PYTHONPATH=str(ROOT))
    # The inner pytest must run in one process whatever the outer run was given: with
    # PYTEST_ADDOPTS="-n 4" it ran its test on an xdist worker, the server's parent.
    env.pop("PYTEST_ADDOPTS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull]
            + ["--rootdir", str(inner), "--basetemp", str(tmp_path / "bt")]
            + [str(inner / "test_hold.py")],
            cwd=inner,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = 0
    try:
        deadline = time.monotonic() + 120
        while not hold.exists() or not hold.read_text().endswith("\n"):
            assert proc.poll() is None, f"the inner pytest exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"no server within 120 s: {log.read_text()}"
            time.sleep(0.1)
        server = int(hold.read_text())
        assert alive(server)
        # The server is tlog itself (exec'd in place of the wrapper), a child of pytest.
        cmdline = Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")
        assert b"tlog.cli" in cmdline and b"serve" in cmdline
        stat = proc_stat(server)
        assert stat is not None and int(stat[1]) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + BOUND
        while alive(server):
            if time.monotonic() > deadline:
                pytest.fail(f"tlog serve (pid {server}) outlived its pytest by {BOUND} s")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if server and alive(server):  # a failed assertion must not leak the server either
            os.kill(server, signal.SIGKILL)
