"""Red team 11, part 2: ``tlog serve``'s operator-lock connection cut by the network.

Not a restart, not a terminated session (red team 10 tested those): the path to the
database goes dark and nobody closes anything. Here the cut is behind a TCP relay
(:class:`harness.tcprelay.TcpRelay`, as HAProxy or a cloud load balancer in front of
PostgreSQL): the relay's kernel keeps answering TCP, keepalive probes included, so the
lock connection's TCP keepalives never fire. Before, serve then never noticed: it kept
believing it held the lock (``/readyz`` 200, ``store_lock`` "held") for as long as the
path stayed dark. Now :class:`tlog.pg.OperatorHold` also makes a round trip on the lock
connection every ``HOLD_PROBE_EVERY`` seconds, bounded by ``HOLD_PROBE_TIMEOUT`` on this
side: the cut is seen within about 11 s (docs/operations.md), logged CRITICAL, writes get
503 with the reason, reads go on, and when the path heals serve takes the lock again and
writes resume. Every acknowledged entry is at its index afterwards; fsck is clean.

Real processes: a real ``tlog serve`` whose database URL points at the relay, a real
PostgreSQL server of the test session."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest

from harness.pg import PgCluster
from harness.tcprelay import TcpRelay

from ..support import start_server, tlog_cli
from .lockwatch import check_acked, lock_detail, post_raw, ready, until

pytestmark = pytest.mark.slow


def test_a_black_holed_lock_connection_is_seen_and_writes_wait_for_the_path(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    relay = TcpRelay("127.0.0.1", pg_cluster.port)
    via = pg_url.replace(f"127.0.0.1:{pg_cluster.port}", f"127.0.0.1:{relay.port}")
    assert via != pg_url
    data = tmp_path / "data"
    log_path = tmp_path / "data-server.log"
    srv = start_server(data, None, database=via, timeout=90)
    acked: list[tuple[int, bytes]] = []
    try:
        raw = (data / "demo-submitter.token").read_text().strip()
        for i in range(3):
            r = post_raw(srv.url, raw, b"before-%d" % i)
            assert r.status_code == 200, r.text
            acked.append((r.json()["index"], b"before-%d" % i))
        assert ready(srv.url)[0] == 200
        with psycopg.connect(pg_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT client_port FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"tlog serve PID {srv.proc.pid} on host %",),
            ).fetchone()
        assert row is not None
        relay.black_hole(int(row[0]))

        # Seen (the bound is about 11 s; the test allows far more on a loaded machine).
        until("serve saw the cut", lambda: "lost the store's operator lock" in lock_detail(srv.url))
        text = log_path.read_text()
        assert "STORE OPERATOR LOCK LOST on" in text, text[-3000:]
        r = post_raw(srv.url, raw, b"cut")
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers.get("Retry-After"), r.headers
        assert "operator lock" in r.json()["error"], r.text
        assert httpx.get(srv.url + "/checkpoint", timeout=30).status_code == 200  # reads go on
        assert "tlog_store_lock_held 0.0" in httpx.get(srv.url + "/metrics", timeout=30).text

        relay.heal()
        until("serve holds the lock again", lambda: ready(srv.url)[0] == 200)
        r = post_raw(srv.url, raw, b"after")
        assert r.status_code == 200, r.text
        acked.append((r.json()["index"], b"after"))
        text = log_path.read_text()
        assert "is held again: writes resume" in text, text[-3000:]
        assert "Traceback" not in text, text[-5000:]
    finally:
        srv.stop()
        relay.close()
    check_acked(pg_url, tmp_path / "reader", acked, absent=[b"cut"])
    fs = tlog_cli("fsck", "--data", str(data), "--database", pg_url)
    assert fs.returncode == 0, fs.stdout + fs.stderr
