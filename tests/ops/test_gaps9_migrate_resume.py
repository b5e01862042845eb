"""gaps9: an interrupted ``tlog migrate`` is finished by running it again.

On main a migration killed part way left a destination that every re-run refused ("holds
an interrupted copy ... empty it"): the operator had to empty it by hand. Now the migration
writes a marker (meta ``migrating``: the source's origin and latest checkpoint) before its
first record and removes it last; a re-run that finds its own marker proves that what the
destination holds is a prefix of the source, record for record, and copies the rest. A real
``tlog migrate`` process is killed with SIGKILL at several points (before the marker,
before the first record, inside a table's transaction, between tables, after the last
record, before the marker is removed), LMDB to PostgreSQL and back. A destination without
the marker that holds anything, a marker of the source as it was before it changed, or a
table that is not a prefix of the source's (something wrote to the half copy) is refused
and left as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scim_service.conftest import make_signer as scim_signer
from tests.scim_service.conftest import open_harness, user_event
from tlog.backend import StorageError, u64
from tlog.cli import main
from tlog.log import Log
from tlog.migrate import MARKER

from .support import POINTS, contents_of, copy_of, killed_at, marker_of, store_at


def _resumed_and_equal(
    point: str, src: str, dst: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = contents_of(src)
    killed_at(point, src, dst)
    if point != "before-marker":
        assert marker_of(dst) is not None  # the unfinished copy says what it is
        # No server starts on it (a whole-looking log whose check did not finish included).
        with store_at(dst) as st, pytest.raises(StorageError, match="unfinished tlog migrate"):
            Log(st, scim_signer())
    capsys.readouterr()
    assert main(["migrate", "--from", src, "--to", dst]) == 0
    out, err = capsys.readouterr()
    assert "migrate: OK" in out, (out, err)
    if point != "before-marker":
        assert "resuming the interrupted copy" in err, err
    after = contents_of(dst)
    assert after == before  # every record, the same bytes, and the marker gone
    assert marker_of(dst) is None
    # Done means done: a third run is refused as for any destination with a log.
    assert main(["migrate", "--from", src, "--to", dst]) == 1
    assert "already holds a log" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_killed_lmdb_to_postgres_is_finished_by_a_rerun(
    point: str,
    source_log: Path,
    tmp_path: Path,
    pg_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = copy_of(source_log, tmp_path)
    _resumed_and_equal(point, str(data), pg_url, capsys, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_killed_postgres_to_lmdb_is_finished_by_a_rerun(
    point: str,
    source_log: Path,
    tmp_path: Path,
    pg_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = copy_of(source_log, tmp_path)
    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 0
    _resumed_and_equal(point, pg_url, str(tmp_path / "back"), capsys, tmp_path)


@pytest.mark.slow
def test_a_half_copy_written_to_since_is_refused_and_left_alone(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something wrote to the half copy (a record changed, or one added): not a prefix of
    the source, so the re-run refuses it and writes nothing."""
    data = copy_of(source_log, tmp_path)
    dest = str(tmp_path / "copy")
    killed_at("between-tables", str(data), dest)
    with store_at(dest) as st:
        st.load_raw("entries", iter([(u64(10_000), b"not the source's")]))
    held = contents_of(dest)
    capsys.readouterr()
    assert main(["migrate", "--from", str(data), "--to", dest]) == 1
    err = capsys.readouterr().err
    assert "not a prefix of the source" in err and "entries" in err, err
    assert contents_of(dest) == held


@pytest.mark.slow
def test_a_source_changed_since_the_interruption_is_refused(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The marker names the source's checkpoint: a source that moved on (a server was
    started on it again) is not the copy's source any more; nothing is mixed in."""
    data = copy_of(source_log, tmp_path)
    dest = str(tmp_path / "copy")
    killed_at("inside-a-table", str(data), dest)
    with open_harness(data) as h:
        assert h.post_event(user_event("u-new", req="req-new")).status_code in (200, 201)
    held = contents_of(dest)
    capsys.readouterr()
    assert main(["migrate", "--from", str(data), "--to", dest]) == 1
    err = capsys.readouterr().err
    assert "interrupted tlog migrate of" in err and "changed since" in err, err
    assert contents_of(dest) == held


def test_a_destination_without_the_marker_is_still_refused(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupted copy made before the marker existed (or records of another kind)
    holds no marker: refused as before, never cleared or mixed into."""
    data = copy_of(source_log, tmp_path)
    dest = tmp_path / "copy"
    from tlog.storage import Storage

    src = Storage(data / "db", readonly=True)
    st = Storage(dest / "db")
    try:
        with src.read() as rv:
            st.load_raw("entries", iter(list(rv.raw("entries"))))
    finally:
        st.close()
        src.close()
    held = contents_of(str(dest))
    assert main(["migrate", "--from", str(data), "--to", str(dest)]) == 1
    assert "holds records" in capsys.readouterr().err
    assert contents_of(str(dest)) == held


def test_an_unfinished_copy_is_not_taken_as_a_source(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(source_log, tmp_path)
    from tlog.storage import Storage

    st = Storage(data / "db")
    try:
        st.set_meta(MARKER, b"{}")
    finally:
        st.close()
    assert main(["migrate", "--from", str(data), "--to", str(tmp_path / "copy")]) == 1
    assert "unfinished tlog migrate copy" in capsys.readouterr().err
