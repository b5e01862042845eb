"""``tlog recover``: a restored store brought forward from a copy (tiles or a store), verified
against the last signed checkpoint before anything is written; then the log signs again."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_consistency
from client.formats.tiles import entry_bundles_for_size
from tlog.cli import main as tlog_main
from tlog.integrity import RollbackDetected
from tlog.server import build_app
from tlog.signer import create_key_file
from tlog.storage import Storage

from ..support import serve_config
from .conftest import ORIGIN

pytestmark = pytest.mark.lmdb_only("restores an mdb_copy backup of the LMDB store")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    create_key_file(d / "log.key", ORIGIN)
    return d


def _signer(data: Path):  # type: ignore[no-untyped-def]
    from tlog.signer import CheckpointSigner, load_key_file

    return CheckpointSigner(load_key_file(data / "log.key"), ORIGIN)


def _append(data: Path, entries: list[bytes]) -> list[str]:
    """Append through the HTTP API; returns the checkpoints handed out."""
    app, log_, tokens = build_app(serve_config(data, batch_age_ms=0.0), _signer(data), scim=False)
    token, _ = tokens.create("submitter", tenant="t")
    notes = []
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        for i in range(0, len(entries), 50):
            chunk = entries[i : i + 50]
            if len(chunk) == 1:
                r = c.post("/v1/entries", content=chunk[0], headers=h)
            else:
                body = b"".join(len(e).to_bytes(2, "big") + e for e in chunk)
                r = c.post("/v1/entries/batch", content=body, headers=h)
            assert r.status_code == 200
            notes.append(r.json()["checkpoint"])
    log_.storage.close()
    return notes


def _mirror_tiles(data: Path, to: Path) -> None:
    """What an auditor's mirror holds: the entry bundles of the log, as static files."""
    app, log_, _ = build_app(serve_config(data), _signer(data), scim=False)
    size = log_.latest.size
    with TestClient(app) as c:
        (to / "checkpoint").parent.mkdir(parents=True, exist_ok=True)
        (to / "checkpoint").write_text(c.get("/checkpoint").text)
        for t in entry_bundles_for_size(size):
            r = c.get("/" + t.path())
            assert r.status_code == 200
            (to / t.path()).parent.mkdir(parents=True, exist_ok=True)
            (to / t.path()).write_bytes(r.content)
    log_.storage.close()


def _scenario(tmp_path: Path, data: Path, n_old: int, n_new: int) -> tuple[Path, list[str]]:
    """Grow to n_old, back up the store, grow to n_new, restore the backup."""
    notes = _append(data, [b"entry-%d" % i for i in range(n_old)])
    backup = tmp_path / "backup"
    backup.mkdir()
    st = Storage(data / "db", readonly=True)
    st.env.copy(str(backup))
    st.close()
    notes += _append(data, [b"entry-%d" % i for i in range(n_old, n_new)])
    mirror = tmp_path / "mirror"
    _mirror_tiles(data, mirror)
    shutil.rmtree(data / "db")
    shutil.copytree(backup, data / "db")
    return mirror, notes


def _starts_and_continues(data: Path, size: int, notes: list[str]) -> None:
    app, log_, tokens = build_app(serve_config(data, batch_age_ms=0.0), _signer(data), scim=False)
    assert log_.latest.size == size
    token, _ = tokens.create("submitter", tenant="t")
    with TestClient(app) as c:
        r = c.post("/v1/entries", content=b"after", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["index"] == size
        new, _ = open_checkpoint(r.json()["checkpoint"], [_signer(data).verifier])
        # Every checkpoint handed out before the restore is consistent with the new one.
        for note in notes:
            old, _ = open_checkpoint(note, [_signer(data).verifier])
            verify_consistency(
                old.size,
                new.size,
                old.root_hash,
                new.root_hash,
                log_.consistency_proof(old.size, new.size),
            )
    log_.storage.close()


def _recover(data: Path, source: str | Path, *extra: str) -> int:
    return tlog_main(["recover", "--data", str(data), "--from", str(source), *extra])


def test_recover_from_a_tiles_directory(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], database: str | None
) -> None:
    mirror, notes = _scenario(tmp_path, data, 300, 700)  # crosses entry-bundle boundaries
    with pytest.raises(RollbackDetected):
        build_app(serve_config(data, database), _signer(data), scim=False)
    assert _recover(data, mirror) == 0
    out = capsys.readouterr().out
    assert "recovered entries 300..699" in out and "the log may sign again" in out
    _starts_and_continues(data, 700, notes)
    assert tlog_main(["fsck", "--data", str(data)]) == 0


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "web"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_recover_from_a_tiles_url(
    tmp_path: Path, data: Path, http_mirror: tuple[Path, str]
) -> None:
    mirror, notes = _scenario(tmp_path, data, 5, 9)
    web, url = http_mirror
    shutil.copytree(mirror, web)
    assert _recover(data, url) == 0
    _starts_and_continues(data, 9, notes)


def test_recover_from_another_store(tmp_path: Path, data: Path) -> None:
    notes = _append(data, [b"a%d" % i for i in range(3)])
    backup = tmp_path / "backup"
    shutil.copytree(data / "db", backup)  # a file copy with the server stopped
    notes += _append(data, [b"a%d" % i for i in range(3, 6)])
    replica = tmp_path / "replica"
    shutil.copytree(data / "db", replica)
    shutil.rmtree(data / "db")
    shutil.copytree(backup, data / "db")
    assert _recover(data, replica) == 0
    _starts_and_continues(data, 6, notes)


def test_recover_a_zero_byte_store(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = _append(data, [b"z%d" % i for i in range(4)])
    mirror = tmp_path / "mirror"
    _mirror_tiles(data, mirror)
    (data / "db" / "data.mdb").write_bytes(b"")
    assert (
        tlog_main(["serve", "--data", str(data), "--port", "1", "--switch-interval-ms", "5"]) == 1
    )
    assert "is empty (0 bytes)" in capsys.readouterr().err
    assert _recover(data, mirror) == 0
    assert "removed the empty" in capsys.readouterr().out
    _starts_and_continues(data, 4, notes)


def test_a_copy_of_another_history_is_not_imported(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror, _ = _scenario(tmp_path, data, 2, 5)
    bundle = mirror / "tile" / "entries" / "000.p" / "5"
    bundle.write_bytes(bundle.read_bytes().replace(b"entry-4", b"entry-X"))
    assert _recover(data, mirror) == 1
    err = capsys.readouterr().err
    assert "do not produce the root this log signed at size 5" in err
    assert "nothing was imported" in err
    st = Storage(data / "db", readonly=True)
    with st.read() as rv:
        assert rv.tree_size() == 2
    st.close()


def test_a_copy_that_is_too_short_is_refused(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror, _ = _scenario(tmp_path, data, 2, 5)
    shutil.rmtree(mirror / "tile")
    assert _recover(data, mirror) == 1
    assert "has no entry bundle tile/entries/000.p/5" in capsys.readouterr().err
