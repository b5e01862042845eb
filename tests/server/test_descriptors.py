"""Closing what was opened releases its file descriptors.

A process that builds many apps (the test suite, a test harness, an embedding program)
must not keep one descriptor per app: under a default limit of 1,024 open files the suite
once ended with ~1,015 open, and a server whose accept() fails with EMFILE just stops
answering. Each test opens and closes the same thing several times and checks that the
count of open descriptors does not grow with the number of rounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tlog.server import build_app

from ..support import open_fds, serve_config
from .conftest import make_signer

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd (Linux)"
)

ROUNDS = 8


def growth(cycle: Callable[[int], None]) -> list[str]:
    """The descriptors left open after ROUNDS more rounds of ``cycle`` than after one (which
    pays for imports and anything made once per process)."""
    cycle(0)
    before = open_fds()
    for i in range(1, ROUNDS + 1):
        cycle(i)
    after = open_fds()
    return sorted(t for fd, t in after.items() if before.get(fd) != t)


def test_closing_the_store_releases_every_descriptor_build_app_opened(
    tmp_path: Path, new_database: Callable[[], str | None]
) -> None:
    def cycle(i: int) -> None:
        app, log_, tokens = build_app(
            serve_config(tmp_path / f"data{i}", new_database(), batch_age_ms=0.0), make_signer()
        )
        try:
            token, _ = tokens.create("submitter", tenant="t1")
            with TestClient(app) as client:  # the lifespan: sequencer, read pool, SCIM jobs
                r = client.post(
                    "/v1/entries", content=b"entry", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 200, r.text
        finally:
            log_.storage.close()

    left = growth(cycle)
    # Another thread of the process may open a descriptor meanwhile: a leak of one per
    # round shows as ROUNDS or more.
    assert len(left) < ROUNDS // 2, left
