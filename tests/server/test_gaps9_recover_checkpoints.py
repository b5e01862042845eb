"""gaps9: ``tlog recover`` restores the intermediate checkpoints a copy still holds.

The log signs a checkpoint per batch. On main a recovery wrote only the target checkpoint,
so a restored store lacked every checkpoint between its size and the target's: a receipt's
tree size in between had no note any more (``/v1/proof/inclusion?tree_size=k`` answered 404)
and the console's history had a hole. Now each checkpoint a copy holds (every stored one of
a store or database source; each target: the remembered checkpoint, ``--checkpoint``, the
witnesses') is kept when it verifies under the log's key and its root is the recovered
tree's at its size: the very note the log signed (nothing is signed). A log-signed
checkpoint for another root there is refused and nothing is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import Checkpoint
from tlog.backend import u64
from tlog.server import build_app

from ..pgsupport import OldCopy, clone_store, open_store
from ..support import serve_config
from .test_recover import _append, _mirror_tiles, _recover, _signer, _tree_size, data

__all__ = ["data"]


def _checkpoints(data: Path, database: str | None) -> dict[int, bytes]:
    st = open_store(database, data / "db")
    try:
        with st.read() as rv:
            return dict(rv.checkpoints())
    finally:
        st.close()


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
    notes = [n for i in range(3) for n in _append(data, [b"a%d" % i], database)]
    backup = old_copy("backup")
    backup.take_from(data)
    notes += [n for i in range(3, 6) for n in _append(data, [b"a%d" % i], database)]
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
