"""Shared test fixtures. The acceptance vectors live beside the project in ../shared/vectors."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session", autouse=True)
def _lmdb_lock_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test's store puts LMDB's lock file on /dev/shm (tlog.lockfile), which outlives the
    test's directory: at the end of the session (per xdist worker), remove the lock files of
    this session's stores, so the suite leaves nothing in memory."""
    yield
    base = tmp_path_factory.getbasetemp()
    for link in base.rglob("lock.mdb"):
        if link.is_symlink():
            target = Path(os.readlink(link))
            if target.name.startswith("tlog-") and target.name.endswith("-lock.mdb"):
                target.unlink(missing_ok=True)


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
