"""Stall29: readiness (``writes_taken``, what ``/.tlog/readyz`` and the metric
``tlog_proxy_writes_taken`` say) against a write's outcome, the interleaving made
deterministic.

Found: a readiness probe of the outbox begun while the disk had room, and ending after a
write's own probe found the disk full again, set "writes taken": readiness said ready
while the last outcome said full, and the next write was forwarded to the SP, applied, and
answered 503 "processed ... its audit event could not be recorded" instead of being
refused before the SP. Now a probe's success counts only if no other outcome (an add, a
probe) came while it ran.

Real parts: the middleware, a real SQLite outbox on a real 1 MiB tmpfs filled for real.
The one hook: the readiness probe's answer is handed over when the test says (the probe
itself runs in the outbox as always), so the interleaving is the same at every run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from client.adapters.exchange import AuditConfig
from client.adapters.middleware import AuditMiddleware, Message
from client.adapters.outbox import Outbox

from .helpers import fill_disk, tmpfs

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "disk", lazy=True)


class HeldProbeOutbox(Outbox):
    """An outbox whose next probe, once ``hold`` is set, answers only when the test hands
    its real outcome over (``release``)."""

    hold = False
    real: Future[None] | None = None
    held: Future[None] | None = None

    def probe(self, size: int = 8192) -> Future[None]:
        real = super().probe(size)
        if not self.hold:
            return real
        self.hold = False
        self.real, self.held = real, Future()
        return self.held

    def release(self) -> None:
        assert self.real is not None and self.held is not None
        exc = self.real.exception(30)
        if exc is None:
            self.held.set_result(None)
        else:
            self.held.set_exception(exc)


def _sp(seen: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _delete(mw: AuditMiddleware, i: int) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: Message) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "method": "DELETE",
        "path": f"/v2/Users/u{i}",
        "raw_path": f"/v2/Users/u{i}".encode(),
        "query_string": b"",
        "headers": [(b"x-request-id", f"r{i}".encode()), (b"host", b"sp.example")],
        "client": ("127.0.0.1", 1),
        "scheme": "http",
        "http_version": "1.1",
    }
    await mw(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_a_readiness_probe_begun_before_a_refusal_does_not_say_ready_after_it(
    small_disk: Path,
) -> None:
    seen: list[str] = []
    outbox = HeldProbeOutbox(small_disk / "outbox.sqlite")
    mw = AuditMiddleware(_sp(seen), AuditConfig(tenant="acme", sp_id="sp"), outbox)
    mw.intent_recovery_interval = 0  # no watcher thread: nothing else probes
    loop = asyncio.new_event_loop()
    filler = small_disk / "filler"
    try:
        assert loop.run_until_complete(_delete(mw, 0))[0] == 204  # the journal opened
        fill_disk(filler)
        status, body = loop.run_until_complete(_delete(mw, 1))
        assert status == 503 and b"processed this request" in body, body  # applied, unlogged
        assert not mw.writes_taken()  # the disk is full: not ready
        filler.unlink()
        # readiness probes while the disk has room; its answer held
        outbox.hold = True
        taken: list[bool] = []
        probe = threading.Thread(target=lambda: taken.append(mw.writes_taken()))
        probe.start()
        while outbox.real is None:
            probe.join(0.01)
        assert outbox.real.exception(30) is None  # the probe itself worked: room then
        fill_disk(filler)  # full again before its answer is taken
        status, body = loop.run_until_complete(_delete(mw, 2))
        assert status == 503 and b"not applied" in body, body  # refused before the SP
        outbox.release()
        probe.join(30)
        # the last outcome (the write's probe: full) stands, not the older probe's
        assert taken == [False], taken
        assert mw.backlog()["writes_taken"] is False
        status, body = loop.run_until_complete(_delete(mw, 3))
        assert status == 503 and b"not applied" in body, body
        assert seen == ["DELETE /v2/Users/u0", "DELETE /v2/Users/u1"], seen
        filler.unlink()
        assert mw.writes_taken()  # room again: ready, and writes taken
        assert loop.run_until_complete(_delete(mw, 4))[0] == 204
    finally:
        filler.unlink(missing_ok=True)
        mw.close()
        outbox.close()
        loop.close()


def test_a_journal_that_cannot_be_opened_on_a_full_disk_is_said_and_refuses_writes(
    small_disk: Path,
) -> None:
    seen: list[str] = []
    outbox = Outbox(small_disk / "outbox.sqlite")  # opened while there was room
    mw = AuditMiddleware(_sp(seen), AuditConfig(tenant="acme", sp_id="sp"), outbox)
    mw.intent_recovery_interval = 0
    loop = asyncio.new_event_loop()
    filler = small_disk / "filler"
    try:
        fill_disk(filler)  # full at start: the journal's files cannot be allocated
        mw.start()
        state = mw.journal_state(reopen=True)
        assert state["intent_journal_error"], state
        assert "cannot open the intent journal" in state["intent_journal_error"], state
        assert mw.backlog()["intent_journal_error"] == state["intent_journal_error"]
        status, body = loop.run_until_complete(_delete(mw, 0))
        assert status == 503 and b"intent journal unavailable" in body, body
        assert b"not applied" in body and seen == []
        filler.unlink()
        assert mw.journal_state(reopen=True)["intent_journal_error"] is None  # open now
        assert loop.run_until_complete(_delete(mw, 1))[0] == 204
        assert seen == ["DELETE /v2/Users/u1"]
    finally:
        filler.unlink(missing_ok=True)
        mw.close()
        outbox.close()
        loop.close()
