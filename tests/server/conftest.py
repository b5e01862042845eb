from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from client.formats.note import Ed25519Signer
from tlog.app import Limits
from tlog.auth import TokenStore
from tlog.log import Log
from tlog.server import build_app
from tlog.signer import CheckpointSigner

from ..support import free_port

ORIGIN = "test.example/log"
ROOT = Path(__file__).resolve().parents[2]


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
        tmp_path,
        signer,
        database=database,
        max_batch_age=0.0,
        limits=Limits(max_batch_entries=100, max_batch_body_bytes=1 << 20),
    )
    token, _ = tokens.create("submitter", tenant="t1")
    with TestClient(app) as client:
        yield Harness(client, log_, tokens, signer, token, tmp_path)
    log_.storage.close()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    data: Path
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    data: Path, port: int | None = None, *extra: str, timeout: float = 20.0
) -> ServerProcess:
    """Run ``tlog serve`` as a real uvicorn process on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = data.parent / f"{data.name}-server.log"
    out = open(log_path, "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tlog.cli",
            "serve",
            "--data",
            str(data),
            "--port",
            str(port),
            "--origin",
            ORIGIN,
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/checkpoint", timeout=1).status_code == 200:
                return ServerProcess(proc, url, data, port)
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {log_path.read_text()}")
