"""Fixtures of the adapter tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import start_server

from .logserver import Log


@pytest.fixture
def log(tmp_path: Path, database: str | None) -> Iterator[Log]:
    srv = start_server(tmp_path / "log", database=database)
    vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
    handle = Log(srv, vkey, database)
    yield handle
    handle.srv.stop()  # the one running now (restart() replaces it)
