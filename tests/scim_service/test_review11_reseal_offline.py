"""review11: ``tlog reseal-actors`` is offline (docs/operations.md): it rewrites envelopes and
index records in transactions of its own, beside a server's writes and caches. On LMDB the
data-directory lock refused it while the store was served; on PostgreSQL the frontends hold
the key file's lock shared and so did the re-seal: it ran under a live server. It now takes
that lock exclusively, refusing while any frontend serves the store (and a frontend starting
meanwhile is refused), with nothing changed."""

from __future__ import annotations

from pathlib import Path

from client.formats.note import Ed25519Signer

from ..support import tlog_cli
from .actors import admin_event
from .conftest import ORIGIN, open_harness


def test_reseal_refuses_a_store_being_served(tmp_path: Path, database: str | None) -> None:
    key = tmp_path / "log.key"
    key.write_text(Ed25519Signer(ORIGIN, bytes(range(32))).skey() + "\n")
    key.chmod(0o600)
    db = [] if database is None else ["--database", database, "--replication", "none"]
    with open_harness(tmp_path, database=database) as h:  # a server serving the store
        assert h.post_event(admin_event("u-off-1", "r-off1")).status_code == 200
        r = tlog_cli("reseal-actors", "--data", str(tmp_path), *db)
        assert r.returncode != 0, (r.stdout, r.stderr)
        assert "re-sealed" not in r.stdout and "Traceback" not in r.stderr, r.stderr
        # The server goes on.
        assert h.post_event(admin_event("u-off-2", "r-off2")).status_code == 200
    r = tlog_cli("reseal-actors", "--data", str(tmp_path), *db)
    assert r.returncode == 0 and "0 actor(s) re-sealed" in r.stdout, (r.stdout, r.stderr)
