from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from client.formats.note import Ed25519Signer
from tlog.auth import TokenStore
from tlog.http import Limits
from tlog.log import Log
from tlog.server import build_app
from tlog.signer import CheckpointSigner

from ..support import ORIGIN, serve_config


@dataclass
class Harness:
    client: TestClient
    log: Log
    tokens: TokenStore
    signer: CheckpointSigner
    token: str
    data: Path

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def add(self, entry: bytes) -> httpx.Response:
        return self.client.post("/v1/entries", content=entry, headers=self.auth())


def make_signer(seed: bytes = bytes(range(32))) -> CheckpointSigner:
    return CheckpointSigner(Ed25519Signer(ORIGIN, seed), ORIGIN)


@pytest.fixture
def harness(tmp_path: Path, database: str | None) -> Iterator[Harness]:
    signer = make_signer()
    app, log_, tokens = build_app(
        serve_config(
            tmp_path,
            database,
            batch_age_ms=0.0,
            limits=Limits(max_batch_entries=100, max_batch_body_bytes=1 << 20),
        ),
        signer,
    )
    try:
        token, _ = tokens.create("submitter", tenant="t1")
        with TestClient(app) as client:
            yield Harness(client, log_, tokens, signer, token, tmp_path)
    finally:
        log_.storage.close()  # a failed test too: a PostgreSQL store holds connections
