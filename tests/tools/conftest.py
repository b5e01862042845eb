"""In-process log servers for the auditor and LogClient tests, and a response-tampering wrapper.

Each test gets a real ``tlog`` app (LMDB store in ``tmp_path``) behind Starlette's
``TestClient`` (an ``httpx.Client``), wrapped in :class:`Tamper`, an ASGI middleware that can
rewrite or block responses: that is how a test plays a lying log without touching the
server's code.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.formats.note import Ed25519Signer, parse_note, sign_note
from client.net.logclient import LogClient
from client.tools.cli import main
from tlog.log import Log
from tlog.server import build_app
from tlog.signer import CheckpointSigner

from ..support import serve_config

ORIGIN = "audit.example/log"
SEED = bytes(range(32))
OTHER_SEED = bytes(range(100, 132))
URL = "http://testserver"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Tamper:
    """ASGI middleware: ``rewrite[path] = fn(body) -> body``; ``block`` path prefixes get 404."""

    app: Any
    rewrite: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)
    block: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        self.seen.append(path)
        if any(path.startswith(p) for p in self.block):
            body = b'{"error": "Not Found"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        fn = self.rewrite.get(path)
        if fn is None:
            await self.app(scope, receive, send)
            return
        # Ask for an uncompressed answer so that the body can be edited.
        scope = dict(
            scope, headers=[(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
        )
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                start.update(msg)
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        await self.app(scope, receive, capture)
        body = fn(b"".join(chunks))
        headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Server:
    http: TestClient
    log: Log
    token: str
    signer: CheckpointSigner
    tamper: Tamper
    data: Path

    @property
    def vkey(self) -> str:
        return self.signer.vkey()

    def client(self, **kw: Any) -> LogClient:
        return LogClient(URL, self.vkey, http=self.http, **kw)

    def add(self, n: int, tag: str = "e", batch: int = 700) -> None:
        """Append ``n`` new entries in batches of ``batch`` (several commits)."""
        c = self.client()
        es = [b"entry-%s-%06d" % (tag.encode(), i) for i in range(n)]
        for i in range(0, n, batch):
            c.submit_batch(es[i : i + batch], self.token)

    @property
    def note(self) -> str:
        return self.log.latest.note

    def audit(self, state: Path | None, *extra: str) -> int:
        args = ["audit", URL, "--vkey", self.vkey, *extra]
        if state is not None:
            args += ["--state", str(state)]
        return main(args, http=self.http)


@contextmanager
def serve(data: Path, seed: bytes = SEED, database: str | None = None) -> Iterator[Server]:
    signer = CheckpointSigner(Ed25519Signer(ORIGIN, seed), ORIGIN)
    app, log_, tokens = build_app(serve_config(data, database, batch_age_ms=0.0), signer)
    try:
        token, _ = tokens.create("submitter")
        tamper = Tamper(app)
        with TestClient(tamper) as http:
            yield Server(http, log_, token, signer, tamper, data)
    finally:
        log_.storage.close()  # a failed test too: a PostgreSQL store holds connections


@pytest.fixture
def server(tmp_path: Path, database: str | None) -> Iterator[Server]:
    with serve(tmp_path / "log", database=database) as s:
        yield s


E2E = "c2sp-end-to-end.json"


@pytest.fixture
def e2e(vectors: Path) -> dict[str, str]:
    """The shared C2SP end-to-end vectors (../shared/vectors)."""
    doc: dict[str, str] = json.loads((vectors / E2E).read_text())
    return doc


@pytest.fixture
def bundle(e2e: dict[str, str], tmp_path: Path) -> Path:
    """The vectors' .tlog-proof of entry 5, as a file."""
    p = tmp_path / "5.tlog-proof"
    p.write_text(e2e["tlog_proof_index_5"])
    return p


@pytest.fixture
def entry(tmp_path: Path) -> Path:
    """The vectors' entry 5, as a file."""
    p = tmp_path / "entry"
    p.write_bytes(b"scim-event-5")
    return p


def resign(note: str, seed: bytes = OTHER_SEED, origin: str = ORIGIN) -> str:
    """The same checkpoint text signed by another key with the same name."""
    return sign_note(parse_note(note).text, [Ed25519Signer(origin, seed)])


def rewrite_json(field_name: str, fn: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    def edit(body: bytes) -> bytes:
        doc = json.loads(body)
        doc[field_name] = fn(doc[field_name])
        return json.dumps(doc).encode()

    return edit


def flip(data: bytes, pos: int = 0) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :]
