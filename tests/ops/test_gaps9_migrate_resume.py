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

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.scim_service.conftest import make_signer as scim_signer
from tests.scim_service.conftest import open_harness, user_event
from tlog.backend import Backend, StorageError, u64
from tlog.cli import main
from tlog.log import Log
from tlog.migrate import MARKER, open_location

from .support import populate, tables

# Runs ``tlog migrate`` in a process of its own that kills itself with SIGKILL at the named
# point (a real kill -9 at an exact place: nothing after it runs, no cleanup, no flush).
CHILD = r"""
import os, signal, sys
import tlog.migrate as m
from tlog.storage import Storage
from tlog.pg import PgStorage

point, src, dst = sys.argv[1:4]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

for cls in (Storage, PgStorage):
    set_meta, load_raw, delete_meta = cls.set_meta, cls.load_raw, cls.delete_meta

    def patched_set_meta(self, key, value, _o=set_meta):
        if point == "before-marker" and key == m.MARKER:
            die()
        return _o(self, key, value)

    def patched_load_raw(self, table, items, _o=load_raw):
        if point == "before-first-record":
            die()
        if point == "between-tables" and table == "tokens":
            die()
        if point == "inside-a-table" and table == "entries":
            def some(items=items):
                for n, kv in enumerate(items):
                    if n == 5:
                        die()  # 5 records written in the table's open transaction
                    yield kv
            return _o(self, table, some())
        return _o(self, table, items)

    def patched_delete_meta(self, key, _o=delete_meta):
        if point == "before-marker-removed":
            die()
        return _o(self, key)

    cls.set_meta, cls.load_raw = patched_set_meta, patched_load_raw
    cls.delete_meta = patched_delete_meta

fsck, calls = m.fsck, []

def patched_fsck(store, *a, **k):
    calls.append(1)
    if point == "after-last-record" and len(calls) == 2:  # the copy's check
        die()
    return fsck(store, *a, **k)

m.fsck = patched_fsck
from tlog.cli import main
sys.exit(main(["migrate", "--from", src, "--to", dst]))
"""

POINTS = [
    "before-marker",
    "before-first-record",
    "inside-a-table",
    "between-tables",
    "after-last-record",
    "before-marker-removed",
]


@pytest.fixture(scope="module")
def source_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("gaps9-migrate") / "data"
    populate(data)
    return data


def _copy_of(source_log: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(source_log, data)
    return data


def _killed_at(point: str, src: str, dst: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, point, src, dst],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


@contextmanager
def _store(location: str) -> Iterator[Backend]:
    with open_location(location, create=False) as st:
        yield st


def _marker_of(location: str) -> bytes | None:
    with _store(location) as st, st.read() as rv:
        return rv.meta(MARKER)


def _contents(location: str) -> dict[str, list[tuple[bytes, bytes]]]:
    with _store(location) as st:
        return tables(st)


def _resumed_and_equal(
    point: str, src: str, dst: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = _contents(src)
    _killed_at(point, src, dst)
    if point != "before-marker":
        assert _marker_of(dst) is not None  # the unfinished copy says what it is
        # No server starts on it (a whole-looking log whose check did not finish included).
        with _store(dst) as st, pytest.raises(StorageError, match="unfinished tlog migrate"):
            Log(st, scim_signer())
    capsys.readouterr()
    assert main(["migrate", "--from", src, "--to", dst]) == 0
    out, err = capsys.readouterr()
    assert "migrate: OK" in out, (out, err)
    if point != "before-marker":
        assert "resuming the interrupted copy" in err, err
    after = _contents(dst)
    assert after == before  # every record, the same bytes, and the marker gone
    assert _marker_of(dst) is None
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
    data = _copy_of(source_log, tmp_path)
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
    data = _copy_of(source_log, tmp_path)
    assert main(["migrate", "--from", str(data), "--to", pg_url]) == 0
    _resumed_and_equal(point, pg_url, str(tmp_path / "back"), capsys, tmp_path)


@pytest.mark.slow
def test_a_half_copy_written_to_since_is_refused_and_left_alone(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something wrote to the half copy (a record changed, or one added): not a prefix of
    the source, so the re-run refuses it and writes nothing."""
    data = _copy_of(source_log, tmp_path)
    dest = str(tmp_path / "copy")
    _killed_at("between-tables", str(data), dest)
    with _store(dest) as st:
        st.load_raw("entries", iter([(u64(10_000), b"not the source's")]))
    held = _contents(dest)
    capsys.readouterr()
    assert main(["migrate", "--from", str(data), "--to", dest]) == 1
    err = capsys.readouterr().err
    assert "not a prefix of the source" in err and "entries" in err, err
    assert _contents(dest) == held


@pytest.mark.slow
def test_a_source_changed_since_the_interruption_is_refused(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The marker names the source's checkpoint: a source that moved on (a server was
    started on it again) is not the copy's source any more; nothing is mixed in."""
    data = _copy_of(source_log, tmp_path)
    dest = str(tmp_path / "copy")
    _killed_at("inside-a-table", str(data), dest)
    with open_harness(data) as h:
        assert h.post_event(user_event("u-new", req="req-new")).status_code in (200, 201)
    held = _contents(dest)
    capsys.readouterr()
    assert main(["migrate", "--from", str(data), "--to", dest]) == 1
    err = capsys.readouterr().err
    assert "interrupted tlog migrate of" in err and "changed since" in err, err
    assert _contents(dest) == held


def test_a_destination_without_the_marker_is_still_refused(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupted copy made before the marker existed (or records of another kind)
    holds no marker: refused as before, never cleared or mixed into."""
    data = _copy_of(source_log, tmp_path)
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
    held = _contents(str(dest))
    assert main(["migrate", "--from", str(data), "--to", str(dest)]) == 1
    assert "holds records" in capsys.readouterr().err
    assert _contents(str(dest)) == held


def test_an_unfinished_copy_is_not_taken_as_a_source(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _copy_of(source_log, tmp_path)
    from tlog.storage import Storage

    st = Storage(data / "db")
    try:
        st.set_meta(MARKER, b"{}")
    finally:
        st.close()
    assert main(["migrate", "--from", str(data), "--to", str(tmp_path / "copy")]) == 1
    assert "unfinished tlog migrate copy" in capsys.readouterr().err
