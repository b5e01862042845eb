"""Red team 20: the audit middleware's shutdown around an app that speaks only HTTP.

``AuditMiddleware`` drains the relay, stops it and closes the outbox it owns when the
server's ASGI lifespan shuts down; it learnt of the shutdown only by the wrapped app
receiving it. An app that returns from its lifespan scope at once (the bare ``Forwarder``,
any plain ASGI app: nothing of theirs to start or stop) never received it, so the relay
was neither drained nor stopped, the outbox never closed, and their threads ran on after
the server stopped (found by the thread watch, ``tests/threadwatch.py``: seven tests of
``test_redteam7_hostile_sp.py`` left them behind, under every later test of the worker).
Now the middleware takes the lifespan to its end itself when the wrapped app does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from client.adapters.exchange import AuditConfig
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox
from tests.support import UvicornThread

from .helpers import FakeLog, relay_for

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
DEACTIVATE = {
    "schemas": [PATCH_OP],
    "Operations": [{"op": "replace", "path": "active", "value": False}],
}


async def _http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An SP answering 204 to every request, returning at once from any other scope."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_shutdown_drains_and_closes_around_an_app_without_lifespan(tmp_path: Path) -> None:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log, idle=30.0)  # nothing sent but by the drain at shutdown
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=lambda _: None)
    mw = AuditMiddleware(_http_only, config, outbox, relay, own=True)
    srv = UvicornThread(mw)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            r = c.patch("/v2/Users/A", json=DEACTIVATE)
        assert r.status_code == 204
    finally:
        assert srv.serving.stop(15), "the server did not stop"
    try:
        assert outbox.closed  # before: open, its writer running
        assert [ev["rid"] for ev in log.events] == ["A"]  # drained at the shutdown
    finally:
        if not outbox.closed:
            mw.close()  # (before the fix: what the shutdown should have done)
