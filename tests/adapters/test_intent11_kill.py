"""Write-ahead intents with real processes: a ``tlog scim-proxy`` (and a process running the
middleware) killed with SIGKILL between the SP's answer and the outbox commit, or before it
forwarded, records that write at its next start as an event whose outcome says the SP's
answer is not known (``warning``, ``err.code`` ``unknown``), exactly once; a write whose
answer was recorded yields no second event.

The kill point is made deterministic by the test-only ``TLOG_TEST_PAUSE`` hook
(client/adapters/middleware.py): the adapter writes a marker file at that point and waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port, start_proxy, stop_processes

from .helpers import (
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
    start_mw_server,
)
from .intent_kills import outbox_events as _outbox_events
from .intent_kills import send_and_kill as _send_and_kill
from .logserver import Log, audit_read

pytestmark = pytest.mark.slow  # processes started, killed and restarted

TENANT = "acme"


def _events_of(
    log: Log, auditor: str, req: str, want: int, wait: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait
    while True:
        got = [e for e in audit_read(log, auditor) if e["corr"]["req"] == req]
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def _assert_unknown(ev: dict[str, Any], op: str, rid: str | None, body: bytes) -> None:
    assert ev["outcome"] == "warning"
    assert ev["err"]["code"] == "unknown"
    assert ev["op"] == op and ev["rt"] == "User"
    assert ev.get("rid") == rid
    assert ev["req"]["dig"] == hashlib.sha256(body).digest()
    assert "recovered" in ev["x"]["answer"]


@pytest.mark.parametrize(
    ("point", "durable"),
    [("answered", False), ("forward", False), ("forward", True), ("begun", True)],
    ids=["answered", "forward", "forward-durable", "redteam21-begun-durable"],
)
def test_a_killed_proxy_records_the_write_as_unknown_exactly_once(
    tmp_path: Path,
    log: Log,
    sp: tuple[str, list[tuple[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    point: str,
    durable: bool,
) -> None:
    """SIGKILL after the intent is written (with ``--durable-intents``: flushed) and
    before the forward, or after the SP answered and before the outbox add: one
    ``unknown`` event at the next start, none more at the one after (red team 20 ran it
    with durable intents too: held; red team 21 between the intent's write and its flush:
    the write is in the page cache, which a SIGKILL leaves, so held too)."""
    extra = ("--durable-intents",) if durable else ()
    upstream, seen = sp
    sub, aud = log.tokens(TENANT)
    outbox = tmp_path / "outbox.sqlite"
    marker = tmp_path / "paused"
    port = free_port()
    monkeypatch.setenv("TLOG_TEST_PAUSE", f"{point}:{marker}")
    proc, base = start_proxy(
        tmp_path, upstream, log.url, sub, TENANT, *extra, outbox=outbox, port=port
    )
    req_id = "kill-" + point
    body = b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[]}'
    try:
        _send_and_kill(
            proc,
            f"{base}/Users/u1",
            marker,
            method="PATCH",
            content=body,
            headers={"X-Request-Id": req_id, "Authorization": "Bearer sp-token"},
        )
    finally:
        stop_processes([proc])
    assert (("PATCH", "/v2/Users/u1") in seen) == (point == "answered")
    assert _outbox_events(outbox, req_id) == []  # the kill came before the outbox commit
    monkeypatch.delenv("TLOG_TEST_PAUSE")

    for run in range(2):  # a second start-up recovers nothing more
        proc, base = start_proxy(
            tmp_path, upstream, log.url, sub, TENANT, *extra, outbox=outbox, port=port
        )
        try:
            if run == 1:  # a write answered and recorded: its own event, no second one
                r = httpx.delete(
                    f"{base}/Users/u2",
                    headers={"X-Request-Id": "fine", "Authorization": "Bearer sp-token"},
                    timeout=30,
                )
                assert r.status_code == 204
            got = _events_of(log, aud, req_id, 1)
        finally:
            stop_processes([proc])
        assert len(got) == 1, got
        _assert_unknown(got[0], "patch", "u1", body)
    fine = _events_of(log, aud, "fine", 1)
    assert [e["outcome"] for e in fine] == ["success"]
    assert len(_outbox_events(outbox, req_id)) == 1


def test_an_answer_recorded_before_the_kill_yields_no_unknown_event(tmp_path: Path) -> None:
    """Killed after the outbox commit, before the journal's "done": the intent is left, but
    its answer is in the outbox: no event is added at the next start (log down: the outbox
    is read directly)."""
    from client.adapters.middleware import AuditConfig, AuditMiddleware
    from client.adapters.outbox import Outbox

    outbox = tmp_path / "outbox.sqlite"
    code = f"""
