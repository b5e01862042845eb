"""ops11: the offline commands refuse a store a real ``tlog serve`` is serving.

``tlog reapply-erasures`` (it shreds subjects, rotates the key chain and the master key, and
runs a sequencer of its own) ran beside a live server on PostgreSQL: the frontends hold the
SCIM key file's lock shared, and so did it. ``tlog recover`` on PostgreSQL took no lock at
all (its one compare-and-swap commit keeps the tree from forking, but it rewrote the
remembered checkpoint beside the server's). Both now take the key file's lock exclusively,
as ``tlog reseal-actors`` does (review11), and stop with a message; on LMDB the data
directory's lock already refused each of them, which these tests keep.

Each test runs a real ``tlog serve`` process and the real command as another process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.note import Ed25519Signer
from tests.scim_service.conftest import ORIGIN, open_harness, user_event
from tlog.scim.keys import MASTER_KEY_FILE

from ..support import serve_args, start_server, tlog_cli
from .paused import command_script, paused

pytestmark = pytest.mark.slow  # processes started, killed and restarted


def _store_with_certificate(data: Path, database: str | None) -> Path:
    """A SCIM log with one subject erased (its certificate written to a file) and the log
    key in ``data``, as ``tlog serve`` reads it."""
    with open_harness(data, database=database) as h:
        assert h.post_event(user_event("u-ops11-a", req="req-a")).status_code == 200
        assert h.post_event(user_event("u-ops11-b", req="req-b")).status_code == 200
        req = h.request_erasure("u-ops11-a").json()["id"]
        r = h.client.post(f"/v1/scim/erasures/{req}/approve", headers=h.h("po_b"))
        assert r.status_code == 200, r.text
        cert: dict[str, Any] = h.client.get(
            f"/v1/scim/erasures/{req}/certificate", headers=h.h("po_a")
        ).json()
    key = data / "log.key"
    key.write_text(Ed25519Signer(ORIGIN, bytes(range(32))).skey() + "\n")
    key.chmod(0o600)
    path = data / "cert.json"
    path.write_text(json.dumps(cert))
    return path


def _refused(r: Any, *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_reapply_erasures_refuses_a_served_store(tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "data"
    cert = _store_with_certificate(data, database)
    key_file = data / MASTER_KEY_FILE
    before = key_file.read_bytes()
    server = start_server(data, None, database=database, origin=ORIGIN)
    try:
        size = httpx.get(server.url + "/checkpoint").text.split("\n")[1]
        r = tlog_cli("reapply-erasures", "--data", str(data), *serve_args(database), str(cert))
        # LMDB: the data directory's lock; PostgreSQL: the key file's lock, held shared by
        # the frontend, cannot be made exclusive.
        _refused(r, "tlog serve")
        assert "needs the server stopped" in r.stderr or "in use by" in r.stderr, r.stderr
        assert "reapply-erasures:" not in r.stdout
        assert key_file.read_bytes() == before  # no rotation
        # The server goes on, its log unchanged (no tlog.erasure.reapply event was logged).
        got = httpx.get(server.url + "/checkpoint")
        assert got.status_code == 200 and got.text.split("\n")[1] == size
    finally:
        server.stop()
    r = tlog_cli("reapply-erasures", "--data", str(data), *serve_args(database), str(cert))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "nothing changed" in r.stdout, r.stdout  # the subject was erased already


# ``tlog reapply-erasures ARGS`` paused where it starts shredding (the store open, its locks
# held), saying so; it goes on once a line arrives on its stdin.
PAUSED = command_script(
    """
from tlog.scim.erasure import Erasures

run = Erasures.reapply
async def reapply(self, erasures):
    pause()
    return await run(self, erasures)
Erasures.reapply = reapply
""",
    "reapply-erasures",
)


def test_a_frontend_starting_during_reapply_erasures_is_refused(
    tmp_path: Path, database: str | None
) -> None:
    """The other way round: while a real ``tlog reapply-erasures`` runs, a real ``tlog serve``
    is refused at start (LMDB: the data directory's lock; PostgreSQL: the key file's lock,
    which the command holds exclusively), and the command then finishes."""
    data = tmp_path / "data"
    cert = _store_with_certificate(data, database)
    with paused(PAUSED, "--data", str(data), *serve_args(database), str(cert)) as proc:
        try:
            server = start_server(data, None, database=database, origin=ORIGIN, timeout=60)
        except RuntimeError as exc:
            refusal = str(exc)
        else:
            server.stop()
            raise AssertionError("tlog serve started while reapply-erasures ran")
        assert "in use by" in refusal, refusal[-2000:]
        out, _ = proc.resume()
        assert "reapply-erasures: 1 certificate(s)" in out, out


def test_recover_refuses_a_served_store(tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "data"
    _store_with_certificate(data, database)
    remembered = data / "checkpoint"
    server = start_server(data, None, database=database, origin=ORIGIN)
    try:
        seen = remembered.read_bytes() if remembered.exists() else None
        source = database if database is not None else str(data / "db")
        r = tlog_cli("recover", "--data", str(data), *serve_args(database), "--from", str(source))
        _refused(r, "tlog serve")
        assert "recover" in r.stderr, r.stderr
        assert "nothing to recover" not in r.stdout, r.stdout
        assert (remembered.read_bytes() if remembered.exists() else None) == seen
        assert httpx.get(server.url + "/checkpoint").status_code == 200
    finally:
        server.stop()
