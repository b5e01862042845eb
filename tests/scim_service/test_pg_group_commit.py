"""PostgreSQL: a group of single SCIM events commits its records and its leaves in ONE
transaction, behind the batch's compare-and-swap. The failure modes a network database adds
to LMDB's: the server ends the transaction between the records and the leaves, the connection
is lost during COMMIT (outcome unknown, either way), another frontend wins the
compare-and-swap, synchronous replication is switched off. In every case nothing
half-written is visible and the client gets a receipt only for what is committed whole.
And the records land as LMDB's do for the same writes (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from client.formats.checkpoint import open_checkpoint
from tlog.backend import CommitConflict, StorageError
from tlog.log import Log
from tlog.pg import PgStorage
from tlog.scim import store
from tlog.storage import Storage

from .conftest import T1, Harness, make_signer, open_harness, user_event
from .helpers import check_receipt

_examples = itertools.count()


@pytest.fixture
def pg_harness(tmp_path: Path, pg_url: str) -> Iterator[Harness]:
    with open_harness(tmp_path, database=pg_url) as h:
        yield h


def storage_of(h: Harness) -> PgStorage:
    st = h.log.storage
    assert isinstance(st, PgStorage) and st.aux_in_batch
    return st


def snapshot(st: PgStorage) -> tuple[int, list[tuple[bytes, bytes]]]:
    """What another session sees now: the tree size and every SCIM record."""
    with st.read() as rv:
        return rv.tree_size(), list(rv.aux_range(b""))


def other_session(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def assert_nothing_of(h: Harness, ev: dict[str, Any], before: Any) -> None:
    st = storage_of(h)
    assert snapshot(st) == before, "a record or a leaf of the failed commit is visible"
    assert h.log.latest.size == before[0]
    with st.read() as rv:
        assert rv.aux(store.eid_key(h.service.tenant_ref(T1), ev["eid"])) is None


def committed_whole(h: Harness, ev: dict[str, Any], index: int) -> None:
    """Answered now as a new event (never a duplicate of a half-written one) at ``index``,
    with a receipt the client library verifies, and found by search (its records exist)."""
    r = h.post_event(ev)
    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is False
    check_receipt(h, r.json(), index=index)
    (found,) = h.auditor().search(rid=ev["rid"]).results
    assert found.event is not None and found.event["eid"] == ev["eid"]


def test_server_ends_the_transaction_between_records_and_leaves(
    pg_harness: Harness, pg_url: str
) -> None:
    """``pg_terminate_backend`` from a second session once the group's records are written
    in the transaction and before its leaves: the client gets an error, never a receipt,
    and neither the records nor a leaf are stored; the writer reconnects for the retry."""
    h = pg_harness
    st = storage_of(h)
    ev = user_event()
    h.post_event(user_event(rid="u-first", req="req-first"))  # a log with something in it
    before = snapshot(st)
    seen: list[int] = []

    def terminate(conn: psycopg.Connection[Any]) -> None:
        # The records are in the transaction (its own session sees them) and nowhere else.
        key = store.eid_key(h.service.tenant_ref(T1), ev["eid"])
        row = conn.execute("SELECT count(*) FROM tlog_aux WHERE key = %s", (key,)).fetchone()
        assert row is not None
        seen.append(int(row[0]))
        assert snapshot(st) == before
        with other_session(pg_url) as killer:
            killer.execute("SELECT pg_terminate_backend(%s, 5000)", (conn.info.backend_pid,))

    st.before_leaves = terminate
    try:
        r = h.post_event(ev)
    finally:
        st.before_leaves = None
    assert seen == [1], "the hook ran between the records and the leaves"
    assert r.status_code == 503, r.text
    assert "checkpoint" not in r.text and "inclusion_proof" not in r.text
    assert_nothing_of(h, ev, before)
    committed_whole(h, ev, before[0])


def test_a_statement_refused_mid_transaction_aborts_the_records_too(pg_harness: Harness) -> None:
    """The server refuses a statement after the records (here a division by zero in the
    hook): the transaction is aborted, so the records written before it are gone too."""
    h = pg_harness
    st = storage_of(h)
    ev = user_event()
    before = snapshot(st)

    def refuse(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT 1 / 0")

    st.before_leaves = refuse
    try:
        r = h.post_event(ev)
    finally:
        st.before_leaves = None
    assert r.status_code == 503, r.text
    assert_nothing_of(h, ev, before)
    committed_whole(h, ev, 0)


def _on_commit(st: PgStorage, commit: Callable[[psycopg.Connection[Any]], None]) -> None:
    """From the next batch on, its COMMIT is ``commit(conn)`` instead (once)."""

    def hook(conn: psycopg.Connection[Any]) -> None:
        st.before_leaves = None
        real = conn.commit

        def replaced() -> None:
            conn.commit = real  # type: ignore[method-assign]
            commit(conn)

        conn.commit = replaced  # type: ignore[method-assign]

    st.before_leaves = hook


def test_connection_lost_during_commit_and_not_committed(pg_harness: Harness, pg_url: str) -> None:
    """The session is terminated as COMMIT is sent: the outcome is unknown to the writer,
    which finds no such checkpoint in the store, so nothing is acknowledged and nothing of
    the group is stored."""
    h = pg_harness
    st = storage_of(h)
    ev = user_event()
    before = snapshot(st)

    def lost(conn: psycopg.Connection[Any]) -> None:
        with other_session(pg_url) as killer:
            killer.execute("SELECT pg_terminate_backend(%s, 5000)", (conn.info.backend_pid,))
        conn.commit()

    _on_commit(st, lost)
    r = h.post_event(ev)
    assert st.before_leaves is None, "the batch went through the hook"
    assert r.status_code == 503, r.text
    assert_nothing_of(h, ev, before)
    committed_whole(h, ev, 0)


def test_connection_lost_after_commit_acknowledges_records_and_leaf(pg_harness: Harness) -> None:
    """COMMIT reached the server but its answer was lost: the writer finds its checkpoint in
    the store and answers the receipt; the records came with it (same transaction), so the
    event is complete and searchable, and a retry is a duplicate at the same index."""
    h = pg_harness
    st = storage_of(h)
    ev = user_event()

    def answer_lost(conn: psycopg.Connection[Any]) -> None:
        conn.commit()
        conn.close()
        raise psycopg.OperationalError("simulated: the connection was lost during COMMIT")

    _on_commit(st, answer_lost)
    r = h.post_event(ev)
    assert st.before_leaves is None, "the batch went through the hook"
    assert r.status_code == 200, r.text
    check_receipt(h, r.json(), index=0)
    (found,) = h.auditor().search(rid=ev["rid"]).results
    assert found.event is not None and found.event["eid"] == ev["eid"]
    again = h.post_event(ev).json()
    assert again["duplicate"] is True and again["index"] == 0


def test_a_group_losing_the_compare_and_swap_writes_no_records(
    pg_harness: Harness, pg_url: str
) -> None:
    """Another frontend commits between this group's staging and its commit: the batch's
    compare-and-swap fails, and its transaction writes none of the group's records (not
    even uncommitted: it holds no lock on the state row, so it must not take locks on
    records the winner may be writing); the sequencer rebuilds it on the new state and
    commits records and leaf together, after the other frontend's entry."""
    h = pg_harness
    st = storage_of(h)
    ev = user_event()
    other = Log(PgStorage(pg_url), make_signer())
    real = st.commit_batch
    refused: list[Any] = []
    inside: list[int] = []  # the group's eid records the transaction sees, per attempt

    def count(conn: psycopg.Connection[Any]) -> None:
        key = store.eid_key(h.service.tenant_ref(T1), ev["eid"])
        row = conn.execute("SELECT count(*) FROM tlog_aux WHERE key = %s", (key,)).fetchone()
        assert row is not None
        inside.append(int(row[0]))

    def race(batch: Any) -> None:
        if refused:
            real(batch)
            return
        assert batch.aux, "the group's records travel with its leaf"
        other.integrate([b"another frontend's entry"])
        try:
            real(batch)
        except CommitConflict as exc:
            refused.append(exc)
            assert snapshot(st)[0] == 1
            with st.read() as rv:
                assert rv.aux(store.eid_key(h.service.tenant_ref(T1), ev["eid"])) is None
            raise
        raise AssertionError("the compare-and-swap let a stale batch through")

    st.commit_batch = race  # type: ignore[method-assign]
    st.before_leaves = count
    try:
        r = h.post_event(ev)
    finally:
        st.commit_batch = real  # type: ignore[method-assign]
        st.before_leaves = None
        other.storage.close()
    assert refused, "the first attempt lost the compare-and-swap"
    assert inside == [0, 1], "the losing transaction wrote no record; the winning one did"
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["duplicate"] is False
    cp, _ = open_checkpoint(d["checkpoint"], [h.signer.verifier])
    assert d["index"] == 1 and cp.size == 2
    check_receipt(h, d, index=1)
    (found,) = h.auditor().search(rid=ev["rid"]).results
    assert found.event is not None and found.event["eid"] == ev["eid"]


