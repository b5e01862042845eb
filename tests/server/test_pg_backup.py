"""Backup and restore of a PostgreSQL-backed log, for real: ``pg_dump`` of the log's schema,
the log grows, the schema is restored from the dump with ``pg_restore``. The restored
(older) database is refused at start (the frontend remembers a newer checkpoint); ``tlog
recover --database`` brings it forward from a copy of the log's tiles (what the bucket or a
mirror holds), verified against the last signed checkpoint; then the log serves and signs
again with no fork."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_consistency
from client.formats.tiles import entry_bundles_for_size
from harness.pg import PgCluster
from tests.support import serve_config
from tlog.cli import main as tlog_main
from tlog.integrity import RollbackDetected
from tlog.pg import PgStorage
from tlog.server import build_app
from tlog.signer import CheckpointSigner, create_key_file, load_key_file

from .conftest import ORIGIN

# One database server here: no standby to wait for.
_RECOVER = ("recover", "--replication", "none", "--data")


def _signer(data: Path) -> CheckpointSigner:
    return CheckpointSigner(load_key_file(data / "log.key"), ORIGIN)


def _schema(url: str) -> str:
    q = unquote(urlsplit(url).query)  # options=-csearch_path=<schema>
    return q.rsplit("=", 1)[1]


def _pg(cluster: PgCluster, program: str, *args: str) -> None:
    exe = cluster.bin / program
    if not exe.exists():
        pytest.skip(f"{program} is not installed beside initdb ({cluster.bin})")
    r = subprocess.run(
        [str(exe), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "tlog", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"{program} failed: {r.stdout}{r.stderr}"


def _append(data: Path, url: str, entries: list[bytes]) -> list[str]:
    """Append through the HTTP API; returns the checkpoints handed out."""
    app, log_, tokens = build_app(
        serve_config(data, url, batch_age_ms=0.0), _signer(data), scim=False
    )
    token, _ = tokens.create("submitter", tenant="t")
    h = {"Authorization": f"Bearer {token}"}
    notes = []
    with TestClient(app) as c:
        for i in range(0, len(entries), 100):
            body = b"".join(len(e).to_bytes(2, "big") + e for e in entries[i : i + 100])
            r = c.post("/v1/entries/batch", content=body, headers=h)
            assert r.status_code == 200, r.text
            notes.append(r.json()["checkpoint"])
    log_.storage.close()
    return notes


def _mirror(data: Path, url: str, to: Path) -> None:
    """The log's public read side as static files (what its bucket or a mirror holds)."""
    app, log_, _ = build_app(serve_config(data, url), _signer(data), scim=False)
    with TestClient(app) as c:
        to.mkdir(parents=True)
        (to / "checkpoint").write_text(c.get("/checkpoint").text)
        for t in entry_bundles_for_size(log_.latest.size):
            r = c.get("/" + t.path())
            assert r.status_code == 200
            (to / t.path()).parent.mkdir(parents=True, exist_ok=True)
            (to / t.path()).write_bytes(r.content)
    log_.storage.close()


@pytest.fixture
def restored(tmp_path: Path, pg_cluster: PgCluster, pg_url: str) -> tuple[Path, Path, list[str]]:
    """A log grown to 300 entries, dumped, grown to 700, then restored from the dump.
    Returns the data directory, a mirror of the tiles at 700 and the checkpoints handed out."""
    data = tmp_path / "data"
    data.mkdir()
    create_key_file(data / "log.key", ORIGIN)
    schema = _schema(pg_url)
    notes = _append(data, pg_url, [b"entry-%d" % i for i in range(300)])
    dump = tmp_path / "log.dump"
    _pg(pg_cluster, "pg_dump", "-Fc", "-n", schema, "-f", str(dump), "postgres")
    notes += _append(data, pg_url, [b"entry-%d" % i for i in range(300, 700)])
    mirror = tmp_path / "mirror"
    _mirror(data, pg_url, mirror)
    pg_cluster.sql(f"DROP SCHEMA {schema} CASCADE")
    _pg(pg_cluster, "pg_restore", "-d", "postgres", "--exit-on-error", str(dump))
    st = PgStorage(pg_url, readonly=True)
    with st.read() as rv:
        assert rv.tree_size() == 300  # the dump's state: 400 acknowledged entries lost
    st.close()
    return data, mirror, notes


def test_a_database_restored_from_an_old_dump_is_brought_forward(
    restored: tuple[Path, Path, list[str]], pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, mirror, notes = restored
    with pytest.raises(RollbackDetected, match="ends at tree size 300"):
        build_app(serve_config(data, pg_url), _signer(data), scim=False)
    rc = tlog_main([*_RECOVER, str(data), "--database", pg_url, "--from", str(mirror)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "recovered entries 300..699" in out and "the log may sign again" in out
    # Serving resumes at 700 and the next checkpoint extends every one handed out before.
    app, log_, tokens = build_app(
        serve_config(data, pg_url, batch_age_ms=0.0), _signer(data), scim=False
    )
    assert log_.latest.size == 700
    token, _ = tokens.create("submitter", tenant="t")
    with TestClient(app) as c:
        r = c.post("/v1/entries", content=b"after", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["index"] == 700
        # An entry the restore had lost is found where it was, not appended again.
        r = c.post(
            "/v1/entries", content=b"entry-650", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200 and r.json()["index"] == 650
    v = _signer(data).verifier
    new, _ = open_checkpoint(log_.latest.note, [v])
    assert new.size == 701
    for note in notes:
        old, _ = open_checkpoint(note, [v])
        proof = log_.consistency_proof(old.size, new.size)
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    log_.storage.close()
    assert tlog_main(["fsck", "--data", str(data), "--database", pg_url]) == 0


def test_a_copy_of_another_history_is_not_imported_into_the_database(
    restored: tuple[Path, Path, list[str]], pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, mirror, _ = restored
    bundle = mirror / "tile" / "entries" / "002.p" / "188"  # entries 512..699
    bundle.write_bytes(bundle.read_bytes().replace(b"entry-600", b"entry-6X0"))
    rc = tlog_main([*_RECOVER, str(data), "--database", pg_url, "--from", str(mirror)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "do not produce the root this log signed at size 700" in err
    st = PgStorage(pg_url, readonly=True)
    with st.read() as rv:
        assert rv.tree_size() == 300 and rv.entry(300) is None
    st.close()
    with pytest.raises(RollbackDetected):  # still refused
        build_app(serve_config(data, pg_url), _signer(data), scim=False)


def test_without_the_remembered_checkpoint_the_bucket_checkpoint_is_the_target(
    restored: tuple[Path, Path, list[str]], pg_url: str, tmp_path: Path
) -> None:
    """A new frontend machine has no remembered checkpoint: the operator gives the newest
    checkpoint the log published (the bucket's /checkpoint), verified under the log key."""
    data, mirror, _ = restored
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "log.key").write_bytes((data / "log.key").read_bytes())
    (fresh / "log.key").chmod(0o600)
    args = [*_RECOVER, str(fresh), "--database", pg_url, "--from", str(mirror)]
    assert tlog_main(args) == 1  # nothing to verify against: refused, nothing written
    assert tlog_main([*args, "--checkpoint", str(mirror / "checkpoint")]) == 0
    st = PgStorage(pg_url, readonly=True)
    with st.read() as rv:
        assert rv.tree_size() == 700
    st.close()
