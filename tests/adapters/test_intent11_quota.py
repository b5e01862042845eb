"""The outbox quota counts what is in the outbox file, whoever wrote it: two real
``tlog scim-proxy`` processes sharing one outbox (the log down, so nothing is delivered)
share one quota, and the count follows adds and deliveries of any process."""

from __future__ import annotations

from pathlib import Path

import httpx

from client.adapters.outbox import Outbox, OutboxRecord, Receipt
from tests.support import free_port, start_proxy, stop_processes

from .helpers import standin_sp  # noqa: F401  (the SP stand-in fixture, "sp")


def _delete(base: str, i: int) -> int:
    r = httpx.delete(
        f"{base}/Users/u{i}",
        headers={"X-Request-Id": f"q-{i}", "Authorization": "Bearer sp-token"},
        timeout=30,
    )
    return r.status_code


def test_two_proxies_on_one_outbox_share_its_quota(
    tmp_path: Path,
    sp: tuple[str, list[tuple[str, str]]],
) -> None:
    upstream, _ = sp
    dead = f"http://127.0.0.1:{free_port()}"  # the log is down: events stay in the outbox
    outbox = tmp_path / "shared.sqlite"
    cap_mb = 0.004  # 4194 bytes: a few events
    procs = []
    try:
        a, base_a = start_proxy(
            tmp_path, upstream, dead, "tlog_x", "acme", "--outbox-max-mb", str(cap_mb),
            outbox=outbox,
        )  # fmt: skip
        procs.append(a)
        b, base_b = start_proxy(
            tmp_path, upstream, dead, "tlog_x", "acme", "--outbox-max-mb", str(cap_mb),
            outbox=outbox,
        )  # fmt: skip
        procs.append(b)
        assert _delete(base_b, 999) == 204  # B has counted the file once
        accepted_a = 0
        for i in range(200):
            st = _delete(base_a, i)
            if st == 503:
                break
            assert st == 204
            accepted_a += 1
        assert 0 < accepted_a < 200
        # B's own events are one: counted alone, it would take more; the file is full,
        # so B refuses too.
        assert _delete(base_b, 1000) == 503
        with Outbox(outbox) as ob:
            assert ob.backlog()["pending_bytes"] <= int(cap_mb * (1 << 20))
            assert ob.counts()["pending"] == accepted_a + 1
    finally:
        stop_processes(procs)


def test_the_quota_count_follows_every_writer(tmp_path: Path) -> None:
    """One outbox object's count sees the adds and deliveries of another (another process
    is the same to SQLite: the count lives in the file)."""
    path = tmp_path / "o.sqlite"
    one = Outbox(path, max_bytes=1000)
    two = Outbox(path, max_bytes=1000)
    try:
        body = "x" * 400
        one.put([OutboxRecord("e1", "r1", body)])
        two.put([OutboxRecord("e2", "r2", body)])
        try:
            one.put([OutboxRecord("e3", "r3", body)])
        except Exception as exc:
            assert "outbox full" in str(exc)
        else:
            raise AssertionError("the quota counted one writer only")
        receipt = Receipt("e2", 0, "AA==", 1, "cp")
        two.mark_delivered([receipt]).result(10)
        one.put([OutboxRecord("e3", "r3", body)])  # the delivery freed room, seen by one
        with Outbox(path) as ob:
            assert ob.backlog()["pending_bytes"] == 800
    finally:
        one.close()
        two.close()


def test_an_outbox_made_before_the_count_is_counted_at_open(tmp_path: Path) -> None:
    """An outbox written by a version without the count (no quota table, no triggers): the
    first open fills the count from the undelivered rows."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    with Outbox(path) as ob:
        ob.put([OutboxRecord("e1", "r1", "y" * 300), OutboxRecord("e2", "r2", "z" * 200)])
    conn = sqlite3.connect(path)
    for name in ("events_quota_ins", "events_quota_upd", "events_quota_del"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE quota")
    conn.commit()
    conn.close()
    with Outbox(path, max_bytes=600) as ob:
        try:
            ob.put([OutboxRecord("e3", "r3", "w" * 200)])
        except Exception as exc:
            assert "outbox full" in str(exc)
        else:
            raise AssertionError("the rows already there were not counted")
        ob.put([OutboxRecord("e4", "r4", "w" * 100)])
