"""Red team 8, in process: tlog's PostgreSQL sessions under an operator's role settings
and sessions the database ended while idle (the process-level attacks are in
test_redteam8_pg_timeouts.py)."""

from __future__ import annotations

import time

import psycopg
import pytest

from harness.pg import PgCluster
from tlog.backend import TurnTimeout
from tlog.log import Log
from tlog.pg import _STAGE_LOCK, _TURN_LOCK, PgStorage

from .conftest import make_signer
from .redteam8_load import role_url

__all__ = ["role_url"]  # a fixture


def _terminate_idle(cluster: PgCluster, pid: int) -> None:
    cluster.sql(f"SELECT pg_terminate_backend({pid}, 5000)")


def test_a_writer_connection_ended_while_idle_is_replaced(
    pg_url: str, pg_cluster: PgCluster
) -> None:
    """The writer's connection ended while idle (``idle_session_timeout``,
    ``pg_terminate_backend``, a restart): the next write takes a new one instead of failing
    (before red team 8: 503 for that batch, after every idle period)."""
    st = PgStorage(pg_url)
    try:
        log_ = Log(st, make_signer())
        log_.integrate([b"a"])
        for i in range(3):
            writer = st._writer
            assert writer is not None
            _terminate_idle(pg_cluster, writer.info.backend_pid)
            time.sleep(0.1)  # the FATAL and the end of the stream are in the socket
            res = log_.integrate([b"b%d" % i])
            assert res.indices == [i + 1]
        with st.read() as rv:
            assert rv.tree_size() == 4
    finally:
        st.close()


@pytest.mark.parametrize("turn", ["write", "stage"])
def test_statement_timeout_on_the_role_leaves_a_turn_its_own_bound(
    role_url: tuple[str, str], pg_cluster: PgCluster, turn: str
) -> None:
    """The role's ``statement_timeout`` (200 ms) shorter than a turn's wait (1 s): waiting
    for a turn another frontend holds ends as the turn's own timeout (:class:`TurnTimeout`:
    the SCIM writer then stages without the staging turn), not as a cancelled statement (a
    503 for every SCIM group while another frontend held the turn)."""
    url, role = role_url
    pg_cluster.sql(f"ALTER ROLE {role} SET statement_timeout = '200ms'")
    st = PgStorage(url)
    st.turn_timeout = st.stage_timeout = 1.0
    try:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SET statement_timeout = 0")
            other.execute(_TURN_LOCK if turn == "write" else _STAGE_LOCK)
            with pytest.raises(TurnTimeout):
                if turn == "write":
                    st.hold_turn()
                else:
                    st.hold_stage_turn()
        # Given back: taken at once.
        if turn == "write":
            st.hold_turn()()
        else:
            st.hold_stage_turn()[0]()
    finally:
        st.close()


def test_timeouts_of_the_role_are_warned_about_at_open(
    role_url: tuple[str, str], pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    url, role = role_url
    pg_cluster.sql(f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = '2s'")
    pg_cluster.sql(f"ALTER ROLE {role} SET lock_timeout = 0")
    with caplog.at_level("WARNING", logger="tlog.pg"):
        PgStorage(url).close()
    said = [r.getMessage() for r in caplog.records if r.name == "tlog.pg"]
    assert len(said) == 1 and "sets idle_in_transaction_session_timeout = 2000ms" in said[0]
    assert "ALTER ROLE" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="tlog.pg"):
        PgStorage(url, readonly=True).close()  # fsck, a read-only open: nothing to warn
    assert not [r for r in caplog.records if r.name == "tlog.pg"]


def test_the_writer_and_a_turn_outlive_the_roles_idle_session_timeout(
    role_url: tuple[str, str], pg_cluster: PgCluster
) -> None:
    """The role's ``idle_session_timeout`` (300 ms) ends sessions idle for longer. The
    writer's connection and the staging turn's lock session opt out of it: the writer found
    dead only by a poll before each write could still race the end (its first statement
    sent just as the server closed it: a 503 for that batch, seen in CI), and a turn's
    session ended while idle drops its advisory lock unseen."""
    url, role = role_url
    pg_cluster.sql(f"ALTER ROLE {role} SET idle_session_timeout = '300ms'")
    st = PgStorage(url)
    try:
        log_ = Log(st, make_signer())
        log_.integrate([b"a"])
        assert st._writer is not None
        pid = st._writer.info.backend_pid
        release, _ = st.hold_stage_turn()
        time.sleep(0.9)  # three times the timeout, idle
        assert log_.integrate([b"b"]).indices == [1]
        assert st._writer.info.backend_pid == pid, "the writer's session was ended"
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SET statement_timeout = 0; SET lock_timeout = 200")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(_STAGE_LOCK)  # still held by the idle turn session
        release()
    finally:
        st.close()
