"""Support for the intent journal tests (test_intent11_recovery, test_review14_journal,
test_review14_matching, test_redteam9_journal): a journal's process as a kill leaves it,
intents begun until a kill and what the next start finds of them, the intent of a DELETE,
and one request through the middleware."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from client.adapters.exchange import AuditConfig, Exchange
from client.adapters.middleware import AuditMiddleware, intent_doc
from client.adapters.outbox import IntentJournal, OrphanedIntents, Outbox

CFG = AuditConfig(tenant="acme", sp_id="sp1")


def die(j: IntentJournal) -> None:
    """The journal's process as a kill leaves it: nothing more written, its files stay,
    its lock goes."""
    with j._mutex:
        j._closed = True
        j._wake.notify_all()
    j._writer.join()  # (its thread, which a kill ends too)
    j._close_files()
    os.close(j._lock_fd)


def begin_until_killed(
    j: IntentJournal,
    in_flight: list[int],
    done: list[int],
    each: Callable[[], None] | None = None,
) -> None:
    """Intents begun in ``j`` (every third left in flight, the others done at once), with
    ``each`` called before every one, until something raises: the kill the test arranged
    (it propagates). ``in_flight`` and ``done`` get the intents' numbers as they go."""
    for n in range(10_000):
        if each is not None:
            each()
        iid = j.begin({"req": f"r{n}", "t": 1, "pad": "x" * 30})
        if n % 3:
            j.done(iid)
            done.append(iid)
        else:
            in_flight.append(iid)


@contextmanager
def orphan_after_a_kill(ob: Outbox, j: IntentJournal, path: Path) -> Iterator[OrphanedIntents]:
    """The adapter of ``ob`` killed (its journal ``j`` as a kill leaves it), then the one
    orphaned journal the next start on ``path`` finds; released after the block, the new
    outbox closed either way."""
    die(j)
    ob._journal = None
    ob.close()
    other = Outbox(path)
    try:
        (orphan,) = other.orphaned_intents()
        yield orphan
        orphan.release()
    finally:
        other.close()


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
