"""Fixtures shared by the operator tests (test modules do not import each other)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import populate


@pytest.fixture(scope="module")
def source_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("gaps9-migrate") / "data"
    populate(data)
    return data
