"""Support for the intent journal tests (test_intent11_recovery, test_review14_journal,
test_review14_matching, test_redteam9_journal): a journal's process as a kill leaves it, the
intent of a DELETE, and one request through the middleware."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from client.adapters.exchange import AuditConfig, Exchange
from client.adapters.middleware import AuditMiddleware, intent_doc
from client.adapters.outbox import IntentJournal

CFG = AuditConfig(tenant="acme", sp_id="sp1")


def die(j: IntentJournal) -> None:
    """The journal's process as a kill leaves it: nothing more written, its files stay,
    its lock goes."""
    j._closed = True
    j._close_files()
    os.close(j._lock_fd)


def delete_intent(rel: str, req: str) -> dict[str, Any]:
    """The intent a DELETE of ``rel`` (request id ``req``) records under ``CFG``."""
    scope = {
        "type": "http",
        "headers": [(b"authorization", b"Bearer t")],
        "client": ("10.0.0.7", 1),
    }
    x = Exchange(scope, "DELETE", rel, req, None, b"", 1_700_000_000_000 * 1_000_000)
    doc = intent_doc(CFG, x)
    assert doc is not None
    return doc


async def call(
    mw: AuditMiddleware, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> int:
    """One bodiless request through ``mw``: the answer's status."""
    msgs = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return msgs.pop() if msgs else {"type": "http.disconnect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    await mw(scope, receive, send)
    return int(sent[0]["status"])
