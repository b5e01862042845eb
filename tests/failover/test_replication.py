"""Issue 12 part 2 (HA half): ``--replication sync`` refuses a database that does not
replicate synchronously, and nothing is acknowledged that a failover could lose.

Against real PostgreSQL servers: a primary with a synchronous streaming standby
(harness/pgreplica.py) and the single server of harness/pg.py.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import psycopg
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_consistency
from harness.pg import PgCluster
from harness.pgreplica import Replicated
from tests.server.conftest import ORIGIN, make_signer
from tests.support import tlog_cli
from tlog.backend import CommitUnknown, StorageError
from tlog.log import Log
from tlog.pg import PgStorage

pytestmark = pytest.mark.slow


def test_sync_mode_refuses_a_server_without_synchronous_replication(
    pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_cluster.new_schema()  # one server: synchronous_standby_names is empty
    with pytest.raises(StorageError, match="synchronous_standby_names is empty"):
        PgStorage(url, replication="sync")
    # The explicit opt-outs: one server, or a managed service that guarantees it (logged).
    PgStorage(url, replication="none").close()
    with caplog.at_level(logging.WARNING, logger="tlog.pg"):
        PgStorage(url, replication="managed").close()
    assert "trusting the database service" in caplog.text
    with pytest.raises(StorageError, match="unknown --replication"):
        PgStorage(url, replication="async")


def test_serve_defaults_to_sync_and_says_how_to_opt_out(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    r = tlog_cli(
        "serve",
        "--data",
        str(tmp_path / "d"),
        "--database",
        pg_cluster.new_schema(),
        "--origin",
        ORIGIN,
    )
    assert r.returncode != 0
    assert "synchronous_standby_names is empty" in r.stderr
    assert "--replication managed" in r.stderr and "--replication none" in r.stderr


def test_sync_mode_needs_a_streaming_synchronous_standby(pair: Replicated) -> None:
    url = pair.create_database("refuse")
    PgStorage(url, replication="sync").close()  # the standby streams: accepted
    standby = pair.standby
    assert standby is not None
    standby.kill()
    try:
        deadline = time.monotonic() + 30
        while pair.primary.query("SELECT count(*) FROM pg_stat_replication")[0][0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(StorageError, match="no synchronous standby is streaming"):
            PgStorage(url, replication="sync")
    finally:
        pair.add_standby()


def test_synchronous_replication_switched_off_while_running_stops_commits(
    pair: Replicated,
) -> None:
    """E.g. Patroni without synchronous_mode_strict drops the standby from
    synchronous_standby_names: a running frontend must not go on committing asynchronously."""
    url = pair.create_database("switched")
    storage = PgStorage(url, replication="sync")
    log_ = Log(storage, make_signer())
    try:
        before = log_.integrate([b"x"]).checkpoint
        pair.primary.query("ALTER SYSTEM SET synchronous_standby_names = ''")
        pair.primary.query("SELECT pg_reload_conf()")
        refused = None
        for i in range(50):  # until the writer's session has the reloaded setting
            try:
                before = log_.integrate([b"y%d" % i]).checkpoint
            except StorageError as exc:
                refused = exc
                break
            time.sleep(0.1)
        assert refused is not None and "stopped replicating synchronously" in str(refused)
        assert log_.latest == before  # nothing of the refused batch was signed or handed out
    finally:
        pair.primary.query("ALTER SYSTEM RESET synchronous_standby_names")
        pair.primary.query("SELECT pg_reload_conf()")
        storage.close()


def writer_pid(pair: Replicated, dbname: str) -> int:
    """The backend of the log's writer while its COMMIT waits for the standby."""
    deadline = time.monotonic() + 30
    while True:
        rows = pair.primary.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'SyncRep'",
            dbname,
        )
        if rows:
            return int(rows[0][0])
        assert time.monotonic() < deadline, "the commit never waited for the standby"
        time.sleep(0.02)


def test_a_commit_the_standby_did_not_confirm_is_never_acknowledged(pair: Replicated) -> None:
    """PostgreSQL answers COMMIT with success (and a WARNING) when the wait for the
    synchronous standby is cancelled: the batch is then on the primary only, visible there,
    and would be lost by a failover. The log must not hand out its checkpoint, nor adopt it
    on a reload, until a standby has it."""
    url = pair.create_database("cancel")
    signer = make_signer()
    storage = PgStorage(url, replication="sync")
    storage.settle_timeout = 1.0
    log_ = Log(storage, signer)
    try:
        first = log_.integrate([b"a", b"b"]).checkpoint
        standby = pair.standby
        assert standby is not None
        standby.kill()  # commits now wait for a standby that is gone
        outcome: list[BaseException | object] = []

        def write() -> None:
            try:
                outcome.append(log_.integrate([b"c"]))
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=write)
        t.start()
        pid = writer_pid(pair, "cancel")
        assert pair.primary.query("SELECT pg_cancel_backend(%s)", pid)[0][0]
        t.join(60)
        assert not t.is_alive()
        assert isinstance(outcome[0], CommitUnknown), outcome
        # The hazard was real: the batch is committed and visible on the primary ...
        with psycopg.connect(pair.primary.url("cancel"), autocommit=True) as conn:
            row = conn.execute("SELECT tree_size FROM tlog_state").fetchone()
            assert row is not None and row[0] == 3
        # ... yet nothing of it was handed out, and a reload does not adopt it either.
        assert log_.latest == first
        with pytest.raises(StorageError, match="no synchronous standby is streaming"):
            log_.reload()
        assert log_.latest == first

        # A standby again: the primary's history (with the batch) is now on two servers.
        pair.add_standby()
        result = log_.integrate([b"d"])
        after = result.checkpoint
        assert after.size == 4
        verifier = signer.verifier
        old, _ = open_checkpoint(first.note, [verifier], origin=ORIGIN)
        new, _ = open_checkpoint(after.note, [verifier], origin=ORIGIN)
        verify_consistency(
            old.size,
            new.size,
            old.root_hash,
            new.root_hash,
            log_.consistency_proof(old.size, new.size),
        )

        # The barrier a reload runs is bounded: without a standby it fails, it does not hang.
        pair.standby.kill()  # type: ignore[union-attr]
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="cannot confirm"):
            storage.settle()
        assert time.monotonic() - t0 < 30
        assert log_.latest == after
    finally:
        storage.close()
