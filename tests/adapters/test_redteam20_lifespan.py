"""Red team 20: the audit middleware's shutdown around an app that speaks only HTTP.

``AuditMiddleware`` drains the relay, stops it and closes the outbox it owns when the
server's ASGI lifespan shuts down; it learnt of the shutdown only by the wrapped app
receiving it. An app that returns from its lifespan scope at once (the bare ``Forwarder``,
any plain ASGI app: nothing of theirs to start or stop) never received it, so the relay
was neither drained nor stopped, the outbox never closed, and their threads ran on after
the server stopped (found by the thread watch, ``tests/threadwatch.py``: seven tests of
``test_redteam7_hostile_sp.py`` left them behind, under every later test of the worker).
Now the middleware takes the lifespan to its end itself when the wrapped app does not.

Held (a guard): an SP that applies a write only after the client that sent it closed its
connection; the event is recorded all the same, with and without durable intents."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from client.adapters.exchange import AuditConfig
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox
from tests.support import UvicornThread

from .helpers import DEACTIVATE, USER, FakeLog, answers_204, relay_for, serve_one_write

JSON = (b"content-type", b"application/scim+json")
USER_A = {"schemas": [USER], "id": "A", "userName": "a", "active": False}


def test_the_shutdown_drains_and_closes_around_an_app_without_lifespan(tmp_path: Path) -> None:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log, idle=30.0)  # nothing sent but by the drain at shutdown
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=lambda _: None)
    mw = AuditMiddleware(answers_204, config, outbox, relay, own=True)
    assert serve_one_write(mw) == 204
    try:
        assert outbox.closed  # before: open, its writer running
        assert [ev["rid"] for ev in log.events] == ["A"]  # drained at the shutdown
    finally:
        if not outbox.closed:
            mw.close()  # (before the fix: what the shutdown should have done)


def _slow_sp(client_gone: threading.Event, applied: list[str]) -> Any:
    """An SP that applies a write only once the client that sent it has gone."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await asyncio.get_running_loop().run_in_executor(None, client_gone.wait, 30)
        applied.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [JSON]})
        await send({"type": "http.response.body", "body": json.dumps(USER_A).encode()})

    return app


@pytest.mark.parametrize("durable", [False, True])
def test_an_answer_after_the_client_gave_up_is_recorded(tmp_path: Path, durable: bool) -> None:
    """Held (a guard): the SP applied the write after the client closed its connection;
    the event is recorded all the same (the write happened), with the SP's outcome."""
    gone, applied = threading.Event(), []
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    config = AuditConfig(
        tenant="t1", sp_id="sp1", base_path="/v2", on_access=None, durable_intents=durable
    )
    mw = AuditMiddleware(_slow_sp(gone, applied), config, outbox, relay_for(outbox, log), own=True)
    srv = UvicornThread(mw)
    try:
        body = json.dumps(DEACTIVATE).encode()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(
                b"PATCH /v2/Users/A HTTP/1.1\r\nHost: sp\r\nContent-Type: application/scim+json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            s.shutdown(socket.SHUT_WR)
        gone.set()  # the client has closed: now the SP applies and answers
        for _ in range(600):  # until the SP has answered (bounded: 30 s)
            if applied and outbox.counts()["pending"] + outbox.counts()["delivered"]:
                break
            threading.Event().wait(0.05)
    finally:
        assert srv.serving.stop(15), "the server did not stop"
        if not outbox.closed:
            mw.close()
    assert applied == ["/v2/Users/A"]
    assert [(e["op"], e["rid"], e["outcome"]) for e in log.events] == [("patch", "A", "success")]
