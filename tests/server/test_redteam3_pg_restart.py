"""The database restarted (or every tlog backend terminated) under a serving frontend.

The pooled read connections died with the server, and the pool handed them out one by one:
each next read on a dead connection failed (503) until every pooled connection had been
found dead, so after one restart up to :data:`tlog.pg.POOL_MAX` reads and batches in a row
failed against a database that was up again (a batch reloads through the readers after a
failure). Now a read whose first statement finds its connection dead (nothing of the
snapshot was read yet) checks the pool (dropping every dead idle connection) and runs again
on a live one; only the batches that find the writer's or the write turn's own connection
dead (one each) answer 503, as documented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest

from harness.pg import PgCluster
from tlog.log import Log
from tlog.pg import PgStorage

from .conftest import Harness, make_signer


def _terminate_all(cluster: PgCluster) -> int:
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'tlog' AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def _grow_pool(st: PgStorage, n: int) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(n):
            stack.enter_context(st.read()).tree_size()


def _pg_frontend_with(harness: Harness, database: str | None, entries: int) -> None:
    """Skip unless the frontend is on PostgreSQL; add ``entries`` entries through it, then
    grow its pool to four connections (so there are pooled connections to find dead)."""
    if database is None:
        pytest.skip("PostgreSQL only")
    for i in range(entries):
        assert harness.add(b"x%d" % i).status_code == 200
    assert isinstance(harness.log.storage, PgStorage)
    _grow_pool(harness.log.storage, 4)


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStorage]:
    st = PgStorage(pg_url)
    yield st
    st.close()


def test_reads_after_the_backends_died_find_live_connections(
    store: PgStorage, pg_cluster: PgCluster
) -> None:
    log_ = Log(store, make_signer())
    log_.integrate([b"a", b"b", b"c"])
    _grow_pool(store, 4)
    assert _terminate_all(pg_cluster) >= 4
    for _ in range(6):
        with store.read() as rv:
            assert rv.tree_size() == 3
            assert rv.entries(0, 3) == [b"a", b"b", b"c"]
        with store.read() as rv:
            assert [e for _, e in rv.checkpoints()][-1] == log_.latest.note.encode()


def test_one_batch_fails_after_the_backends_died_not_one_per_connection(
    harness: Harness, database: str | None, pg_cluster: PgCluster
) -> None:
    _pg_frontend_with(harness, database, 5)
    assert _terminate_all(pg_cluster) >= 5
    codes = [harness.add(b"y%d" % i).status_code for i in range(6)]
    # The batches that find the writer's or the write turn's connection dead (one each) are
    # answered 503 (not committed); none fails on a dead pooled read connection after them.
    first_ok = codes.index(200) if 200 in codes else len(codes)
    assert first_ok <= 2 and codes[first_ok:] == [200] * (6 - first_ok), codes
    r = harness.client.get(f"/tile/entries/000.p/{harness.log.latest.size}")
    assert r.status_code == 200


def test_a_streamed_first_read_after_the_backends_died(
    store: PgStorage, pg_cluster: PgCluster
) -> None:
    log_ = Log(store, make_signer())
    log_.integrate([b"a", b"b"])
    _grow_pool(store, 3)
    _terminate_all(pg_cluster)
    for _ in range(4):
        with store.read() as rv:  # a server-side cursor is the view's first statement
            assert [n for n, _ in rv.checkpoints()][-1] == 2


def test_the_database_restarted_under_a_serving_frontend(
    harness: Harness, database: str | None, pg_cluster: PgCluster
) -> None:
    _pg_frontend_with(harness, database, 3)
    pg_cluster.stop("fast")
    r = harness.add(b"while-down")
    assert r.status_code == 503 and "database" in r.json()["error"]
    pg_cluster.start()
    codes = [harness.add(b"y%d" % i).status_code for i in range(5)]
    assert codes[1:] == [200] * 4, codes
    r = harness.client.get(f"/tile/entries/000.p/{harness.log.latest.size}")
    assert r.status_code == 200
    size = harness.log.latest.size
    with harness.log.storage.read() as rv:
        assert rv.tree_size() == size  # nothing acknowledged was lost, nothing forked
