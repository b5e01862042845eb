"""redteam9: the PostgreSQL store's operator lock, between real ``tlog migrate``, ``tlog
serve`` and ``tlog recover`` processes.

Before, ``tlog migrate`` locked its destination against another migration only, and wrote
its marker (which ``tlog serve`` refuses) after checking the whole source: a ``tlog serve``
started on the still empty destination in between created a log there, and only the final
comparison caught it. ``tlog recover`` on PostgreSQL without a SCIM key file on its host
took no lock at all: it ran beside a live server (of another host) and beside another
recover. Now one session advisory lock per schema (:func:`tlog.pg.hold_store`) is held for
the whole run, exclusively by migrate (taken before the destination is even opened) and
recover, shared by every serve; each refusal names the holder (its PID and host).

Each test runs the real commands as processes of their own; one is paused (a test-only
patch in its own process) where the lock is held and nothing else has happened yet."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.scim_service.conftest import ORIGIN

from ..support import serve_args, start_server, tlog_cli
from .paused import command_script, pause_at
from .paused import paused as run_paused
from .support import contents_of, copy_of, marker_of

pytestmark = pytest.mark.slow  # processes started, killed and restarted


@contextmanager
def paused(command: str, at: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``tlog command args`` running, paused at the first call of ``at``
    (``module:function``, its locks held); on leaving, it is let go and must end with
    exit 0."""
    with run_paused(command_script(pause_at(at), command), *args) as held:
        yield held.proc
        held.resume()


def _refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def _serve_refused(data: Path, database: str) -> str:
    """Start a real ``tlog serve`` on ``database``: it must exit; its output."""
    try:
        server = start_server(data, None, database=database, origin=ORIGIN, timeout=60)
    except RuntimeError as exc:
        return str(exc)
    server.stop()
    raise AssertionError("tlog serve started")


def _log_key_only(data: Path, to: Path) -> Path:
    """Another host's data directory for the same log: its key and remembered checkpoint,
    no SCIM key file."""
    to.mkdir()
    for name in ("log.key", "last-checkpoint"):
        shutil.copy2(data / name, to / name)
    return to


def test_serve_is_refused_from_a_migrations_first_moment(
    source_log: Path, tmp_path: Path, pg_url: str
) -> None:
    """A migration paused where it checks the source (its lock held, its marker not yet
    written, the destination still empty): a ``tlog serve`` on the destination exits at
    once naming it and writes nothing; the migration then completes."""
    src = copy_of(source_log, tmp_path)
    with paused("migrate", "tlog.migrate:fsck", "--from", str(src), "--to", pg_url) as first:
        before = contents_of(pg_url)
        assert not any(v for t, v in before.items() if t != "meta")  # the new store, empty
        refusal = _serve_refused(tmp_path / "serve", pg_url)
        assert f"tlog migrate PID {first.pid}" in refusal, refusal[-3000:]
        assert "does not start while a tlog migrate" in refusal, refusal[-3000:]
        assert "Traceback" not in refusal, refusal[-3000:]
        assert not (tmp_path / "serve" / "log.key").exists()  # it created nothing
        assert contents_of(pg_url) == before  # no log created, no marker yet
    assert marker_of(pg_url) is None
    assert contents_of(pg_url) == contents_of(str(src))


def test_a_migration_into_a_served_store_names_the_server(
    source_log: Path, tmp_path: Path, pg_url: str
) -> None:
    src = copy_of(source_log, tmp_path)
    server = start_server(tmp_path / "serve", None, database=pg_url, origin=ORIGIN)
    try:
        r = tlog_cli("migrate", "--from", str(src), "--to", pg_url)
        _refused(r, f"tlog serve PID {server.proc.pid}", "is in use by", "nothing was written")
        assert httpx.get(server.url + "/checkpoint").status_code == 200
    finally:
        server.stop()


def _served_log(tmp_path: Path, database: str) -> tuple[Path, str]:
    """A log served once on ``database`` (its data directory, its checkpoint's size)."""
    data = tmp_path / "data"
    server = start_server(data, None, database=database, origin=ORIGIN)
    try:
        size = httpx.get(server.url + "/checkpoint").text.split("\n")[1]
    finally:
        server.stop()
    return data, size


def test_recover_without_a_key_file_is_refused_beside_a_live_server(
    tmp_path: Path, pg_url: str
) -> None:
    """``tlog recover`` from another host (the log key, no SCIM key file there, so no key
    file lock to meet) while a real ``tlog serve`` serves the store: refused, naming it."""
    data, _ = _served_log(tmp_path, pg_url)
    other = _log_key_only(data, tmp_path / "other-host")
    server = start_server(data, None, database=pg_url, origin=ORIGIN)
    try:
        r = tlog_cli("recover", "--data", str(other), *serve_args(pg_url), "--from", pg_url)
        _refused(r, f"tlog serve PID {server.proc.pid}", "tlog recover needs the store")
        assert (other / "last-checkpoint").read_bytes() == (data / "last-checkpoint").read_bytes()
        assert httpx.get(server.url + "/checkpoint").status_code == 200
    finally:
        server.stop()
    r = tlog_cli("recover", "--data", str(other), *serve_args(pg_url), "--from", pg_url)
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_a_second_recover_and_a_server_are_refused_while_recover_runs(
    tmp_path: Path, pg_url: str
) -> None:
    data, _ = _served_log(tmp_path, pg_url)
    one = _log_key_only(data, tmp_path / "host-1")
    two = _log_key_only(data, tmp_path / "host-2")
    args = (*serve_args(pg_url), "--from", pg_url)
    with paused("recover", "tlog.recover:recover_database", "--data", str(one), *args) as first:
        r = tlog_cli("recover", "--data", str(two), *args)
        _refused(r, f"tlog recover PID {first.pid}", "tlog recover needs the store")
        refusal = _serve_refused(data, pg_url)
        assert f"tlog recover PID {first.pid}" in refusal, refusal[-3000:]
    r = tlog_cli("recover", "--data", str(two), *args)
    assert r.returncode == 0, (r.stdout, r.stderr)
