"""Shared test fixtures. The acceptance vectors live beside the project in ../shared/vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"

if not VECTORS.is_dir():  # pragma: no cover - environment error, not a test outcome
    raise RuntimeError(f"test vectors not found at {VECTORS} (expected ../shared/vectors)")


@pytest.fixture(scope="session")
def vectors() -> Path:
    return VECTORS


# A real S3-compatible server (SeaweedFS), started on first use, one per session.
from .s3support import seaweedfs  # noqa: E402,F401
