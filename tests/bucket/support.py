"""What the bucket tests share: a log frontend publishing to a real S3-compatible bucket
(:func:`open_node`), its signer and entries."""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from client.formats.checkpoint import Checkpoint
from client.formats.note import Ed25519Signer, parse_note
from tlog.bucket import BucketPublisher, ObjectStore, S3Store
from tlog.log import Log
from tlog.server import build_app
from tlog.signer import CheckpointSigner

from ..s3support import SeaweedS3
from ..support import app_parts, serve_config, wait_for

ANY_SIZE = 1 << 26  # the tests read whole objects (the publisher bounds its own reads)
ORIGIN = "bucket.example/log"
PUBLIC_KEY = re.compile(
    r"checkpoint|tile/(entries|[0-9]|[1-9][0-9])/(x[0-9]{3}/)*[0-9]{3}(\.p/[1-9][0-9]{0,2})?"
)


def make_signer(seed: bytes = bytes(range(32))) -> CheckpointSigner:
    return CheckpointSigner(Ed25519Signer(ORIGIN, seed), ORIGIN)


@dataclass
class Node:
    client: TestClient
    log: Log
    token: str
    publisher: BucketPublisher
    store: S3Store

    def add_batch(self, entries: list[bytes]) -> httpx.Response:
        body = b"".join(struct.pack(">H", len(e)) + e for e in entries)
        return self.client.post(
            "/v1/entries/batch",
            content=body,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/octet-stream",
            },
        )


@contextlib.contextmanager
def open_node(
    data: Path,
    s3: SeaweedS3,
    bucket: str,
    prefix: str = "logs/one",
    *,
    store: ObjectStore | None = None,
    signer: CheckpointSigner | None = None,
    **build: Any,
) -> Iterator[Node]:
    """A log frontend publishing to ``s3://bucket/prefix`` (configured as ``tlog serve``
    would be: a bucket URL and an endpoint, credentials from the environment)."""
    mp = pytest.MonkeyPatch()
    for k, v in s3.env().items():
        mp.setenv(k, v)
    data.mkdir(parents=True, exist_ok=True)  # keys and last-checkpoint (any backend)
    try:
        app, log_, tokens = build_app(
            serve_config(
                data,
                batch_age_ms=0.0,
                bucket=f"s3://{bucket}/{prefix}",
                bucket_endpoint=s3.endpoint,
                **build,
            ),
            signer or make_signer(),
            scim=False,
            bucket_store=store,
        )
        try:
            token, _ = tokens.create("submitter", tenant="t1")
            with TestClient(app) as client:
                yield Node(
                    client,
                    log_,
                    token,
                    app_parts(app).bucket,
                    S3Store(f"s3://{bucket}/{prefix}", client=s3.client()),
                )
        finally:
            log_.storage.close()
    finally:
        mp.undo()


def entries(n: int, tag: str = "e") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def wait_published(node: Node, timeout: float = 30.0) -> None:
    """Until the background publisher has put the log's latest size in the bucket."""
    wait_for(
        lambda: node.publisher.bucket_size >= node.log.latest.size,
        timeout,
        lambda: f"publishing {node.publisher.status()}",
    )


def bucket_checkpoint(node: Node) -> Checkpoint:
    """The checkpoint in ``node``'s bucket (there must be one)."""
    got = node.store.get("checkpoint", ANY_SIZE)
    assert got is not None
    return Checkpoint.parse(parse_note(got[0].decode()).text)


@contextlib.contextmanager
def split_brain(tmp_path: Path, s3: SeaweedS3) -> Iterator[tuple[Node, Node]]:
    """Two frontends on one bucket, each on a store of its own, one signing key: ``a``
    (``tmp_path/a``) published size 50, was copied to ``b`` (a standby promoted: its idle
    re-read of the bucket far off), then went on to 80 and published that. Yields (a, b)."""
    bucket = s3.bucket()
    signer = make_signer()
    with open_node(tmp_path / "a", s3, bucket, signer=signer) as a:
        assert a.add_batch(entries(50)).status_code == 200
        a.publisher.publish_once()
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("tlog.lock"))
    with open_node(tmp_path / "b", s3, bucket, signer=signer) as b:
        b.publisher.check_interval = 3600.0
        with open_node(tmp_path / "a", s3, bucket, signer=signer) as a:
            assert a.add_batch(entries(30, "primary")).status_code == 200
            a.publisher.publish_once()
            yield a, b
