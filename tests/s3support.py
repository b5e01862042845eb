"""The SeaweedFS S3 server as a test fixture (the server itself: :mod:`harness.s3`).

One server per test session (per xdist worker): :func:`seaweedfs` is the session fixture
(tests use it through the ``seaweedfs`` fixture in ``tests/conftest.py``), and
:meth:`SeaweedS3.bucket` makes a fresh bucket per test. Tests skip, saying why, when the
binary is missing or cannot run.

Never test conditional writes against s3rver or local-s3-server: they ignore
``If-None-Match``/``If-Match``. ``tests/bucket/test_s3_conditions.py`` proves this server
enforces them before anything relies on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.s3 import SeaweedS3, Unavailable, start_seaweedfs, weed_binary

__all__ = [
    "SeaweedS3",
    "Unavailable",
    "audit_bucket",
    "seaweedfs",
    "start_seaweedfs",
    "weed_binary",
]


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session; skips (with the reason) where it cannot run."""
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except Unavailable as exc:
        pytest.skip(f"SeaweedFS S3 server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def audit_bucket(s3: SeaweedS3, bucket: str, prefix: str, vkey: str, state: Path) -> Any:
    """Audit the log published at ``bucket/prefix`` reading ONLY the bucket's anonymous HTTP
    endpoint: the checkpoint's signature, every entry bundle hashed into the tree, the root
    recomputed, and every hash tile compared with the recomputation. Returns the
    :class:`client.tools.auditor.AuditResult`; raises if anything differs."""
    import httpx

    from client.net.logclient import LogClient
    from client.tools.auditor import Auditor

    with (
        httpx.Client(timeout=30) as http,
        LogClient(s3.public_url(bucket, prefix), vkey, http=http) as client,
    ):
        return Auditor(client, state_path=state).run()
