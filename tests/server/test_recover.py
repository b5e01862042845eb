"""``tlog recover``: a restored store brought forward from a copy (tiles or a store), verified
against the last signed checkpoint before anything is written; then the log signs again.

On both backends: the old backup is an ``mdb_copy`` of the LMDB store, or a ``pg_dump`` of the
log's schema restored with ``pg_restore`` (``tests.pgsupport.OldCopy``); "another store" is a
copy of the LMDB files, or the log copied into another schema with ``tlog migrate``."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.merkle import verify_consistency
from client.formats.tiles import entry_bundles_for_size
from tlog.backend import u64
from tlog.cli import main as tlog_main
from tlog.integrity import RollbackDetected
from tlog.server import build_app
from tlog.signer import create_key_file

from ..pgsupport import OldCopy, clone_store, empty_store, reading, stored_tree_size
from ..support import serve_args, serve_config, store_args
from .conftest import ORIGIN


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    create_key_file(d / "log.key", ORIGIN)
    return d


def _signer(data: Path):  # type: ignore[no-untyped-def]
    from tlog.signer import CheckpointSigner, load_key_file

    return CheckpointSigner(load_key_file(data / "log.key"), ORIGIN)


def _append(data: Path, entries: list[bytes], database: str | None) -> list[str]:
    """Append through the HTTP API; returns the checkpoints handed out."""
    app, log_, tokens = build_app(
        serve_config(data, database, batch_age_ms=0.0), _signer(data), scim=False
    )
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


def _mirror_tiles(data: Path, to: Path, database: str | None) -> None:
    """What an auditor's mirror holds: the entry bundles of the log, as static files."""
    app, log_, _ = build_app(serve_config(data, database), _signer(data), scim=False)
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


def _grown_past_a_backup(
    data: Path,
    database: str | None,
    backup: OldCopy,
    old: list[bytes],
    new: list[bytes],
    *,
    one_by_one: bool = False,
) -> list[str]:
    """Append ``old``, back the store up into ``backup``, append ``new`` (in batches, or one
    entry per request: one signed checkpoint per size); the checkpoints handed out."""

    def grow(entries: list[bytes]) -> list[str]:
        if one_by_one:
            return [n for e in entries for n in _append(data, [e], database)]
        return _append(data, entries, database)

    notes = grow(old)
    backup.take_from(data)
    return notes + grow(new)


def _scenario(
    tmp_path: Path, data: Path, n_old: int, n_new: int, database: str | None, backup: OldCopy
) -> tuple[Path, list[str]]:
    """Grow to n_old, back up the store, grow to n_new, restore the backup."""
    entries = [b"entry-%d" % i for i in range(n_new)]
    notes = _grown_past_a_backup(data, database, backup, entries[:n_old], entries[n_old:])
    mirror = tmp_path / "mirror"
    _mirror_tiles(data, mirror, database)
    backup.restore(data)
    return mirror, notes


def _starts_and_continues(data: Path, size: int, notes: list[str], database: str | None) -> None:
    app, log_, tokens = build_app(
        serve_config(data, database, batch_age_ms=0.0), _signer(data), scim=False
    )
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


def _recover(data: Path, source: str | Path, database: str | None, *extra: str) -> int:
    return tlog_main(
        ["recover", "--data", str(data), *serve_args(database), "--from", str(source), *extra]
    )


def _tree_size(data: Path, database: str | None) -> int:
    return stored_tree_size(database, data / "db")


def test_recover_from_a_tiles_directory(
    tmp_path: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    database: str | None,
    old_copy: Callable[[str], OldCopy],
) -> None:
    # crosses entry-bundle boundaries
    mirror, notes = _scenario(tmp_path, data, 300, 700, database, old_copy("backup"))
    with pytest.raises(RollbackDetected):
        build_app(serve_config(data, database), _signer(data), scim=False)
    assert _recover(data, mirror, database) == 0
    out = capsys.readouterr().out
    assert "recovered entries 300..699" in out and "the log may sign again" in out
    _starts_and_continues(data, 700, notes, database)
    assert tlog_main(["fsck", "--data", str(data), *store_args(database)]) == 0


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "web"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_recover_from_a_tiles_url(
    tmp_path: Path,
    data: Path,
    http_mirror: tuple[Path, str],
    database: str | None,
    old_copy: Callable[[str], OldCopy],
) -> None:
    mirror, notes = _scenario(tmp_path, data, 5, 9, database, old_copy("backup"))
    web, url = http_mirror
    shutil.copytree(mirror, web)
    assert _recover(data, url, database) == 0
    _starts_and_continues(data, 9, notes, database)


