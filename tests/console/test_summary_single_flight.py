"""``GET /v1/ui/summary``: requests that miss the summary cache together share one read.

The summary read is about 190 statements on PostgreSQL; before, N requests arriving on an
expired (or cold) cache each ran it. Now one read is in flight and the others await it; a
failed read is not cached, every waiter gets the same clear error (never a 500), and the
next request reads again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

import tlog.ui
from tests.server.conftest import make_signer
from tests.support import serve_config
from tlog.backend import StorageError
from tlog.server import build_app

N = 40


class Reads:
    """Counts the summary reads; each blocks until :attr:`release` is set, and the first
    ``fail`` of them raise ``error``."""

    def __init__(self) -> None:
        self.count = 0
        self.release = threading.Event()
        self.fail = 0
        self.error: Exception = RuntimeError("boom")
        self.lock = threading.Lock()


@pytest.fixture
def app(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ASGIApp, Reads]]:
    reads = Reads()
    orig = tlog.ui.Console._summary

    def counted(self: tlog.ui.Console) -> dict[str, Any]:
        with reads.lock:
            reads.count += 1
            failing = reads.fail > 0
            reads.fail -= 1
        reads.release.wait(30)
        if failing:
            raise reads.error
        return orig(self)

    monkeypatch.setattr(tlog.ui.Console, "_summary", counted)
    app, log_, _ = build_app(serve_config(tmp_path, database, batch_age_ms=0.0), make_signer())
    try:
        yield app, reads
    finally:
        log_.storage.close()


async def _many(app: ASGIApp, reads: Reads, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://log.test") as c:

        async def release() -> None:
            for _ in range(20):  # let every request reach the read before it ends
                await asyncio.sleep(0.01)
            reads.release.set()

        got = await asyncio.gather(*(c.get("/v1/ui/summary") for _ in range(n)), release())
    reads.release.clear()
    return [r for r in got if isinstance(r, httpx.Response)]


def test_concurrent_misses_share_one_read(app: tuple[ASGIApp, Reads]) -> None:
    asgi, reads = app
    answers = asyncio.run(_many(asgi, reads, N))
    assert [r.status_code for r in answers] == [200] * N
    assert reads.count == 1, f"{reads.count} summary reads for {N} concurrent requests"
    assert len({r.content for r in answers}) == 1
    # Cached now: more requests read nothing.
    reads.release.set()
    assert [r.status_code for r in asyncio.run(_many(asgi, reads, 5))] == [200] * 5
    assert reads.count == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("boom"), "the console summary could not be read; try again"),
        (StorageError("the store stalled"), "the store stalled"),
    ],
)
def test_a_failed_read_answers_every_waiter_and_is_not_cached(
    app: tuple[ASGIApp, Reads], error: Exception, reason: str
) -> None:
    asgi, reads = app
    reads.fail, reads.error = 1, error
    answers = asyncio.run(_many(asgi, reads, N))
    assert reads.count == 1
    assert [r.status_code for r in answers] == [503] * N
    assert all(r.json() == {"error": reason} for r in answers), answers[0].text
    assert all(r.headers.get("retry-after") for r in answers)
    # Not cached: the next request reads again, and succeeds.
    reads.release.set()
    r = asyncio.run(_many(asgi, reads, 1))[0]
    assert r.status_code == 200 and reads.count == 2
