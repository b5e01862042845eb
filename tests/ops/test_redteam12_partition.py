"""Red team 12: the whole path from ``tlog serve`` to PostgreSQL goes dark under load.

Red team 11 cut the operator lock's connection alone. Here **every** connection of a running
``tlog serve`` (the writer's, the pool's, the write and SCIM staging turns', the operator
lock's, and every new one) is black-holed at once behind a TCP relay
(:class:`harness.tcprelay.TcpRelay`), as a network partition or a frozen load balancer does:
bytes stop both ways, nobody closes anything, the relay's kernel keeps answering TCP. Raw
entries, raw batches, single SCIM events and SCIM batches are in flight from four client
threads (:class:`tests.server.redteam8_load.Load`), plus one thread of raw entries whose
every 503 is retried after the heal.

What must hold (docs/operations.md, "The whole path to PostgreSQL dark"): during the
black-out every request is answered (a clear 503 with ``Retry-After``, or 200), ``/healthz``
answers, ``/readyz`` says 503 and why; nothing acknowledged is lost, nothing is stored twice,
one root per size, fsck clean; after the heal service resumes by itself, the next write gets
the next index, and a write that was answered 503 while its commit was in flight is sorted
out by its retry (the same index, ``duplicate``, if its commit landed at the heal).

The second test heals only the new connections (a load balancer replaced while the old one
keeps its connections open and dark): service must come back too (a defect, fixed in
``PgStorage._end_dark``).

Timing is measured and printed (the figures in docs/operations.md), asserted only against a
hang (the clients' own 60 s timeout: a transport error fails the test)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from harness.pg import PgCluster
from harness.tcprelay import TcpRelay
from tests.server.redteam8_load import faulted_server, stored_entries
from tlog.backend import StoreUnreachable
from tlog.pg import PgStorage

from .lockwatch import until

pytestmark = pytest.mark.slow

BOUND = 5.0  # --storage-timeout
DARK = 16.0  # seconds the path stays dark: past the operator lock's probe (~11 s)
MARK = b"rt12-commit-in-flight"
# A deferred constraint trigger on the marked entry: its COMMIT sleeps 2 s on the server.
_HOLD_COMMIT = f"""
CREATE FUNCTION rt12_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER rt12_commit AFTER INSERT ON tlog_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.data = '\\x{MARK.hex()}'::bytea) EXECUTE FUNCTION rt12_hold();
"""


def _sleeping(admin: psycopg.Connection[Any]) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event = 'PgSleep' AND query ILIKE 'COMMIT%'"
    ).fetchone()
    return row is not None and row[0] > 0


class _Retried:
    """Raw entries one by one; keeps each entry with its answer so a 503 can be retried."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.h = {"Authorization": f"Bearer {token}"}
        self.sent: list[tuple[bytes, int, dict[str, Any], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rt12-raw")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        assert not self._thread.is_alive(), "a writer hangs"

    def _loop(self) -> None:
        n = 0
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                entry = b"rt12-%d" % n
                n += 1
                t0 = time.monotonic()
                try:
                    r = c.post(self.url + "/v1/entries", content=entry, headers=self.h)
                    body = r.json()
                    body["_retry_after"] = r.headers.get("Retry-After")
                    got = (r.status_code, body)
                except (httpx.TransportError, ValueError) as exc:
                    got = (0, {"error": f"{type(exc).__name__}: {exc}"})
                self.sent.append((entry, got[0], got[1], time.monotonic() - t0))


def test_every_connection_black_holed_under_load_then_healed(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    relay = TcpRelay("127.0.0.1", pg_cluster.port)
    via = relay.via(pg_url)
    probes: list[tuple[str, int, float, str]] = []  # (path, status, seconds, detail)
    try:
        with faulted_server(tmp_path, via, BOUND) as run:
            url = run.srv.url
            token = run.load.h["Authorization"].split()[1]
            retried = _Retried(url, token)
            run.load.start()
            retried.start()
            run.load.wait_acked(60)
            # One write whose COMMIT is in flight at the cut: the commit's deferred trigger
            # holds it in pg_sleep, the path goes dark meanwhile, so its answer (committed)
            # is stuck behind the cut until the heal.
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(_HOLD_COMMIT)
                in_flight: list[httpx.Response] = []
                poster = threading.Thread(
                    target=lambda: in_flight.append(
                        httpx.post(
                            url + "/v1/entries", content=MARK, headers=run.load.h, timeout=60
                        )
                    ),
                    daemon=True,
                )
                poster.start()
                until("the marked commit in flight", lambda: _sleeping(admin))
            before = len(run.load.answers)
            # The writer's, the turns', the lock's and pooled readers' connections: all cut.
            cut = relay.black_hole_all()
            assert cut >= 4, cut
            t_cut = time.monotonic()

            http = httpx.Client(timeout=60)
            while time.monotonic() - t_cut < DARK:
                for path in ("/healthz", "/readyz", "/checkpoint"):
                    t0 = time.monotonic()
                    r = http.get(url + path)
                    took = time.monotonic() - t0
                    detail = ""
                    if path == "/readyz":
                        checks = r.json()["checks"]
                        detail = ",".join(
                            f"{k}={v.get('detail')}" for k, v in checks.items() if not v["ok"]
                        )
                    probes.append((path, r.status_code, took, detail))
                time.sleep(0.5)
            poster.join(60)
            assert len(in_flight) == 1, "the write in flight was not answered"
            r = in_flight[0]
            # Not acknowledged: its outcome is unknown to this side (503, and says so).
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
            assert "nothing was acknowledged" in r.json()["error"], r.text
            print(f"in flight at the cut: {r.status_code} {r.text[:200]}")
            during = run.load.answers[before:]
            relay.heal()
            t_heal = time.monotonic()
            until(
                "ready again after the heal", lambda: http.get(url + "/readyz").status_code == 200
            )
            print(f"ready again {time.monotonic() - t_heal:.1f} s after the heal")
            run.load.wait_acked(20)
            run.load.stop()
            retried.stop()

            # During the black-out: /healthz and /checkpoint from memory, /readyz says why.
            assert all(s == 200 for p, s, _, _ in probes if p in ("/healthz", "/checkpoint")), (
                probes
            )
            ready = [(s, d) for p, s, _, d in probes if p == "/readyz"]
            assert any(s == 503 for s, _ in ready), ready
            assert all(d for s, d in ready if s == 503), ready
            # Every write in the black-out answered: 200 or a clear 503 with Retry-After
            # (the Load's own checks, after this block, refuse anything else).
            assert any(a.status == 503 for a in during), [(a.kind, a.status) for a in during]
            for entry, status, body, _ in retried.sent:
                assert status in (200, 503), (entry, status, body)
                if status == 503:
                    assert len(str(body.get("error", ""))) > 20, body
                    assert body["_retry_after"], body
            for p, s, took, d in probes:
                print(f"{p} {s} {took:.2f}s {d}")
            for a in during:
                print(f"{a.kind} {a.status} {a.elapsed:.2f}s {a.text[:160]}")
            for entry, status, body, took in retried.sent:
                if status != 200:
                    print(f"retried {entry!r} {status} {took:.2f}s {str(body)[:160]}")

            # Each 503 of the black-out is sorted out by its retry: the same index (as a
            # duplicate) if its commit landed at the heal, else a new one; never twice.
            stored = stored_entries(via, tmp_path / "r1")
            where = {e: i for i, e in enumerate(stored)}
            assert len(where) == len(stored), "an entry is stored twice"
            acked = {e: b["index"] for e, s, b, _ in retried.sent if s == 200}
            for e, i in acked.items():
                assert where.get(e) == i, (e, i, where.get(e))
            for entry, status, _, _ in retried.sent:
                if status != 503:
                    continue
                r = httpx.post(url + "/v1/entries", content=entry, headers=run.load.h, timeout=60)
                assert r.status_code == 200, r.text
                if entry in where:
                    assert r.json()["index"] == where[entry] and r.json().get("duplicate"), r.text
            # The write whose COMMIT was in flight: committed at the heal, so its retry is
            # a duplicate at that index.
            assert MARK in where, "the commit in flight at the cut did not land at the heal"
            r = httpx.post(url + "/v1/entries", content=MARK, headers=run.load.h, timeout=60)
            assert r.status_code == 200 and r.json().get("duplicate"), r.text
            assert r.json()["index"] == where[MARK], (r.text, where[MARK])
            # The next write gets the next index.
            size = len(stored_entries(via, tmp_path / "r2"))
            r = httpx.post(
                url + "/v1/entries", content=b"rt12-next", headers=run.load.h, timeout=60
            )
            assert r.status_code == 200 and r.json()["index"] == size, (r.text, size)
            text = run.server_log()
            assert "Traceback" not in text, text[-5000:]
    finally:
        relay.close()


def test_old_connections_left_dark_while_new_ones_work(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """A load balancer replaced by a new one while the old one keeps its connections open
    and dark: new connections work, the old ones never answer. Before, the writer waited
    for its commit's answer on its old connection until that path closed (never, here):
    ``/readyz`` 200 and every write 503 for as long as it lasted. Now the commit watch sees
    the writer's session idle on the database while the write waits, ends this frontend's
    old sessions (writer and turns) and shuts their sockets: the outcome is read from the
    store and writes resume on new connections."""
    relay = TcpRelay("127.0.0.1", pg_cluster.port)
    via = relay.via(pg_url)
    try:
        with faulted_server(tmp_path, via, BOUND) as run:
            run.load.start()
            run.load.wait_acked(60)
            relay.black_hole_all()
            time.sleep(8)
            relay.heal_new()  # the old connections stay dark until the end of the test
            run.load.wait_acked(20, bound=40)
            run.load.stop()
            text = run.server_log()
            assert "is dark: the database" in text, text[-3000:]
            assert "Traceback" not in text, text[-5000:]
            relay.heal()
    finally:
        relay.close()


def _in_thread(fn: Any) -> list[Any]:
    """Run ``fn`` on a thread of its own; its result or exception, or a failure when it
    hangs (the watch bounds every wait on a dark path well within 60 s)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert out, "it hangs on a dark connection"
    return out


def test_a_read_and_a_write_on_connections_left_dark_are_ended(
    pg_cluster: PgCluster, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Below ``tlog serve``: the connections left dark are taken up again by the next read
    and write. Before, only a writer's commit was watched: a read waited forever on its
    pooled connection (as the token reads and the store read that resolves an unknown
    commit did under ``tlog serve``). Now the read's connection is ended, with every
    older session of the process (the writer's too), and the read runs again on a new one.
    A write whose own connection is dark fails before its COMMIT (nothing written, a clear
    :class:`StoreUnreachable`), and the next write commits on a new connection."""
    relay = TcpRelay("127.0.0.1", pg_cluster.port)
    st = PgStorage(relay.via(pg_url))
    caplog.set_level(logging.ERROR, logger="tlog.pg")

    def read(key: str) -> bytes | None:
        with st.read() as rv:
            return rv.meta(key)

    try:
        st.set_meta("rt12-before", b"1")
        assert read("rt12-before") == b"1"
        relay.black_hole_all()
        relay.heal_new()  # the writer's and the pooled connection stay dark
        assert _in_thread(lambda: read("rt12-before")) == [b"1"]
        assert "the database connection of the pooled reader is dark" in caplog.text
        st.set_meta("rt12-next", b"2")  # the writer's old connection was ended too
        caplog.clear()

        relay.black_hole_all()
        relay.heal_new()  # now the writer meets its dark connection first
        (failed,) = _in_thread(lambda: st.set_meta("rt12-lost", b"3"))
        assert isinstance(failed, StoreUnreachable), failed
        assert "nothing was written" in str(failed)
        assert "the database connection of the writer of meta rt12-lost is dark" in caplog.text
        st.set_meta("rt12-after", b"4")
        assert read("rt12-lost") is None
        assert read("rt12-after") == b"4"
    finally:
        st.close()
        relay.close()
