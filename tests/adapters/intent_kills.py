"""Support for the write-ahead intent tests with real processes (test_intent11_kill,
test_redteam9_peer_recovery): a write sent and its adapter killed at the pause point, and
the outbox rows of one request."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def send_and_kill(proc: subprocess.Popen[bytes], url: str, marker: Path, **kw: Any) -> None:
    """Send one write in a thread, wait until the adapter reached the pause point, kill -9."""

    def go() -> None:
        try:
            httpx.request(url=url, timeout=60, **kw)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=go, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "the adapter exited"
        assert time.monotonic() < deadline, "the adapter never reached the pause point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    t.join(30)


def outbox_events(outbox: Path, req: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(outbox)
    try:
        rows = conn.execute("SELECT eid, body, state FROM events WHERE req = ?", (req,)).fetchall()
    finally:
        conn.close()
    return [{"eid": e, "body": b, "state": s} for e, b, s in rows]
