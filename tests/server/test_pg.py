"""The PostgreSQL backend itself: its commit's failure modes (connection lost before and
during COMMIT), a server with fsync off refused, the schema and settings (URL, environment,
configuration file), and fsck's view of the state row. The behaviour both backends share is
tested by the modules that run on both (test_api, test_log, test_integrity, scim_service)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from client.formats.merkle import leaf_hash
from harness.pg import PgCluster
from tlog.backend import CommitUnknown, StorageError, open_backend
from tlog.config import ServeConfig, from_sources
from tlog.fsck import fsck
from tlog.log import Log
from tlog.pg import PgStorage, redact

from .conftest import make_signer


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStorage]:
    st = PgStorage(pg_url)
    yield st
    st.close()


def _terminate_writer(st: PgStorage, cluster: PgCluster) -> None:
    """Kill the server process behind the store's writer connection (a real lost link)."""
    conn = st._writer
    assert conn is not None
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def test_lost_connection_before_commit_acknowledges_nothing(
    store: PgStorage, pg_cluster: PgCluster
) -> None:
    """The writer's connection dies inside a batch, before its COMMIT: the batch fails
    (nothing of it is stored), the log stops signing until it has reloaded, then continues
    on a new one. (A connection found dead before a batch is replaced first, since red team
    8: tests/server/test_redteam8_pg_sessions.py.)"""
    log_ = Log(store, make_signer())
    log_.integrate([b"a", b"b"])

    def die(conn: psycopg.Connection[Any]) -> None:
        store.before_leaves = None
        with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (conn.info.backend_pid,))

    store.before_leaves = die
    with pytest.raises(StorageError):
        log_.integrate([b"c"])
    assert log_._stale
    with store.read() as rv:
        assert rv.tree_size() == 2
        assert rv.index_of(leaf_hash(b"c")) is None
    r = log_.integrate([b"c"])  # reloads and re-verifies first, on a new connection
    assert r.indices == [2] and not log_._stale
    assert fsck(store).ok


def test_connection_lost_during_commit_is_never_acknowledged_unverified(
    store: PgStorage, pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMIT sent on a connection the server has just killed: the outcome is unknown to
    the writer, so the batch is not acknowledged; the store (read back) does not hold it."""
    log_ = Log(store, make_signer())
    log_.integrate([b"a"])
    real_write = store._write

    def write_then_lose(fn: Any, what: str) -> Any:
        if "batch" not in what:
            return real_write(fn, what)

        def run(conn: psycopg.Connection[Any]) -> Any:
            out = fn(conn)
            _terminate_writer(store, pg_cluster)  # the COMMIT below meets a dead link
            return out

        return real_write(run, what)

    monkeypatch.setattr(store, "_write", write_then_lose)
    with pytest.raises(CommitUnknown):
        log_.integrate([b"lost"])
    monkeypatch.undo()
    with store.read() as rv:
        assert rv.tree_size() == 1
        assert rv.index_of(leaf_hash(b"lost")) is None
    assert log_.latest.size == 1
    assert log_.integrate([b"lost"]).indices == [1]
    assert fsck(store).ok


def test_commit_that_happened_is_acknowledged_only_after_reading_it_back(
    store: PgStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other outcome: COMMIT reached the server but its answer was lost. The log finds
    its exact checkpoint in the store after reloading, so acknowledging is safe."""
    log_ = Log(store, make_signer())
    real_commit = psycopg.Connection.commit

    def commit_then_drop(self: psycopg.Connection[Any]) -> None:
        real_commit(self)
        if self is not writer:  # the store's probe of the database (a broken connection
            return  # starts one) and any other connection commit as usual
        self.close()  # the answer never arrives: the writer cannot tell it committed
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    writer = store._writer_conn()  # the set-up commit happens before the patch matters
    with monkeypatch.context() as m:
        m.setattr(psycopg.Connection, "commit", commit_then_drop)
        r = log_.integrate([b"x", b"y"])
    monkeypatch.undo()
    assert r.indices == [0, 1]
    with store.read() as rv:
        assert rv.checkpoint(2) == r.checkpoint.note.encode()
    assert fsck(store).ok


def test_fsync_off_is_refused(pg_cluster: PgCluster) -> None:
    """A server that could lose acknowledged commits in a crash is not used."""
    pg_cluster.sql("ALTER SYSTEM SET fsync = off")
    pg_cluster.sql("SELECT pg_reload_conf()")
    try:
        with pytest.raises(StorageError, match="fsync = off"):
            PgStorage(pg_cluster.new_schema())
    finally:
        pg_cluster.sql("ALTER SYSTEM RESET fsync")
        pg_cluster.sql("SELECT pg_reload_conf()")
    PgStorage(pg_cluster.new_schema()).close()


def test_readonly_open_of_an_empty_database_is_refused(pg_cluster: PgCluster) -> None:
    with pytest.raises(StorageError, match="no log store"):
        PgStorage(pg_cluster.new_schema(), readonly=True)


def test_fsck_checks_the_state_row(store: PgStorage) -> None:
    log_ = Log(store, make_signer())
    log_.integrate([b"%d" % i for i in range(10)])
    assert fsck(store).ok
    with psycopg.connect(store._url, autocommit=True) as conn:
        conn.execute("UPDATE tlog_state SET checkpoint = 'x'")
    rep = fsck(store)
    assert any("tlog_state's checkpoint" in e for e in rep.errors), rep.errors


def test_password_never_in_messages() -> None:
    url = "postgresql://tlog:s3cret@127.0.0.1:1/logdb?connect_timeout=1"
    assert redact(url) == "postgresql://tlog@127.0.0.1:1/logdb"
    with pytest.raises(StorageError) as e:
        PgStorage(url)
    assert "s3cret" not in str(e.value)


def test_database_setting_from_flag_environment_and_file(tmp_path: Path, pg_url: str) -> None:
    conf = tmp_path / "tlog.toml"
    conf.write_text(f'database = "{pg_url}"\n')
    assert from_sources(ServeConfig, file=conf, env={}).database == pg_url
    env = {"TLOG_DATABASE": "postgresql://other@127.0.0.1/x"}
    assert from_sources(ServeConfig, file=conf, env=env).database == env["TLOG_DATABASE"]
    assert from_sources(ServeConfig, env={}).database is None  # default: LMDB in <data>/db
    st = open_backend(pg_url, tmp_path)
    assert st.kind == "postgresql" and st.shared
    st.close()
    with pytest.raises(StorageError, match="unknown --database"):
        open_backend("mysql://x", tmp_path)


def test_store_commands_on_the_database(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """token, fsck take --database; backup and recover say what to use instead."""
    from tlog.cli import main

    data = str(tmp_path)
    assert main(["token", "list", "--data", data, "--database", pg_url]) == 1
    assert "no log store in the database" in capsys.readouterr().err
    st = PgStorage(pg_url)
    Log(st, make_signer()).integrate([b"one", b"two"])
    st.close()
    assert main(["token", "create", "--role", "admin", "--data", data, "--database", pg_url]) == 0
    token_line = capsys.readouterr().out
    assert token_line.strip()
    assert main(["token", "list", "--data", data, "--database", pg_url]) == 0
    assert "admin" in capsys.readouterr().out
    assert main(["fsck", "--data", data, "--database", pg_url]) == 0
    assert "fsck: OK: 2 entries" in capsys.readouterr().out
    assert main(["backup", str(tmp_path / "b"), "--data", data, "--database", pg_url]) == 1
    assert "pg_dump" in capsys.readouterr().err
