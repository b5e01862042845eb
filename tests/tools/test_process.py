"""``tlog-client`` as a real process against ``tlog serve`` as a real uvicorn process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from client.net.logclient import LogClient
from tests.support import ROOT, start_server
from tlog.signer import load_key_file


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_against_a_real_server(tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "data"
    server = start_server(data, database=database)
    try:
        vkey = load_key_file(data / "log.key").vkey()
        token = (data / "demo-submitter.token").read_text().strip()
        with LogClient(server.url, vkey) as c:
            c.submit_batch([b"real-%d" % i for i in range(700)], token)
            state = tmp_path / "state.json"
            first = _run("audit", server.url, "--vkey", vkey, "--state", str(state))
            assert first.returncode == 0, first.stderr
            assert "at tree size 700" in first.stdout
            assert first.stderr == ""  # no progress bar without a terminal
            c.submit_batch([b"more-%d" % i for i in range(300)], token)
            second = _run("audit", server.url, "--vkey", vkey, "--state", str(state))
            assert second.returncode == 0, second.stderr
            assert "consistent with size 700" in second.stdout
            assert "300 new entries" in second.stdout
            bundle = tmp_path / "5.tlog-proof"
            bundle.write_text(c.bundle(5).text)
        entry = tmp_path / "entry"
        entry.write_bytes(b"real-5")
        ok = _run("verify", str(bundle), "--vkey", vkey, "--entry", str(entry))
        assert ok.returncode == 0, ok.stderr
        entry.write_bytes(b"real-6")
        assert _run("verify", str(bundle), "--vkey", vkey, "--entry", str(entry)).returncode == 2
    finally:
        server.stop()
