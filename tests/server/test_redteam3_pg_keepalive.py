"""A database server that vanishes without closing its connections (a power loss, a
network partition, a VM gone) under a serving frontend.

The frontend's connections had libpq's defaults: TCP keepalives after the system's idle
time (7,200 s on Linux) and no TCP user timeout. A writer waiting for the answer to its
COMMIT from a primary that lost power therefore waited about two hours before its
connection failed, holding the writer lock: every batch of that frontend answered 503 for
those hours, although the standby had been promoted within seconds (the documented
failover, tests/failover/, kills the primary's process, and its kernel closes the
connections at once: that case never showed it). Now every connection tlog opens probes
an idle peer after 10 s (3 probes 5 s apart), unless the URL sets its own values (libpq's
``keepalives_*``). This checks the settings; a vanished server is not simulated here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tlog.pg import PgStorage


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStorage]:
    st = PgStorage(pg_url)
    yield st
    st.close()


def _params(conn: object) -> dict[str, str]:
    return dict(conn.info.get_parameters())  # type: ignore[attr-defined]


def test_every_connection_detects_a_vanished_server(store: PgStorage) -> None:
    with store._wlock:
        writer = _params(store._writer_conn())
    with store.read() as rv:
        reader = _params(rv._conn)
    for got in (writer, reader):
        assert got.get("keepalives") == "1"
        assert got.get("keepalives_idle") == "10"
        assert got.get("keepalives_interval") == "5"
        assert got.get("keepalives_count") == "3"


def test_the_urls_own_settings_are_kept(pg_url: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    st = PgStorage(f"{pg_url}{sep}keepalives_idle=60")
    try:
        with st._wlock:
            got = _params(st._writer_conn())
        assert got.get("keepalives_idle") == "60"
        assert got.get("keepalives_count") == "3"
    finally:
        st.close()
