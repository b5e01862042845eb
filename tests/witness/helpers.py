"""Test doubles for the witness tests: an in-memory log (built with client.formats.merkle), its HTTP
API (/checkpoint and /v1/proof/consistency, exactly the shape the witness codes against),
and a controllable clock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import (
    consistency_ranges,
    leaf_hash,
    proof_from_ranges,
    root_of_range,
)
from client.formats.note import Ed25519Signer, Ed25519Verifier, b64encode, sign_note
from client.net.witness_client import AddCheckpointRequest, origin_hash
from client.witness.core import AddCheckpointError, Witness, WitnessedLog
from client.witness.server import WitnessHTTPServer, start_server
from client.witness.store import WitnessStore

ROOT = Path(__file__).resolve().parents[2]
LOG_SEED = bytes(range(32))
WITNESS_SEED = bytes(range(32, 64))
ORIGIN = "scim-log.example.com/audit"
WITNESS_NAME = "witness.example.com/w1"
# The cosigning key of the witness make_witness() builds by default, and of a peer of it
OURS = CosignatureSigner(WITNESS_NAME, WITNESS_SEED)
PEER_SEED = bytes(range(64, 96))
PEER_NAME = "witness.example.com/w2"


def events(n: int, prefix: str = "scim-event-") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


class FakeClock:
    def __init__(self, now: float = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeLog:
    """A log in memory: leaves, roots, RFC 6962 consistency proofs, signed checkpoints."""

    def __init__(
        self, entries: list[bytes], *, origin: str = ORIGIN, seed: bytes = LOG_SEED
    ) -> None:
        self.origin = origin
        self.signer = Ed25519Signer(origin, seed)
        self.leaves = [leaf_hash(e) for e in entries]
        self.size = len(entries)  # the published size (what /checkpoint serves)
        self._roots: dict[int, bytes] = {}

    def root(self, size: int) -> bytes:
        if size not in self._roots:
            self._roots[size] = root_of_range(self.leaves[:size])
        return self._roots[size]

    def _node(self, level: int, index: int) -> bytes:
        return root_of_range(self.leaves[index << level : (index + 1) << level])

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        if old == 0 or old == new:
            return []
        return proof_from_ranges(consistency_ranges(old, new), self._node)

    def checkpoint_text(self, size: int | None = None) -> str:
        size = self.size if size is None else size
        return Checkpoint(self.origin, size, self.root(size)).text()

    def checkpoint(self, size: int | None = None) -> str:
        return sign_note(self.checkpoint_text(size), [self.signer])

    def body(self, old: int, size: int | None = None, proof: list[bytes] | None = None) -> bytes:
        size = self.size if size is None else size
        if proof is None:
            proof = self.consistency_proof(old, size)
        return AddCheckpointRequest(old, tuple(proof), self.checkpoint(size)).format()

    def witnessed_log(self, url: str | None = None) -> WitnessedLog:
        return WitnessedLog(self.origin, (self.signer.verifier(),), url)


def make_witness(
    db: Path,
    logs: list[WitnessedLog],
    *,
    seed: bytes = WITNESS_SEED,
    name: str = WITNESS_NAME,
    clock: Callable[[], float] | None = None,
) -> Witness:
    return Witness(
        CosignatureSigner(name, seed), logs, WitnessStore(db), clock=clock or FakeClock()
    )


def serving_witness_of(
    origin: str, log_vkey: str, db: Path, name: str, seed: bytes
) -> tuple[CosignatureSigner, Witness, WitnessHTTPServer]:
    """A witness named ``name`` (its key from ``seed``, its state in ``db``, the real
    clock) of the log ``origin`` whose key is ``log_vkey``, started serving HTTP: its
    signer, the witness and its server (the caller shuts it down and closes the store)."""
    signer = CosignatureSigner(name, seed)
    witness = Witness(
        signer,
        [WitnessedLog(origin, (Ed25519Verifier.from_vkey(log_vkey),))],
        WitnessStore(db),
    )
    srv, _ = start_server(witness)
    return signer, witness, srv


# --- the log's HTTP API ---------------------------------------------------------------------


class FakeLogServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.proof_status = 200  # set to 404 (refusal) or 503 (outage) to misbehave
        self.served_note: str | None = None  # GET /checkpoint serves this note when set
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _LogHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _LogHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        srv = cast(FakeLogServer, self.server)
        log = srv.log
        srv.requests.append(self.path)
        url = urlsplit(self.path)
        if url.path == "/checkpoint":
            self._send(200, srv.served_note or log.checkpoint(log.size))
            return
        if url.path == "/v1/proof/consistency":
            if srv.proof_status != 200:
                self._send(srv.proof_status, "no\n")
                return
            q = parse_qs(url.query)
            try:
                old, new = int(q["old_size"][0]), int(q["tree_size"][0])
            except (KeyError, ValueError):
                self._send(400, "bad query\n")
                return
            if not 0 < old <= new <= len(log.leaves):
                self._send(400, "sizes out of range\n")
                return
            doc = {
                "old_size": old,
                "tree_size": new,
                "consistency_proof": [b64encode(h) for h in log.consistency_proof(old, new)],
                "checkpoint": log.checkpoint(new),
            }
            self._send(200, json.dumps(doc), "application/json")
            return
        self._send(404, "not found\n")


S = TypeVar("S", bound=ThreadingHTTPServer)


@contextmanager
def serving(server: S) -> Iterator[S]:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


@contextmanager
def witness_serving(w: Witness, **kw: Any) -> Iterator[WitnessHTTPServer]:
    """``tlog-witness``'s HTTP server for ``w`` (``client.witness.server.start_server``;
    ``kw``: its ``limits``, ``port``, ...), started, and stopped when the block ends (shut
    down, its socket closed, its thread joined)."""
    srv, thread = start_server(w, **kw)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def add_status(w: Witness, body: bytes) -> int:
    """The HTTP status the witness answers an add-checkpoint body with (200 when it cosigns)."""
    try:
        w.add_checkpoint(body)
    except AddCheckpointError as exc:
        return exc.status
    return 200


def write_config(d: Path, log: FakeLog, url: str | None = None) -> Path:
    signer = CosignatureSigner.generate("witness.example.com/w7")
    (d / "witness.key").write_text(signer.skey() + "\n")
    (d / "witness.key").chmod(0o600)
    cfg = d / "witness.toml"
    cfg.write_text(
        'name = "witness.example.com/w7"\nkey_file = "witness.key"\nstate_db = "state.db"\n'
        f'listen = "127.0.0.1:0"\n[[log]]\norigin = "{ORIGIN}"\nvkey = "{log.signer.vkey()}"\n'
        + (f'url = "{url}"\n' if url else "")
    )
    return cfg


def stored_size(w: Witness, origin: str = ORIGIN) -> int:
    """The tree size ``w``'s state holds for ``origin`` (0: none)."""
    stored = w.latest(origin)
    return 0 if stored is None else stored.size


