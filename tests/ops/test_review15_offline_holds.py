"""review15: ``tlog reapply-erasures`` and ``tlog reseal-actors`` (offline commands: "server
stopped") on a PostgreSQL store take the store's operator lock exclusively, as ``tlog
recover`` does since redteam9. Before, they held only the SCIM key file's lock, which is a
file of this host: a ``tlog serve`` of another host (its own copy of the key file) served
the store while they rotated its SCIM keys or re-sealed its records, and one started
meanwhile was not refused either."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx

from tests.scim_service.conftest import ORIGIN

from ..support import serve_args, start_server, tlog_cli


def _other_host(data: Path, to: Path) -> Path:
    """Another frontend host's data directory for the same store: the log key, the
    remembered checkpoint and its own copy of the SCIM master key file."""
    shutil.copytree(data, to)
    return to


def _refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_reseal_actors_is_refused_beside_another_hosts_server(tmp_path: Path, pg_url: str) -> None:
    data = tmp_path / "host-1"
    server = start_server(data, None, database=pg_url, origin=ORIGIN)
    try:
        assert (data / "scim-master.key").exists()
        other = _other_host(data, tmp_path / "host-2")
        r = tlog_cli("reseal-actors", "--data", str(other), *serve_args(pg_url))
        _refused(r, f"tlog serve PID {server.proc.pid}", "is in use by", "nothing was written")
        assert httpx.get(server.url + "/checkpoint").status_code == 200
    finally:
        server.stop()
    r = tlog_cli("reseal-actors", "--data", str(other), *serve_args(pg_url))
    assert r.returncode == 0, (r.stdout, r.stderr)
