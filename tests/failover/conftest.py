"""The fixture of the failover tests: a PostgreSQL primary with a synchronous streaming
standby (harness/pgreplica.py), one per test module; skips, saying why, where it cannot run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.pgreplica import Replicated, replication_missing


@pytest.fixture(scope="module")
def pair() -> Iterator[Replicated]:
    reason = replication_missing()
    if reason is not None:
        pytest.skip(reason)
    r = Replicated()
    try:
        yield r
    finally:
        r.close()
