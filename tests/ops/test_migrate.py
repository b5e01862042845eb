"""``tlog migrate``: an LMDB log (entries, tokens, SCIM records, cosignatures) moved to
PostgreSQL, served from there, and moved back to LMDB, every record equal to the original;
and the refusals (destination not empty, source that does not verify)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import open_checkpoint
from tests.pgsupport import tamper
from tests.scim_service.conftest import make_signer as scim_signer
from tests.support import serve_config
from tlog.backend import u64
from tlog.cli import main
from tlog.server import build_app
from tlog.storage import Storage

from .support import populate, tables


def test_lmdb_to_postgres_and_back_changes_no_byte(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    populate(data)
    original = Storage(data / "db", readonly=True)
    before = tables(original)
    original.close()
    assert len(before["entries"]) >= 40 and before["aux"] and before["tokens"]

    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 0
    out = capsys.readouterr().out
    assert "migrate: OK: tree size" in out and "every record equal" in out

    # Served from PostgreSQL with the same data directory (keys): the same signed log.
    app, log_, _ = build_app(serve_config(data, pg_url, batch_age_ms=0.0), scim_signer())
    try:
        with TestClient(app) as client:
            note = client.get("/checkpoint").text
            assert note.encode() == before["checkpts"][-1][1]
            cp, _ = open_checkpoint(note, [scim_signer().verifier])
            assert cp.size == len(before["entries"])
        assert tables(log_.storage) == before
    finally:
        log_.storage.close()

    back = tmp_path / "back"
    assert main(["migrate", "--from", pg_url, "--to", str(back)]) == 0
    copy = Storage(back / "db", readonly=True)
    try:
        assert tables(copy) == before  # the round trip changed no byte of any record
    finally:
        copy.close()


def test_refuses_a_destination_with_a_log(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    populate(data)
    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 0
    capsys.readouterr()
    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 1
    assert "already holds a log" in capsys.readouterr().err


def test_refuses_a_source_that_does_not_verify(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    populate(data)
    st = Storage(data / "db")
    tamper(st, "entries", u64(3), b"tampered")
    st.close()
    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 1
    err = capsys.readouterr().err
    assert "does not verify, nothing was copied" in err
    # Nothing was copied: the destination can still take a good log.
    from tlog.pg import PgStorage

    dst = PgStorage(pg_url)
    try:
        assert dst.is_empty()
    finally:
        dst.close()
