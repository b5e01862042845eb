"""ops10: an interrupted ``tlog migrate`` whose source changed since is restarted with
``--restart``, without emptying the destination by hand; ``tlog fsck`` reports the marker.

Before, a source changed since the interruption was refused and the operator had to remove
the store directory or drop the tables. ``--restart`` clears exactly the copy the marker
identifies (a log with the source's origin) and copies again; it never clears a destination
without the marker (empty, a completed migration, foreign records) or with another log's
marker. Real ``tlog migrate`` processes killed with SIGKILL (the gaps9 child), LMDB and
PostgreSQL (a real cluster, skipped with the reason without one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scim_service.conftest import open_harness, user_event
from tlog.cli import main
from tlog.migrate import MARKER

from .support import contents_of, copy_of, killed_at, marker_of, store_at


def _fsck(location: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str]:
    capsys.readouterr()
    if location.startswith("postgresql://"):
        code = main(["fsck", "--data", str(tmp_path / "keys"), "--database", location])
    else:
        code = main(["fsck", "--data", location])
    out, err = capsys.readouterr()
    return code, out + err


def _changed(data: Path) -> None:
    """A server was started on the source again and logged an event: its checkpoint moved."""
    with open_harness(data) as h:
        assert h.post_event(user_event("u-ops10", req="req-ops10")).status_code in (200, 201)


def _restarted_after_the_source_changed(
    src: Path, dst: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    killed_at("inside-a-table", str(src), dst)
    assert marker_of(dst) is not None
    # fsck names the marker and both ways out; nothing damaged is claimed OK either
    code, text = _fsck(dst, capsys, tmp_path)
    assert code != 0, text
    assert "fsck: FINDING" in text and "unfinished tlog migrate copy" in text, text
    assert "--restart" in text and f"--to {dst.split('?')[0]}" in text, text
    _changed(src)
    held = contents_of(dst)
    capsys.readouterr()
    # a plain re-run is refused as before, and now says what to do
    assert main(["migrate", "--from", str(src), "--to", dst]) == 1
    err = capsys.readouterr().err
    assert "changed since" in err and "--restart" in err, err
    assert contents_of(dst) == held
    # --restart: cleared and copied again, every record the source's
    assert main(["migrate", "--from", str(src), "--to", dst, "--restart"]) == 0
    out, err = capsys.readouterr()
    assert "migrate: OK" in out and "--restart: cleared the interrupted copy" in err, (out, err)
    assert contents_of(dst) == contents_of(str(src))
    assert marker_of(dst) is None
    code, text = _fsck(dst, capsys, tmp_path)
    assert code == 0 and "fsck: OK" in text and "FINDING" not in text, text
    # done: --restart never clears a completed migration
    assert main(["migrate", "--from", str(src), "--to", dst, "--restart"]) == 1
    err = capsys.readouterr().err
    assert "never cleared" in err and "already holds a log" in err, err
    assert contents_of(dst) == contents_of(str(src))


@pytest.mark.slow
def test_restart_lmdb_to_lmdb_after_the_source_changed(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(source_log, tmp_path)
    _restarted_after_the_source_changed(data, str(tmp_path / "copy"), capsys, tmp_path)


@pytest.mark.slow
def test_restart_lmdb_to_postgres_after_the_source_changed(
    source_log: Path, tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(source_log, tmp_path)
    _restarted_after_the_source_changed(data, pg_url, capsys, tmp_path)


@pytest.mark.slow
def test_restart_postgres_to_lmdb(
    source_log: Path, tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL source: killed between tables, restarted (the source as it was: a
    restart is allowed then too, and gives the same copy as a resume)."""
    data = copy_of(source_log, tmp_path)
    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 0
    dst = str(tmp_path / "back")
    killed_at("between-tables", pg_url, dst)
    assert marker_of(dst) is not None
    code, text = _fsck(dst, capsys, tmp_path)
    assert code != 0 and "FINDING" in text and "--restart" in text, text
    capsys.readouterr()
    assert main(["migrate", "--from", pg_url, "--to", dst, "--restart"]) == 0
    assert contents_of(dst) == contents_of(pg_url)
    assert marker_of(dst) is None


@pytest.mark.slow
def test_fsck_reports_the_marker_of_a_postgres_copy(
    source_log: Path, tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(source_log, tmp_path)
    killed_at("before-marker-removed", str(data), pg_url)  # a whole copy, marker still in
    code, text = _fsck(pg_url, capsys, tmp_path)
    assert code == 1, text  # nothing damaged (the copy verifies), but not servable
    assert "fsck: FINDING" in text and "NOT SERVABLE" in text and "ERROR" not in text, text
    assert "the same command again resumes" in text and "--restart" in text, text


def test_restart_refuses_an_empty_destination(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(source_log, tmp_path)
    dest = tmp_path / "copy"
    assert main(["migrate", "--from", str(data), "--to", str(dest), "--restart"]) == 1
    assert "it is empty, run without --restart" in capsys.readouterr().err


def test_restart_never_clears_foreign_records(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlog.storage import Storage

    data = copy_of(source_log, tmp_path)
    dest = tmp_path / "copy"
    st = Storage(dest / "db")
    try:
        st.put_token(b"\1" * 32, b"someone else's")
    finally:
        st.close()
    held = contents_of(str(dest))
    assert main(["migrate", "--from", str(data), "--to", str(dest), "--restart"]) == 1
    err = capsys.readouterr().err
    assert "holds none" in err and "never cleared" in err, err
    assert contents_of(str(dest)) == held


@pytest.mark.slow
def test_restart_never_clears_another_logs_interrupted_copy(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(source_log, tmp_path)
    dest = str(tmp_path / "copy")
    killed_at("between-tables", str(data), dest)
    with store_at(dest) as st:
        other = {"tlog_migrate": 1, "origin": "other.example/log", "tree_size": 3}
        st.set_meta(MARKER, json.dumps(other).encode())
    held = contents_of(dest)
    capsys.readouterr()
    assert main(["migrate", "--from", str(data), "--to", dest, "--restart"]) == 1
    err = capsys.readouterr().err
    assert "another log" in err and "other.example/log" in err, err
    assert contents_of(dest) == held


def test_clear_if_meta_checks_the_marker_in_its_transaction(tmp_path: Path) -> None:
    """The backend's clear: nothing happens unless the marker holds the value asked for."""
    from tlog.storage import Storage

    st = Storage(tmp_path / "db")
    try:
        st.put_token(b"\1" * 32, b"r")
        assert st.clear_if_meta(MARKER, b"x") is False
        st.set_meta(MARKER, b"y")
        assert st.clear_if_meta(MARKER, b"x") is False
        with st.read() as rv:
            assert rv.token(b"\1" * 32) == b"r"
        assert st.clear_if_meta(MARKER, b"y") is True
        with st.read() as rv:
            assert rv.token(b"\1" * 32) is None and rv.meta(MARKER) is None
            assert [k for k, _ in rv.raw("meta")] == [b"format"]
    finally:
        st.close()


def test_clear_if_meta_on_postgres(pg_url: str, tmp_path: Path) -> None:
    from tlog.backend import open_backend

    st = open_backend(pg_url, tmp_path)
    try:
        st.put_token(b"\1" * 32, b"r")
        st.set_meta(MARKER, b"y")
        assert st.clear_if_meta(MARKER, b"x") is False
        assert st.clear_if_meta(MARKER, b"y") is True
        with st.read() as rv:
            assert rv.token(b"\1" * 32) is None and rv.meta(MARKER) is None
            assert rv.meta("format") is not None and rv.tree_size() == 0
        assert st.is_empty()
    finally:
        st.close()
