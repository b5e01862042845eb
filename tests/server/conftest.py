from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import leaf_hash
from client.formats.note import Ed25519Signer, parse_note
from client.formats.policy import Policy
from client.net.witness_client import AddCheckpointRequest
from tlog.auth import TokenStore
from tlog.backend import tile_key, u64
from tlog.http import Limits
from tlog.log import Log
from tlog.server import build_app
from tlog.signer import CheckpointSigner
from tlog.witnessing import WitnessPusher

from ..pgsupport import open_store
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

    def damage(self, what: str) -> None:
        """One stored record of the LMDB store damaged in place: ``entry`` 5, the first hash
        ``tile`` (leaf hash 3), the ``checkpoint`` of size 10 (its signature), or a
        ``dedup`` row (e-4 pointing at index 6); then the caches are dropped. What the
        writer built is still in memory, right, and served from there; the damage is met by
        whatever reads the store again (after a restart, or a blob evicted)."""
        st = self.log.storage
        with st.env.begin(write=True) as txn:
            if what == "entry":
                txn.put(u64(5), b"tampered", db=st.db_entries)
            elif what == "tile":
                blob = bytearray(txn.get(tile_key(0, 0), db=st.db_tiles))
                blob[3 * 32] ^= 1  # leaf hash 3: proofs for 2 and the tile lead elsewhere
                txn.put(tile_key(0, 0), bytes(blob), db=st.db_tiles)
            elif what == "checkpoint":
                note = bytearray(txn.get(u64(10), db=st.db_checkpoints))
                note[-5] ^= 1  # in the signature
                txn.put(u64(10), bytes(note), db=st.db_checkpoints)
            elif what == "dedup":
                txn.put(leaf_hash(b"e-4"), u64(6), db=st.db_dedup)
            else:
                raise ValueError(what)
        self.log.drop_caches()


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


# -- the log's witness pushes against scripted witnesses (test_pusher*.py) ------------------


class ScriptedWitness:
    """A witness that checks old sizes like a real one, or answers what the script says."""

    def __init__(self, name: str) -> None:
        self.signer = CosignatureSigner.generate(f"witness.test/{name}")
        self.size = 0
        self.script: list[httpx.Response] = []
        self.requests: list[AddCheckpointRequest] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        req = AddCheckpointRequest.parse(request.content)
        self.requests.append(req)
        if self.script:
            return self.script.pop(0)
        if req.old_size != self.size:
            return httpx.Response(
                409, text=f"{self.size}\n", headers={"Content-Type": "text/x.tlog.size"}
            )
        text = parse_note(req.checkpoint_note).text
        self.size = int(text.split("\n")[1])
        return httpx.Response(200, text=self.signer.cosign(text, 1700000000).line())


@pytest.fixture
def scripted(tmp_path: Path, database: str | None):  # type: ignore[no-untyped-def]
    """A log, three scripted witnesses a, b, c (2 of them a quorum), the policy, and the
    log's pusher talking to them through a mock transport."""
    log_ = Log(open_store(database, tmp_path), make_signer())
    ws = {n: ScriptedWitness(n) for n in ("a", "b", "c")}
    policy = Policy.parse(
        f"log {log_.vkey}\n"
        + "".join(f"witness {n} {w.signer.vkey()} http://{n}.test\n" for n, w in ws.items())
        + "group two 2 a b c\nquorum two\n"
    )

    def route(request: httpx.Request) -> httpx.Response:
        return ws[request.url.host.split(".")[0]].handle(request)

    http = httpx.Client(transport=httpx.MockTransport(route))
    pusher = WitnessPusher(log_, policy, interval=0, http=http, max_backoff=5)
    yield log_, ws, policy, pusher
    log_.storage.close()
