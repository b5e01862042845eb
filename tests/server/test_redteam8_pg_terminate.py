"""Red team 8, attack 1: the writer's database connection killed in the middle of a commit
(``pg_terminate_backend``) while raw entries, raw batches, SCIM batches and single SCIM
events are being committed by a real ``tlog serve``.

The point is made deterministic with a trigger in the test's own schema: while a row of
``rt8_hold`` names it, the next commit sleeps inside its transaction, either in a statement
(``mid``: an AFTER trigger on the checkpoint insert) or at COMMIT (``commit``: a deferred
constraint trigger, run by COMMIT itself, so the frontend sees its connection die while
COMMIT is in flight: the outcome unknown case). The sleeping session is then terminated.

Expected: the requests of that commit get a clear 503 (never a 500, never a hang), the
server reconnects by itself, every acknowledged submission is in the log once at its index
with a verified inclusion proof, and no two checkpoints of one size differ."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.pg import PgCluster
from tests.pgsupport import open_store
from tests.support import start_server, tlog_cli

from .redteam8_load import Load, check_after, clear_503, make_token

pytestmark = pytest.mark.slow

HOLD = """
CREATE TABLE rt8_hold (what text PRIMARY KEY);
CREATE FUNCTION rt8_hold_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM rt8_hold WHERE what = TG_ARGV[0]) THEN
        PERFORM pg_sleep(120);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER rt8_mid AFTER INSERT ON tlog_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION rt8_hold_fn('mid');
CREATE CONSTRAINT TRIGGER rt8_commit AFTER INSERT ON tlog_checkpoints
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION rt8_hold_fn('commit');
"""


def _held_session(
    admin: psycopg.Connection[tuple[object, ...]], bound: float = 30.0
) -> tuple[int, str]:
    """The tlog session sleeping in the hold trigger: (pid, its statement)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'tlog' "
            "AND wait_event = 'PgSleep'"
        ).fetchone()
        if row is not None:
            return int(str(row[0])), str(row[1])
        time.sleep(0.02)
    raise AssertionError("no commit reached the hold trigger")


@pytest.mark.parametrize("where", ["mid", "commit"])
def test_the_writer_connection_terminated_mid_commit(
    tmp_path: Path, pg_url: str, pg_cluster: PgCluster, where: str
) -> None:
    data = tmp_path / "data"
    srv = start_server(data, None, "--storage-timeout", "20", database=pg_url, timeout=90)
    load: Load | None = None
    try:
        token = make_token(data, pg_url, "--role", "submitter", "--tenant", "acme")
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(HOLD)
            load = Load(srv.url, token)
            load.start()
            for _round in range(2):
                load.wait_acked(30)
                admin.execute("INSERT INTO rt8_hold VALUES (%s)", (where,))
                pid, query = _held_session(admin)
                if where == "commit":
                    assert query.strip().upper() == "COMMIT", query
                admin.execute("DELETE FROM rt8_hold")
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                # The server goes on by itself: new submissions of every kind land.
                load.wait_acked(60)
            load.stop()
            after = {k: load.one(k).status for k in ("raw", "raw-batch", "scim", "scim-batch")}
            assert set(after.values()) == {200}, after
        failed = load.failures()
        assert failed, "the terminated commits answered nobody 503?"
        st = open_store(pg_url, tmp_path)
        try:
            with st.read() as rv:
                entries = rv.entries(0, rv.tree_size())
        finally:
            st.close()
        check_after(load, srv.url, vkey, entries, clear_503)
    finally:
        if load is not None:
            load.stop()
        srv.stop()
    out = (tmp_path / "data-server.log").read_text()
    if where == "commit":
        assert "outcome unknown" in out, out[-3000:]
    assert "Exception in ASGI application" not in out, out[-5000:]
    fs = tlog_cli("fsck", "--data", str(data), "--database", pg_url)
    assert fs.returncode == 0, fs.stdout + fs.stderr
