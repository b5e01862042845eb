"""ops11: a second ``tlog migrate`` into a destination that another one is writing stops at
once, naming the other, and writes nothing.

Before, a ``tlog migrate --restart`` clearing and copying again into a PostgreSQL
destination, and a plain ``tlog migrate`` resuming the same copy, ran at the same time: both
wrote into it (only the final whole-table comparison caught a wrong copy). The destination
is now locked for the whole migration: PostgreSQL, a session advisory lock of the schema
(the holder named by its connection's application_name); LMDB, the data directory's lock
as ``tlog serve`` takes it (already there). Two real processes: the first paused inside its
copy (a test-only patch in its own process), the second the plain CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.scim_service.conftest import open_harness, user_event

from ..support import tlog_cli
from .paused import command_script, paused
from .support import contents_of, copy_of, killed_at, marker_of

# ``tlog migrate ARGS`` in a process of its own that stops inside its copy of the entries
# table (its destination lock held, records being written), says so, and goes on once a
# line arrives on its stdin.
PAUSED = command_script(
    """
from tlog.storage import Storage
from tlog.pg import PgStorage

for cls in (Storage, PgStorage):
    def load_raw(self, table, items, _o=cls.load_raw):
        if table == "entries":
            pause()
        return _o(self, table, items)
    cls.load_raw = load_raw
""",
    "migrate",
)


def _changed(data: Path) -> None:
    with open_harness(data) as h:
        assert h.post_event(user_event("u-ops11", req="req-ops11")).status_code in (200, 201)


def _race(src: Path, src2: Path, dst: str, lock_words: tuple[str, ...]) -> None:
    killed_at("inside-a-table", str(src), dst)  # an interrupted copy, its marker in dst
    assert marker_of(dst) is not None
    _changed(src)  # the source moved on: --restart is the way
    shutil.rmtree(src2, ignore_errors=True)
    shutil.copytree(src, src2)  # the same log, another directory (its own LMDB lock)
    with paused(PAUSED, "--from", str(src), "--to", dst, "--restart") as first:
        assert "--restart: cleared the interrupted copy" in "".join(first.said), first.said
        # (an LMDB destination cannot be opened meanwhile: its lock is the point)
        held = contents_of(dst) if dst.startswith("postgresql://") else None
        # The second migration, resuming the same copy from the same log: refused at once.
        r = tlog_cli("migrate", "--from", str(src2), "--to", dst)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "resuming" not in r.stderr, r.stderr
        for w in (*lock_words, f"PID {first.proc.pid}"):
            assert w in r.stderr, r.stderr
        if held is not None:
            assert contents_of(dst) == held
        out, _ = first.resume()
        assert "migrate: OK" in out, out
    assert marker_of(dst) is None
    assert contents_of(dst) == contents_of(str(src))


def test_a_second_migrate_into_a_postgres_destination_stops_at_once(
    source_log: Path, tmp_path: Path, pg_url: str
) -> None:
    src = copy_of(source_log, tmp_path)
    _race(src, tmp_path / "src2", pg_url, ("is being written by tlog migrate", "one migration"))


def test_a_second_migrate_into_an_lmdb_destination_stops_at_once(
    source_log: Path, tmp_path: Path
) -> None:
    src = copy_of(source_log, tmp_path)
    _race(src, tmp_path / "src2", str(tmp_path / "dst"), ("is in use by", "tlog migrate"))


@pytest.mark.parametrize("kind", ["postgresql"])
def test_the_lock_goes_with_a_killed_migration(
    kind: str, source_log: Path, tmp_path: Path, pg_url: str
) -> None:
    """A migration killed with SIGKILL leaves no lock behind (the server ends its session):
    the same command run again resumes the copy at once."""
    src = copy_of(source_log, tmp_path)
    killed_at("inside-a-table", str(src), pg_url)
    r = tlog_cli("migrate", "--from", str(src), "--to", pg_url)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "resuming" in r.stderr, r.stderr
