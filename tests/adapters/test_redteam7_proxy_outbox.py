"""Red team 7: ``tlog scim-proxy`` started on an outbox that holds undelivered events of
another tenant (another proxy's outbox put in its place, or ``--tenant`` changed across a
restart). The log refuses every batch that holds one (403: "event i is for another tenant
than this token's"), the relay retried that batch for ever, behind it every new event
waited ("queued"), and the only word was "the log refused the relay's token (403)". It
must refuse to start instead, saying why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from client.adapters.outbox import Outbox
from harness.scim import event_record

from .helpers import down_proxy_argv, undeliverable_proxy


def _proxy(tmp_path: Path, outbox: Path, tenant: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        down_proxy_argv(tmp_path, outbox, tenant),
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.slow
def test_an_outbox_of_another_tenant_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as ob:
        ob.put([event_record(i) for i in range(3)])  # tenant t1
    try:
        p = _proxy(tmp_path, path, "t2")
    except subprocess.TimeoutExpired:
        pytest.fail("the proxy started on an outbox of another tenant")
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "refusing to start" in p.stderr
    assert "3 undelivered event(s) of another tenant" in p.stderr, p.stderr[-2000:]
    with Outbox(path) as ob:  # left as it was
        assert len(ob.pending()) == 3


def test_only_undelivered_events_count(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as ob:
        recs = [event_record(i) for i in range(3)]
        ob.put(recs)
        assert ob.pending_tenants() == {"t1": 3}
        ob.note_failure([recs[0].eid], "refused", reject=True).result()
        assert ob.pending_tenants() == {"t1": 2}


@pytest.mark.slow
def test_a_token_file_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    # Whoever reads the submitter token appends events in the adapter's name; the proxy
    # said nothing about a world-readable token file (the log refuses such key files).
    secret = "tlog_" + "B" * 43
    proc = subprocess.Popen(
        down_proxy_argv(tmp_path, tmp_path / "outbox.sqlite", secret=secret, mode=0o644),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Uvicorn running" in line or len(lines) > 50:
                break
    finally:
        proc.terminate()
        proc.wait(15)
    text = "".join(lines)
    assert "readable by group or others (mode 644)" in text, text
    assert secret not in text


def test_readiness_says_so_when_the_outbox_file_is_gone(tmp_path: Path) -> None:
    # The outbox refuses adds once its file was removed (test_redteam7_outbox.py); the
    # proxy's /.tlog/readyz and /.tlog/status must say so (503 with the reason), not
    # "ready" from a reader still on the unlinked file, nor a 500 from a new reader.
    from tests.support import UvicornThread

    path = tmp_path / "o.sqlite"
    app = undeliverable_proxy(path)
    srv = UvicornThread(app)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.get("/.tlog/readyz").status_code == 200
            for side in ("", "-wal", "-shm"):
                Path(str(path) + side).unlink(missing_ok=True)
            for url in ("/.tlog/readyz", "/.tlog/status", "/.tlog/readyz"):
                r = c.get(url)
                assert r.status_code == 503, (url, r.status_code, r.text)
                assert "removed or replaced" in r.text, r.text
            r = c.get("/.tlog/metrics")
            assert r.status_code in (200, 503), r.status_code  # never a 500
    finally:
        srv.stop()