import asyncio, os, signal
from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox

async def app(scope, receive, send):
    await receive()
    await send({{"type": "http.response.start", "status": 204, "headers": []}})
    await send({{"type": "http.response.body", "body": b""}})

async def main():
    ob = Outbox({str(outbox)!r})
    mw = AuditMiddleware(app, AuditConfig(tenant="acme", sp_id="sp"), ob)
    mw.start()
    def done(iid, **kw):
        os.kill(os.getpid(), signal.SIGKILL)  # the events are committed; "done" never written
    mw._journal.done = done
    msgs = [{{"type": "http.request", "body": b"", "more_body": False}}]
    async def receive():
        return msgs.pop() if msgs else {{"type": "http.disconnect"}}
    async def send(m):
        pass
    scope = {{"type": "http", "method": "DELETE", "path": "/Users/u9",
             "headers": [(b"x-request-id", b"r-done")], "query_string": b""}}
    await mw(scope, receive, send)

asyncio.run(main())
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    # (its other file, .1, is prepared ahead: empty)
    journals = list((tmp_path / "outbox.sqlite.intents").glob("*.0.jsonl"))
    assert len(journals) == 1 and b'"req":"r-done"' in journals[0].read_bytes()
    ob = Outbox(outbox)
    try:
        mw = AuditMiddleware(_never, AuditConfig(tenant="acme", sp_id="sp"), ob)
        assert mw.recover_intents() == 0
        got = _outbox_events(outbox, "r-done")
        assert [json.loads(e["body"])["outcome"] for e in got] == ["success"]
        assert not journals[0].exists()
    finally:
        ob.close()


async def _never(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise AssertionError("not called")


def test_a_killed_middleware_process_records_the_write_as_unknown(
    tmp_path: Path, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The middleware in front of a real SCIM app (scim2-server, tests/adapters/mw_server.py),
    killed after the app created a user and before the outbox commit."""
    sub, aud = log.tokens(TENANT)
    token = tmp_path / "mw.token"
    token.write_text(sub)
    outbox = tmp_path / "mw.sqlite"
    marker = tmp_path / "paused"

    def start(pause: bool) -> tuple[subprocess.Popen[bytes], str]:
        env = dict(os.environ)
        if pause:
            env["TLOG_TEST_PAUSE"] = f"answered:{marker}"
        return start_mw_server(log.url, token, TENANT, outbox, tmp_path / "mw.log", env=env)

    from tests.adapters.helpers import SCIM_TOKEN

    proc, base = start(True)
    body = json.dumps(
        {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "kim"}
    ).encode()
    try:
        _send_and_kill(
            proc,
            base + "/Users",
            marker,
            method="POST",
            content=body,
            headers={
                "X-Request-Id": "mw-kill",
                "Authorization": f"Bearer {SCIM_TOKEN}",
                "Content-Type": "application/scim+json",
            },
        )
    finally:
        stop_processes([proc])
    for _ in range(2):
        proc, base = start(False)
        try:
            got = _events_of(log, aud, "mw-kill", 1)
        finally:
            stop_processes([proc])
        assert len(got) == 1, got
        _assert_unknown(got[0], "create", None, body)
