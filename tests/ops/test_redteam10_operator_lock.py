"""Red team 10, part 1: the store's operator lock lost while ``tlog serve`` runs.

``tlog serve`` holds the PostgreSQL store's operator lock shared for its whole run, on a
connection of its own (redteam9): ``tlog recover`` and ``tlog migrate`` into the store need
it exclusively. Before, when that connection ended (a PostgreSQL restart, a
``pg_terminate_backend`` of its session, a network cut), serve neither noticed nor took the
lock again, and went on writing: a recover started afterwards was not kept out. Now
(:class:`tlog.pg.OperatorHold`) serve looks at the connection every second, logs the loss,
takes the lock again with a backoff, and writes nothing meanwhile: raw and SCIM writes get
503 with the reason (naming an exclusive holder), reads go on, ``/readyz`` and ``/metrics``
say it. Every write transaction also takes the lock shared for itself, so nothing is
written while an exclusive holder runs, even before the loss is seen.

Real processes: a real ``tlog serve``, a real ``tlog recover`` paused while it holds the
lock (a test-only patch in its own process), a real ``pg_terminate_backend`` and a real
restart of a PostgreSQL server of the test's own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.pgsupport import running_cluster, stored_tree_size
from tests.server.redteam8_load import faulted_server, make_token, scim_event
from tlog.backend import StoreNotHeld
from tlog.pg import OperatorHold, PgStorage

from ..support import serve_args, start_server, tlog_cli
from .lockwatch import check_acked
from .lockwatch import lock_detail as _lock_detail
from .lockwatch import post_raw as _post_raw
from .lockwatch import ready as _ready
from .lockwatch import until as _until
from .paused import command_script, pause_at, paused, retake_gated

pytestmark = pytest.mark.slow

HOLD_KEY = "hashtextextended(current_schema() || '/tlog migrate destination', 0)"


def _lock_backend(admin: psycopg.Connection[Any], pid: int) -> int | None:
    """The PostgreSQL backend of ``tlog serve`` PID ``pid``'s operator lock, or None."""
    row = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"tlog serve PID {pid} on host %",),
    ).fetchone()
    return None if row is None else int(row[0])


def _backend_alive(admin: psycopg.Connection[Any], pid: int) -> bool:
    return bool(admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall())


def _store_size(database: str, tmp_path: Path) -> int:
    return stored_tree_size(database, tmp_path / "reader")


def test_a_write_is_refused_when_an_exclusive_holder_took_the_lock_unseen(pg_url: str) -> None:
    """The moment between the loss and the hold seeing it: the hold still believes it has
    the lock (it looks only once an hour here), its session is gone and another process
    took the lock exclusively. The write's own transaction lock refuses it: nothing is
    written, and the hold is told to look."""
    st = PgStorage(pg_url)
    hold = OperatorHold(pg_url, "tlog serve", check_every=3600)
    st.operator_hold = hold
    try:
        st.put_token(b"d" * 32, b"before")  # held: written
        with psycopg.connect(pg_url, autocommit=True) as admin:
            pid = _lock_backend(admin, os.getpid())
            assert pid is not None
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            _until("the session ended", lambda: not _backend_alive(admin, pid), 30)
            assert admin.execute(f"SELECT pg_try_advisory_lock({HOLD_KEY})").fetchone() == (True,)
            assert hold.lost is None  # not seen yet
            with pytest.raises(StoreNotHeld, match="held exclusively by another process"):
                st.put_token(b"e" * 32, b"during")
            # The hold looks at once (suspect), finds it lost and names the holder.
            _until(
                "the hold saw it",
                lambda: hold.lost is not None and "is held by" in hold.lost,
                10,
            )
            with pytest.raises(StoreNotHeld, match="is held by"):
                st.put_token(b"e" * 32, b"during")
            with st.read() as rv:
                assert rv.token(b"e" * 32) is None
            admin.execute(f"SELECT pg_advisory_unlock({HOLD_KEY})")
        _until("taken again", lambda: hold.lost is None, 30)
        st.put_token(b"e" * 32, b"after")
        with st.read() as rv:
            assert rv.token(b"e" * 32) == b"after"
        assert hold.losses == 1
    finally:
        hold.close()
        st.close()


def _post_scim(url: str, token: str, n: str) -> httpx.Response:
    from client.scim import event_to_json

    return httpx.post(
        url + "/v1/scim/events",
        content=event_to_json(scim_event(n)).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    )


def _refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers.get("Retry-After"), r.headers
    err = r.json()["error"]
    for w in words:
        assert w in err, err