def test_recover_from_another_store(
    tmp_path: Path,
    data: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
) -> None:
    """The copy is another store holding the log (LMDB: a copy of its files taken with the
    server stopped; PostgreSQL: another database, e.g. a replica that has the entries)."""
    backup = old_copy("backup")
    entries = [b"a%d" % i for i in range(6)]
    notes = _grown_past_a_backup(data, database, backup, entries[:3], entries[3:])
    replica = clone_store(database, data, new_database(), tmp_path / "replica")
    backup.restore(data)
    assert _recover(data, replica, database) == 0
    _starts_and_continues(data, 6, notes, database)


def test_recover_an_emptied_store(
    tmp_path: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    database: str | None,
    request: pytest.FixtureRequest,
) -> None:
    notes = _append(data, [b"z%d" % i for i in range(4)], database)
    mirror = tmp_path / "mirror"
    _mirror_tiles(data, mirror, database)
    says = empty_store(data, database, lambda: request.getfixturevalue("pg_cluster"))
    serve = ["serve", "--data", str(data), *serve_args(database)]
    assert tlog_main([*serve, "--port", "1", "--switch-interval-ms", "5"]) == 1
    assert says in capsys.readouterr().err
    assert _recover(data, mirror, database) == 0
    out = capsys.readouterr().out
    assert "recovered entries 0..3" in out
    if database is None:
        assert "removed the empty" in out
    _starts_and_continues(data, 4, notes, database)


def test_a_copy_of_another_history_is_not_imported(
    tmp_path: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    database: str | None,
    old_copy: Callable[[str], OldCopy],
) -> None:
    mirror, _ = _scenario(tmp_path, data, 2, 5, database, old_copy("backup"))
    bundle = mirror / "tile" / "entries" / "000.p" / "5"
    bundle.write_bytes(bundle.read_bytes().replace(b"entry-4", b"entry-X"))
    assert _recover(data, mirror, database) == 1
    err = capsys.readouterr().err
    assert "do not produce the root this log signed at size 5" in err
    assert "nothing was imported" in err
    assert _tree_size(data, database) == 2


def test_a_copy_that_is_too_short_is_refused(
    tmp_path: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    database: str | None,
    old_copy: Callable[[str], OldCopy],
) -> None:
    mirror, _ = _scenario(tmp_path, data, 2, 5, database, old_copy("backup"))
    shutil.rmtree(mirror / "tile")
    assert _recover(data, mirror, database) == 1
    assert "has no entry bundle tile/entries/000.p/5" in capsys.readouterr().err
    assert _tree_size(data, database) == 2


# --- gaps9: intermediate checkpoints -------------------------------------------------------
#
# gaps9: ``tlog recover`` restores the intermediate checkpoints a copy still holds.
#
# The log signs a checkpoint per batch. On main a recovery wrote only the target checkpoint,
# so a restored store lacked every checkpoint between its size and the target's: a receipt's
# tree size in between had no note any more (``/v1/proof/inclusion?tree_size=k`` answered 404)
# and the console's history had a hole. Now each checkpoint a copy holds (every stored one of
# a store or database source; each target: the remembered checkpoint, ``--checkpoint``, the
# witnesses') is kept when it verifies under the log's key and its root is the recovered
# tree's at its size: the very note the log signed (nothing is signed). A log-signed
# checkpoint for another root there is refused and nothing is imported.


def _checkpoints(data: Path, database: str | None) -> dict[int, bytes]:
    return reading(database, data / "db", lambda rv: dict(rv.checkpoints()))


