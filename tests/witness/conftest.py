from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.witness.helpers import FakeClock, FakeLog, events


@pytest.fixture(scope="session")
def e2e(vectors: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((vectors / "c2sp-end-to-end.json").read_text())
    return doc


@pytest.fixture(scope="session")
def log300() -> FakeLog:
    """The end-to-end vector's log: scim-event-0..299 under the vector's log key."""
    return FakeLog(events(300))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
