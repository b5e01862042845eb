"""A write's answer is held by the audit middleware until its event is recorded: a service
provider that answers a write with an endless or enormous body must not make the adapter
(the in-process middleware, or ``tlog scim-proxy``) hold all of it in memory. Beyond
``max_answer`` bytes the app's next send fails, the client gets a 502 SCIM error, and the
event is still recorded with the status the SP answered (it did apply the change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from client.adapters.relay import Relay

from .helpers import FakeLog, answer_lifespan

MiB = 1 << 20


class _EndlessAnswer:
    """Answers every request 201 with a SCIM head and then up to ``chunks`` MiB of body."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.sent = 0
        self.refused: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/scim+json")],
            }
        )
        try:
            for _ in range(self.chunks):
                await send({"type": "http.response.body", "body": b" " * MiB, "more_body": True})
                self.sent += 1
            await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        except Exception as exc:  # the middleware refused more: stop like a real SP would
            self.refused = exc
            raise


def _run(tmp_path: Path, chunks: int, **cfg: Any) -> tuple[Any, _EndlessAnswer, FakeLog]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = Relay(outbox, "http://log.test", "tok", transport=log.transport(), idle=0.05)
    app = _EndlessAnswer(chunks)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=lambda _: None, **cfg)
    mw = AuditMiddleware(app, config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test", raise_server_exceptions=False) as client:
        r = client.post(
            "/v2/Users",
            json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "big"},
        )
        assert relay.flush(10)
    return r, app, log


def test_an_answer_over_max_answer_is_a_502_and_still_recorded(tmp_path: Path) -> None:
    r, app, log = _run(tmp_path, 64, max_answer=2 * MiB)
    assert r.status_code == 502, (r.status_code, r.content[:200])
    assert r.json()["status"] == "502" and "answer" in r.json()["detail"]
    assert app.refused is not None and app.sent <= 2  # not all 64 MiB were taken
    assert len(log.events) == 1
    ev = log.events[0]
    assert ev["res"]["st"] == 201 and ev["op"] == "create"


def test_an_answer_under_max_answer_passes_unchanged(tmp_path: Path) -> None:
    r, app, log = _run(tmp_path, 3, max_answer=4 * MiB)
    assert r.status_code == 201 and len(r.content) == 3 * MiB + 2
    assert app.refused is None and len(log.events) == 1