def test_recover_in_the_gap_keeps_serve_from_writing_until_it_ends(
    tmp_path: Path, pg_url: str
) -> None:
    """serve's lock session terminated; serve may not try to take the lock again until a
    real ``tlog recover`` (of another host: the log key only) holds it. serve refuses raw
    and SCIM writes (503, Retry-After, first "lost", then naming the recover process),
    serves reads, says so in /readyz and /metrics, writes nothing while recover runs; once
    recover ended, it takes the lock again by itself and writes go on: every acknowledged
    entry is at its index, nothing forked."""
    data = tmp_path / "data"
    gate = tmp_path / "gate"
    script = command_script(retake_gated(str(gate)), "serve")
    srv = start_server(data, None, database=pg_url, script=script, timeout=90)
    try:
        raw = (data / "demo-submitter.token").read_text().strip()
        scim = make_token(data, pg_url, "--role", "submitter", "--tenant", "acme")
        acked: list[tuple[int, bytes]] = []
        for i in range(3):
            r = _post_raw(srv.url, raw, b"before-%d" % i)
            assert r.status_code == 200, r.text
            acked.append((r.json()["index"], b"before-%d" % i))
        assert _post_scim(srv.url, scim, "1").status_code == 200
        assert _ready(srv.url)[0] == 200
        with psycopg.connect(pg_url, autocommit=True) as admin:
            pid = _lock_backend(admin, srv.proc.pid)
            assert pid is not None
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Seen and logged; serve may not take the lock again yet (the gate).
        _until(
            "serve saw the loss", lambda: "lost the store's operator lock" in _lock_detail(srv.url)
        )
        log_text = (tmp_path / "data-server.log").read_text()
        assert "STORE OPERATOR LOCK LOST on" in log_text, log_text[-3000:]
        _refused(_post_raw(srv.url, raw, b"gap"), "lost the store's operator lock")
        _refused(_post_scim(srv.url, scim, "2"), "lost the store's operator lock")
        assert httpx.get(srv.url + "/checkpoint").status_code == 200  # reads go on
        metrics = httpx.get(srv.url + "/metrics").text
        assert "tlog_store_lock_held 0.0" in metrics
        assert "tlog_store_lock_losses_total 1.0" in metrics
        size = _store_size(pg_url, tmp_path)

        other = tmp_path / "other-host"
        other.mkdir()
        for name in ("log.key", "last-checkpoint"):
            shutil.copy2(data / name, other / name)
        args = ("--data", str(other), *serve_args(pg_url), "--from", pg_url)
        recover = command_script(pause_at("tlog.recover:recover_database"), "recover")
        with paused(recover, *args) as rec:
            gate.touch()  # serve tries now, and finds recover holding the lock
            holder = f"tlog recover PID {rec.proc.pid}"
            _until("serve named recover", lambda: holder in _lock_detail(srv.url))
            code, checks = _ready(srv.url)
            assert code == 503 and not checks["store_lock"]["ok"], checks
            _refused(_post_raw(srv.url, raw, b"during"), holder)
            _refused(_post_scim(srv.url, scim, "3"), holder)
            assert httpx.get(srv.url + "/checkpoint").status_code == 200
            assert _store_size(pg_url, tmp_path) == size  # nothing written meanwhile
            rec.resume()
        _until("serve holds the lock again", lambda: _ready(srv.url)[0] == 200)
        r = _post_raw(srv.url, raw, b"after")
        assert r.status_code == 200, r.text
        assert r.json()["index"] == size  # right after what was there: nothing lost
        acked.append((size, b"after"))
        assert _post_scim(srv.url, scim, "4").status_code == 200
        assert "tlog_store_lock_held 1.0" in httpx.get(srv.url + "/metrics").text
        log_text = (tmp_path / "data-server.log").read_text()
        assert holder in log_text and "is held again: writes resume" in log_text
        assert "Traceback" not in log_text, log_text[-5000:]
    finally:
        srv.stop()
    check_acked(pg_url, tmp_path / "reader", acked)
    fs = tlog_cli("fsck", "--data", str(data), "--database", pg_url)
    assert fs.returncode == 0, fs.stdout + fs.stderr


def test_the_lock_is_taken_again_after_a_postgresql_restart(tmp_path: Path) -> None:
    """A PostgreSQL server of the test's own restarted under a load of every kind of write:
    serve logs the loss, takes the lock again by itself, writes go on; every failure is a
    clear 503, every acknowledged write is stored once at its index, one root per size
    (redteam8_load's checks)."""
    with running_cluster() as cluster:
        url = cluster.new_schema()
        with faulted_server(tmp_path, url, 20) as run:
            run.load.start()
            run.load.wait_acked(20)
            cluster.stop("fast")
            cluster.start()
            _until(
                "the lock is held again",
                lambda: "is held again: writes resume" in run.server_log(),
                90,
            )
            run.load.wait_acked(run.load.acked_count() + 20, 60)
            out = run.server_log()
            assert "STORE OPERATOR LOCK LOST on" in out, out[-5000:]
            code, checks = _ready(run.srv.url)
            assert checks["store_lock"] == {"ok": True, "detail": "held"}, (code, checks)
            assert json.loads(httpx.get(run.srv.url + "/readyz").text)["status"] == "ready"
