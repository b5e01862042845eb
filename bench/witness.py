"""Checkpoints verified and cosigned per second by one witness.

    .venv/bin/python -m bench.witness [--checkpoints 2000]

A growing log is prepared in memory (the server's own tree code): one checkpoint is signed
for each step of a few hundred leaves, and each is sent with its consistency proof from the
previous one:

* in process: ``Witness.add_checkpoint(body)``: parse, verify the log signature, verify the
  RFC 9162 consistency proof, cosign, and commit the compare-and-swap to SQLite
  (WAL, synchronous=FULL) before returning, i.e. exactly what the HTTP handler does;
* over HTTP: a real ``tlog-witness serve`` process on 127.0.0.1, driven by the log-side
  ``WitnessClient`` (which also verifies the returned cosignature).

Reference figures from the same run: Ed25519 verify + sign per second on this machine (the
cryptographic floor of one add-checkpoint), an fsync'd SQLite commit per second, and the
deployed network's Go witnesses, omniwitness and litewitness (built at the versions pinned in
tests/interop/gobin.py), each driven by the same client with the same checkpoints; the
ratios ours/theirs are printed. Without Go (or if a build fails) those lines say why.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import leaf_hash, root_of_range
from client.formats.note import Ed25519Signer, sign_note
from client.net.witness_client import AddCheckpointRequest, WitnessClient
from client.witness.core import Witness, WitnessedLog
from client.witness.store import WitnessStore
from harness.net import free_port, wait_http
from tlog.tree import NodeReader, RightEdge

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "bench.example/witnessed"


def prepare(n_checkpoints: int, step: int) -> list[tuple[int, str, list[bytes], int]]:
    """(old size, checkpoint note, consistency proof, new size) for a growing log."""
    store: dict[tuple[int, int], bytes] = {}
    edge = RightEdge(0, lambda lv, ix: store.get((lv, ix)))
    key = Ed25519Signer(ORIGIN, bytes(range(32)))
    out = []
    old = 0
    for _ in range(n_checkpoints):
        edge.append([leaf_hash(b"w-%d" % j) for j in range(old, old + step)])
        for lv, ix, blob in edge.take_dirty():
            store[(lv, ix)] = blob
        new = edge.size
        reader = NodeReader(lambda lv, ix: store.get((lv, ix)))
        note = sign_note(Checkpoint(ORIGIN, new, reader.root(new)).text(), [key])
        proof = reader.consistency_proof(old, new) if old else []
        out.append((old, note, proof, new))
        old = new
    return out


def crypto_floor(seconds: float = 2.0) -> float:
    key = Ed25519Signer(ORIGIN, bytes(range(32)))
    ver = key.verifier()
    w = CosignatureSigner("w.example/bench", bytes(32))
    text = Checkpoint(ORIGIN, 5, root_of_range([b"\x00" * 32])).text()
    sig = key.sign(text.encode())
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ver.verify(text.encode(), sig)
        w.cosign(text, 1700000000)
        n += 1
    return n / (time.perf_counter() - t0)


def sqlite_floor(path: Path, count: int = 300) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    t0 = time.perf_counter()
    for i in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO t VALUES (1, ?)", (b"x" * 300 + bytes([i % 256]),))
        db.execute("COMMIT")
    dt = time.perf_counter() - t0
    db.close()
    return count / dt


def go_references(
    tmp: Path, steps: list[tuple[int, str, list[bytes], int]], vkey_log: str
) -> dict[str, float | str]:
    """add-checkpoint throughput of omniwitness and litewitness over HTTP (Ed25519 only)."""
    from harness import Unavailable
    from harness.gowitness import GoWitness, Litewitness, Omniwitness

    out: dict[str, float | str] = {}
    starters: dict[str, Callable[[Path], GoWitness]] = {
        "omniwitness": lambda d: Omniwitness(d, ORIGIN, vkey_log, mldsa=False),
        "litewitness": lambda d: Litewitness(d, ORIGIN, vkey_log),
    }
    for name, start in starters.items():
        d = tmp / name
        d.mkdir()
        w: GoWitness | None = None
        try:
            w = start(d)
            with httpx.Client(timeout=30) as http:
                client = WitnessClient(w.url, w.verifier, http=http)
                t0 = time.perf_counter()
                for old, note, proof, _ in steps:
                    client.add_checkpoint(note, old, proof)
                out[name] = len(steps) / (time.perf_counter() - t0)
        except Unavailable as exc:
            out[name] = str(exc)
        finally:
            if w is not None:
                w.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=2000)
    ap.add_argument("--step", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-witness-", dir="."))
    proc = None
    try:
        steps = prepare(args.checkpoints, args.step)
        logs = [WitnessedLog(ORIGIN, (Ed25519Signer(ORIGIN, bytes(range(32))).verifier(),))]
        signer = CosignatureSigner("w.example/bench", bytes(range(32, 64)))
        w = Witness(signer, logs, WitnessStore(tmp / "inproc.db"))
        bodies = [AddCheckpointRequest(old, tuple(p), note).format() for old, note, p, _ in steps]
        t0 = time.perf_counter()
        for body in bodies:
            w.add_checkpoint(body)
        inproc = len(bodies) / (time.perf_counter() - t0)

        # Over HTTP, against a real `tlog-witness serve`.
        key_file = tmp / "w.key"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "client.witness.cli",
                "keygen",
                "--name",
                "w.example/http",
                "--key",
                str(key_file),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        port = free_port()
        vkey_log = logs[0].verifiers[0].vkey()  # type: ignore[attr-defined]
        (tmp / "w.toml").write_text(
            f'name = "w.example/http"\nkey_file = "w.key"\nstate_db = "http.db"\n'
            f'listen = "127.0.0.1:{port}"\n[[log]]\norigin = "{ORIGIN}"\nvkey = "{vkey_log}"\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "client.witness.cli", "serve", "--config", str(tmp / "w.toml")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/evidence", proc)
        wvkey = CosignatureSigner.from_skey(key_file.read_text()).vkey()
        with httpx.Client(timeout=30) as http:
            client = WitnessClient(url, wvkey, http=http)
            t0 = time.perf_counter()
            for old, note, proof, _ in steps:
                client.add_checkpoint(note, old, proof)
            over_http = len(steps) / (time.perf_counter() - t0)
        go_rates = go_references(tmp, steps, vkey_log)
        floor_crypto = crypto_floor()
        floor_sqlite = sqlite_floor(tmp / "floor.db")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; {args.checkpoints} checkpoints, +{args.step} leaves each"
    )
    print(
        f"witness in process (verify, consistency proof, cosign, durable CAS): "
        f"{inproc:8,.0f} checkpoints/s"
    )
    print(
        f"witness over HTTP (tlog-witness serve + WitnessClient):            "
        f"{over_http:8,.0f} checkpoints/s"
    )
    print(
        f"floors on this machine: Ed25519 verify+cosign {floor_crypto:,.0f}/s; "
        f"fsync'd SQLite commit {floor_sqlite:,.0f}/s"
    )
    for name, rate in go_rates.items():
        if isinstance(rate, str):
            print(f"{name}: not measured ({rate})")
        else:
            print(
                f"{name} over HTTP (same client, same checkpoints):               "
                f"{rate:8,.0f} checkpoints/s  -> tlog-witness / {name} = "
                f"{over_http / rate:.2f}x"
            )


if __name__ == "__main__":
    main()