def _proof_status(data: Path, database: str | None, size: int) -> int:
    app, log_, _ = build_app(serve_config(data, database), _signer(data), scim=False)
    try:
        with TestClient(app) as c:
            return c.get(f"/v1/proof/inclusion?index=0&tree_size={size}").status_code
    finally:
        log_.storage.close()


def _lost_three(
    tmp_path: Path,
    data: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
) -> tuple[dict[int, bytes], list[str], str]:
    """Sizes 1..6 signed one by one, the store restored to size 3: the checkpoints as they
    were, the notes handed out, and a replica holding everything."""
    backup = old_copy("backup")
    entries = [b"a%d" % i for i in range(6)]
    notes = _grown_past_a_backup(data, database, backup, entries[:3], entries[3:], one_by_one=True)
    truth = _checkpoints(data, database)
    assert sorted(truth) == [0, 1, 2, 3, 4, 5, 6]
    replica = clone_store(database, data, new_database(), tmp_path / "replica")
    backup.restore(data)
    return truth, notes, replica


def test_recover_from_a_store_restores_every_intermediate_checkpoint(
    tmp_path: Path,
    data: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    truth, _, replica = _lost_three(tmp_path, data, database, old_copy, new_database)
    assert _recover(data, replica, database) == 0
    assert "restored 2 intermediate checkpoint(s)" in capsys.readouterr().out
    assert _checkpoints(data, database) == truth  # the same bytes at every size
    assert _proof_status(data, database, 4) == 200
    assert _proof_status(data, database, 5) == 200


def test_recover_from_tiles_restores_the_given_checkpoints_sizes_then_a_store_the_rest(
    tmp_path: Path,
    data: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Tiles hold no intermediate checkpoint: a ``--checkpoint`` at size 4 is restored, 5 is
    not (said so); a later recover from a store fills 5 in (nothing else to recover)."""
    truth, notes, replica = _lost_three(tmp_path, data, database, old_copy, new_database)
    mirror = tmp_path / "mirror"
    # the mirror's tiles are of the lost log (size 6): made from the replica's copy
    live = tmp_path / "live"
    live.mkdir()
    (live / "log.key").write_bytes((data / "log.key").read_bytes())
    (live / "log.key").chmod(0o600)
    if database is None:
        (live / "db").symlink_to(Path(replica), target_is_directory=True)
        _mirror_tiles(live, mirror, None)
    else:
        _mirror_tiles(live, mirror, replica)
    four = tmp_path / "four.checkpoint"
    four.write_text(notes[3])
    assert _recover(data, mirror, database, "--checkpoint", str(four)) == 0
    out = capsys.readouterr().out
    assert "restored 1 intermediate checkpoint(s)" in out, out
    got = _checkpoints(data, database)
    assert got[4] == truth[4] and 5 not in got
    assert _proof_status(data, database, 5) == 404
    assert _recover(data, replica, database) == 0
    out = capsys.readouterr().out
    assert "nothing to recover" in out and "restored 1 intermediate checkpoint(s)" in out, out
    assert _checkpoints(data, database) == truth


@pytest.mark.lmdb_only("tampers with a copy's LMDB records")
def test_a_log_signed_checkpoint_for_another_root_is_refused(
    tmp_path: Path,
    data: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The source holds, at size 5, a checkpoint this log's key signed over another root
    (a fork, or a copy of another history): evidence, never stored; nothing is imported."""
    from tlog.storage import Storage

    _, _, replica = _lost_three(tmp_path, data, database, old_copy, new_database)
    from client.formats.note import sign_note
    from tlog.signer import load_key_file

    key = load_key_file(data / "log.key")  # the log's own key: equivocation, not forgery
    forked = sign_note(Checkpoint(_signer(data).origin, 5, b"\x07" * 32).text(), [key])
    st = Storage(Path(replica))
    try:
        with st.env.begin(write=True) as txn:
            txn.put(u64(5), forked.encode(), db=st.db_checkpoints)
    finally:
        st.close()
    assert _recover(data, replica, database) == 1
    err = capsys.readouterr().err
    assert "whose root is not the recovered tree's" in err and "nothing was imported" in err
    assert _tree_size(data, database) == 3