def peer_holding_our_line(log: FakeLog, db: Path, size: int = 9) -> Witness:
    """A peer (state in ``db``) holding ``log``'s ``size`` with our cosignature kept beside
    its own, as gossip leaves it after it saw our checkpoint of its size: the cosignature a
    witness restored from an older copy of its state made after that copy."""
    peer = make_witness(db, [log.witnessed_log()], seed=PEER_SEED, name=PEER_NAME)
    assert add_status(peer, log.body(0, size)) == 200
    held = peer.checkpoint_by_hash(origin_hash(log.origin))
    assert held is not None
    with_ours = held + OURS.cosign(log.checkpoint_text(size), 1_700_000_000).line()
    assert peer.store.replace_note(log.origin, size, log.root(size), with_ours)
    return peer


def write_check_config(
    d: Path,
    logs: list[tuple[FakeLog, str | None]],
    peers: list[tuple[str, str, str]] | None = None,
) -> Path:
    """A witness config in ``d`` under the key of WITNESS_NAME and WITNESS_SEED (http_timeout
    5 s), witnessing each of ``logs`` (with its URL, or none), gossiping with each of
    ``peers`` (name, vkey, URL)."""
    (d / "witness.key").write_text(OURS.skey() + "\n")
    (d / "witness.key").chmod(0o600)
    cfg = d / "witness.toml"
    cfg.write_text(
        f'name = "{WITNESS_NAME}"\nkey_file = "witness.key"\nstate_db = "state.db"\n'
        f'listen = "127.0.0.1:0"\nhttp_timeout = 5\n'
        + "".join(
            f'[[log]]\norigin = "{log.origin}"\nvkey = "{log.signer.vkey()}"\n'
            + (f'url = "{url}"\n' if url else "")
            for log, url in logs
        )
        + "".join(
            f'[[peer]]\nname = "{name}"\nvkey = "{vkey}"\nurl = "{url}"\n'
            for name, vkey, url in peers or []
        )
    )
    return cfg


def serve_process(cfg: Path, *options: str) -> subprocess.Popen[str]:
    """``tlog-witness [options] serve --config cfg`` as a real process, in the config's
    directory, its standard error piped (read it with :func:`served_url`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "client.witness.cli", *options, "serve", "--config", str(cfg)],
        cwd=cfg.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_serving(proc: subprocess.Popen[str]) -> None:
    """Stop a :func:`serve_process` (SIGTERM, then SIGKILL after 15 s) and reap it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def served_url(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[str, str]:
    """The URL a :func:`serve_process` says it serves at, with that log line."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"at (http://127\.0\.0\.1:\d+);", line)
        if m:
            return m.group(1), line
    raise AssertionError("the witness did not report its address")