def test_replication_check_covers_the_records(pg_harness: Harness) -> None:
    """``--replication sync`` re-checks ``synchronous_standby_names`` inside every commit: a
    server that stopped replicating synchronously gets neither the group's records nor its
    leaf (they are one transaction), nor records written alone (``put_aux``). The test
    server has no standby, so switching the running backend to ``sync`` is that case."""
    h = pg_harness
    st = storage_of(h)
    h.post_event(user_event(rid="u-first", req="req-first"))  # the writer session is open
    ev = user_event()
    before = snapshot(st)
    st.replication = "sync"
    try:
        r = h.post_event(ev)
        assert r.status_code == 503, r.text
        assert "stopped replicating synchronously" in r.text
        with pytest.raises(StorageError, match="stopped replicating synchronously"):
            st.put_aux([(b"test/alone", b"v")])
    finally:
        st.replication = "none"
    assert_nothing_of(h, ev, before)
    committed_whole(h, ev, before[0])


_records = hs.lists(
    hs.tuples(
        hs.sampled_from([b"a", b"b", b"c", b"d\xff", b""]),
        hs.none() | hs.binary(min_size=0, max_size=40),
    ),
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(writes=hs.lists(hs.tuples(hs.booleans(), _records), min_size=1, max_size=4))
def test_records_land_as_on_lmdb(tmp_path: Path, pg_url: str, writes: Any) -> None:
    """The records a batch carries (commit_batch's array statements) and those written
    alone (put_aux) end as LMDB's do for the same writes: a later write of a key in one
    transaction wins, None deletes (a missing key too), empty values stay."""
    n = next(_examples)
    prefix = b"hyp/%d/" % n
    lmdb = Log(Storage(tmp_path / f"lmdb{n}"), make_signer())
    pgl = Log(PgStorage(pg_url), make_signer())
    try:
        for i, (batch, items) in enumerate(writes):
            items = [(prefix + k, v) for k, v in items]
            for lg in (lmdb, pgl):
                if batch:
                    lg.integrate([b"hyp-%d-%d" % (n, i)], aux=items)
                elif items:
                    lg.storage.put_aux(items)
        with lmdb.storage.read() as a, pgl.storage.read() as b:
            assert list(b.aux_range(prefix)) == list(a.aux_range(prefix))
    finally:
        lmdb.storage.close()
        pgl.storage.close()
