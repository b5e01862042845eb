"""Red team 21: the audit middleware around an app that refuses the lifespan scope by
raising (``assert scope["type"] == "http"``, a common way to write a plain ASGI app).
ASGI reads that as an app without a lifespan; red team 20's fix took the lifespan to its end
only for an app returning at once, so the raise went to the server: under ``lifespan="on"``
it refused to start, under ``"auto"`` it served on without a lifespan and the outbox was
never closed, the relay never drained nor stopped (their threads ran on). Now the
middleware takes the lifespan itself; an app that fails after reading the startup keeps
its failure (held: a guard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.adapters.exchange import AuditConfig
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox
from client.runtime.serving import ServerStartError
from tests.support import UvicornThread

from .helpers import FakeLog, relay_for, serve_one_write


async def _refusing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An SP answering 204 to every request, raising on any other scope."""
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app whose own startup fails (it read the startup message, then raised)."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("the app's database is down")
    await _refusing(scope, receive, send)


def _middleware(tmp_path: Path, app: Any) -> tuple[AuditMiddleware, Outbox, FakeLog]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log, idle=30.0)  # nothing sent but by the drain at shutdown
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=lambda _: None)
    return AuditMiddleware(app, config, outbox, relay, own=True), outbox, log


def test_redteam21_an_app_refusing_the_lifespan_is_served_and_closed(tmp_path: Path) -> None:
    mw, outbox, log = _middleware(tmp_path, _refusing)
    try:
        # before: ServerStartError (the app's raise failed the startup)
        assert serve_one_write(mw) == 204
        assert outbox.closed
        assert [ev["rid"] for ev in log.events] == ["A"]  # drained at the shutdown
    finally:
        if not outbox.closed:
            mw.close()


def test_redteam21_an_app_whose_startup_fails_still_fails_it(tmp_path: Path) -> None:
    """Held (a guard): the middleware does not hide an app's own startup failure."""
    mw, outbox, _ = _middleware(tmp_path, _failing_startup)
    try:
        with pytest.raises(ServerStartError):
            UvicornThread(mw)
    finally:
        if not outbox.closed:
            mw.close()
