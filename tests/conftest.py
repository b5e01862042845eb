"""Shared test fixtures. The acceptance vectors live beside the project in ../shared/vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgsupport import PgCluster, memory_dir, running_cluster

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"

if not VECTORS.is_dir():  # pragma: no cover - environment error, not a test outcome
    raise RuntimeError(f"test vectors not found at {VECTORS} (expected ../shared/vectors)")


@pytest.fixture(scope="session")
def vectors() -> Path:
    return VECTORS


# -- storage backends ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL server per test session (per xdist worker); skips when
    PostgreSQL is not installed (see tests/pgsupport.py). It runs with fsync on, from a
    tmpfs when there is one: these tests are about behaviour, and a process crash loses
    nothing from the page cache either; what survives a power cut is not testable here."""
    with running_cluster(tmp_root=memory_dir()) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A ``postgresql://`` URL whose search_path is a fresh, empty schema."""
    return pg_cluster.new_schema()


@pytest.fixture
def database() -> str | None:
    """The ``--database`` a test runs with: None, the embedded LMDB store. A module runs its
    tests on both backends by overriding it with one parametrised over
    ``tests.pgsupport.BACKENDS`` (see tests/server/test_api.py)."""
    return None


# A real S3-compatible server (SeaweedFS), started on first use, one per session.
from .s3support import seaweedfs  # noqa: E402,F401
