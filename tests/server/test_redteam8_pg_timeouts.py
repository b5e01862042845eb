"""Red team 8, attack 2: an operator's timeouts set low on the role tlog connects as
(``ALTER ROLE ... SET statement_timeout / lock_timeout / idle_in_transaction_session_timeout
/ idle_session_timeout``), under raw and SCIM load on a real ``tlog serve``.

Expected: a start-up warning naming each setting that can cut a commit or a session; a
commit the database cancels (a statement over ``statement_timeout``, a lock wait over
``lock_timeout``) is a clear 503 with nothing written, never a 500, and the next ones land;
sessions ended while idle (``idle_session_timeout``) are replaced without failing a request;
every acknowledged submission is in the log once with a verified inclusion proof."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.pg import PgCluster
from tests.support import ServerProcess, start_server, tlog_cli

from .redteam8_load import (
    KINDS,
    Load,
    check_after,
    clear_503,
    make_token,
    role_url,
    stored_entries,
)

__all__ = ["role_url"]  # a fixture

pytestmark = pytest.mark.slow

HOLD = """
CREATE TABLE rt8_hold (what text PRIMARY KEY);
CREATE FUNCTION rt8_hold_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM rt8_hold) THEN PERFORM pg_sleep(3); END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER rt8_mid AFTER INSERT ON tlog_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION rt8_hold_fn();
"""


def _server(tmp_path: Path, url: str) -> tuple[ServerProcess, str, str]:
    data = tmp_path / "data"
    srv = start_server(data, None, "--storage-timeout", "10", database=url, timeout=90)
    token = make_token(data, url, "--role", "submitter", "--tenant", "acme")
    vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
    return srv, token, vkey


def _finish(tmp_path: Path, url: str, srv: ServerProcess, load: Load, vkey: str) -> str:
    check_after(load, srv.url, vkey, stored_entries(url, tmp_path), clear_503)
    srv.stop()
    out = (tmp_path / "data-server.log").read_text()
    assert "Exception in ASGI application" not in out, out[-5000:]
    fs = tlog_cli("fsck", "--data", str(tmp_path / "data"), "--database", url)
    assert fs.returncode == 0, fs.stdout + fs.stderr
    return out


def test_sessions_ended_while_idle_fail_no_request(
    tmp_path: Path, role_url: tuple[str, str], pg_cluster: PgCluster
) -> None:
    """``idle_session_timeout``: every tlog session idle for longer is ended by the
    database (the writer's, the turns', the pooled readers'). The next write finds its
    connection dead before it sent anything: it must take a new one, not answer 503 after
    every pause."""
    url, role = role_url
    pg_cluster.sql(f"ALTER ROLE {role} SET idle_session_timeout = '300ms'")
    srv, token, vkey = _server(tmp_path, url)
    load = Load(srv.url, token)
    try:
        for _ in range(4):
            for kind in KINDS:
                a = load.one(kind)
                assert a.status == 200, (kind, a.status, a.text[:300])
            time.sleep(0.7)  # every session of the frontend is ended meanwhile
        out = _finish(tmp_path, url, srv, load, vkey)
    finally:
        srv.stop()
    assert "sets idle_session_timeout = 300ms" in out, out[-3000:]


def test_a_commit_over_statement_timeout_is_a_clear_503(
    tmp_path: Path, role_url: tuple[str, str], pg_cluster: PgCluster
) -> None:
    url, role = role_url
    pg_cluster.sql(f"ALTER ROLE {role} SET statement_timeout = '1s'")
    srv, token, vkey = _server(tmp_path, url)
    load = Load(srv.url, token)
    try:
        with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
            admin.execute(f"SET search_path = {role}")
            admin.execute(HOLD)
            admin.execute(f"GRANT SELECT ON rt8_hold TO {role}")
            load.start()
            load.wait_acked(30)
            admin.execute("INSERT INTO rt8_hold VALUES ('x')")
            time.sleep(2.5)  # the commits in this window sleep 3 s: cancelled at 1 s
            admin.execute("DELETE FROM rt8_hold")
            load.wait_acked(60)
            load.stop()
        failed = load.failures()
        # Each a clear 503 (check_after); the cancelled commit says why.
        assert any("statement timeout" in a.text for a in failed), [a.text for a in failed]
        out = _finish(tmp_path, url, srv, load, vkey)
    finally:
        load.stop()
        srv.stop()
    assert "sets statement_timeout = 1000ms" in out, out[-3000:]


def test_a_commit_over_lock_timeout_is_a_clear_503(
    tmp_path: Path, role_url: tuple[str, str], pg_cluster: PgCluster
) -> None:
    """Another session holds the state row (another frontend frozen mid-commit): with
    ``lock_timeout`` the waiting commits are cancelled, and answered 503 at once."""
    url, role = role_url
    pg_cluster.sql(
        f"ALTER ROLE {role} SET lock_timeout = '500ms'; "
        f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = '5s'"
    )
    srv, token, vkey = _server(tmp_path, url)
    load = Load(srv.url, token)
    try:
        load.start()
        load.wait_acked(30)
        with psycopg.connect(pg_cluster.url(), autocommit=False) as holder:
            holder.execute(f"SELECT 1 FROM {role}.tlog_state WHERE id = 1 FOR UPDATE")
            time.sleep(2.0)
            holder.rollback()
        load.wait_acked(60)
        load.stop()
        failed = load.failures()
        assert any("lock timeout" in a.text for a in failed), [a.text for a in failed]
        out = _finish(tmp_path, url, srv, load, vkey)
    finally:
        load.stop()
        srv.stop()
    assert "sets lock_timeout = 500ms" in out, out[-3000:]
    assert "sets idle_in_transaction_session_timeout = 5000ms" in out, out[-3000:]


def test_no_warning_without_such_settings(tmp_path: Path, role_url: tuple[str, str]) -> None:
    url, _ = role_url
    srv, _, _ = _server(tmp_path, url)
    srv.stop()
    out = (tmp_path / "data-server.log").read_text()
    assert "statement_timeout" not in out and "idle_session_timeout" not in out, out
