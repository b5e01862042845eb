"""Review 9: a HEAD request answered 503 (state unreadable) or 500 carries no body.

The 503 for a state database that cannot be read (red team 5) and the 500 for an internal
error sent their text as the body of a HEAD answer too; an HTTP server then fails the
response (a HEAD answer has no body) and logs a protocol error besides the real one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from client.formats.cosignature import CosignatureSigner
from client.witness.asgi import WitnessApp
from client.witness.core import Witness
from client.witness.store import WitnessStore
from tests.witness.helpers import WITNESS_NAME, WITNESS_SEED, FakeClock, FakeLog, events


def _call(app: WitnessApp, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize(
    ("error", "status"), [(sqlite3.DatabaseError("database disk image is malformed"), 503),
                          (RuntimeError("a bug"), 500)]
)  # fmt: skip
def test_head_error_answers_have_no_body(tmp_path: Path, error: Exception, status: int) -> None:
    log = FakeLog(events(5))
    signer = CosignatureSigner(WITNESS_NAME, WITNESS_SEED)
    with WitnessStore(tmp_path / "state.db") as store:
        w = Witness(signer, [log.witnessed_log()], store, clock=FakeClock())

        def fails(_h: str) -> str | None:
            raise error

        w.checkpoint_by_hash = fails  # type: ignore[method-assign]
        app = WitnessApp(w)
        path = "/" + "ab" * 32 + "/checkpoint"
        got = _call(app, "GET", path)
        assert got[0]["status"] == status and got[1]["body"]
        got = _call(app, "HEAD", path)
        assert got[0]["status"] == status
        assert got[1]["body"] == b"", got[1]["body"]
