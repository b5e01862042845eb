"""Full-audit throughput vs the raw SHA-256 rate of the same machine, in the same run.

    .venv/bin/python -m bench.audit [--entries 1000000] [--workers 4] [--more 10000]

1. Builds a log of ``--entries`` entries in process (``tlog.log.Log`` over ``Storage``,
   batches of 10,000, each one fsynced commit), ~64-byte entries like a SCIM leaf.
2. Serves it with ``tlog serve`` (one uvicorn process on 127.0.0.1, the defaults).
3. Audits it from scratch with :class:`client.tools.auditor.Auditor` over HTTP: every entry
   bundle (gzip) and every hash tile is downloaded, every leaf and node hash recomputed,
   every tile compared, the root checked against the signed checkpoint.
4. Submits ``--more`` entries and audits again (incremental: only new bundles + proof).

The reference is the physical limit of a verifier written with Python's ``hashlib`` on
this machine: SHA-256 over the same N entries (the leaf hashes) plus N-1 node hashes of
two 32-byte children (an RFC 6962 tree of N leaves has N-1 inner nodes), timed here in the
same run, best of three. The ratio says how close the audit gets to "only hashing".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.tlogserve import start_serve
from client.formats.tiles import Tile, entry_bundles_for_size, tiles_for_size
from client.net.logclient import LogClient
from client.tools.auditor import Auditor
from tlog.auth import TokenStore
from tlog.log import Log
from tlog.signer import CheckpointSigner, create_key_file
from tlog.storage import Storage

ORIGIN = "bench.example/audit"


def entries(start: int, n: int, tag: bytes = b"audit") -> list[bytes]:
    return [b"%s-%012d-" % (tag, i) + b"x" * 44 for i in range(start, start + n)]


def build(data: Path, n: int) -> tuple[str, str]:
    """Create the log in ``data``; return (vkey, submitter token)."""
    key = create_key_file(data / "log.key", ORIGIN)
    storage = Storage(data / "db")
    log_ = Log(storage, CheckpointSigner(key, ORIGIN))
    t = time.perf_counter()
    batch = 10_000
    for i in range(0, n, batch):
        log_.integrate(entries(i, min(batch, n - i)))
    dt = time.perf_counter() - t
    token, _ = TokenStore(storage).create("submitter", name="bench")
    storage.close()
    print(f"build: {n:,} entries in {dt:.1f} s ({n / dt:,.0f}/s, durable)", flush=True)
    return key.vkey(), token


def sha256_limit(n: int) -> float:
    """Seconds for N leaf hashes of the entries + N-1 node hashes, best of 3."""
    es = entries(0, n)
    sha = hashlib.sha256
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        leaves = [sha(b"\x00" + e).digest() for e in es]
        level = leaves
        while len(level) > 1:  # a full binary fold: exactly N-1 node hashes
            nxt = [
                sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        best = min(best, time.perf_counter() - t)
    return best


def fetch_all(client: LogClient, size: int, workers: int) -> tuple[float, dict[Tile, bytes]]:
    """Download every entry bundle and hash tile, no hashing: (seconds, the tiles)."""
    tiles = entry_bundles_for_size(size) + tiles_for_size(size)
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        data = dict(zip(tiles, pool.map(client.fetch_tile, tiles), strict=True))
    return time.perf_counter() - t, data


def serve(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``tlog serve`` on a free port; return the process and its base URL."""
    srv = start_serve(data, "--no-demo-token", origin=None, quiet=False)
    return srv.proc, srv.url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=4, help="parallel downloads")
    ap.add_argument("--more", type=int, default=10_000, help="entries for the incremental run")
    args = ap.parse_args()
    n = args.entries
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-audit-", dir=os.environ.get("TMPDIR")))
    proc = None
    try:
        data = tmp / "data"
        vkey, token = build(data, n)
        proc, url = serve(data)
        limit_s = sha256_limit(n)
        state = tmp / "state.json"
        http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=2 * args.workers + 2))
        with LogClient(url, vkey, http=http) as client:
            auditor = Auditor(client, state_path=state, workers=args.workers)
            full = auditor.run()
            limit_s = min(limit_s, sha256_limit(n))  # again after the audit: machine noise
            floor_s, tiles = fetch_all(client, n, args.workers)
            # The same audit with the tiles already in memory: the auditor's own CPU cost.
            cpu = Auditor(LogClient(url, vkey, http=http), fetch=tiles.__getitem__).run()
            del tiles
            client.submit_batch(entries(n, args.more, b"more"), token)
            inc = Auditor(LogClient(url, vkey, http=http), state_path=state).run()
        http.close()
        if full.checkpoint.size != n or inc.checkpoint.size != n + args.more:
            raise SystemExit("audit did not reach the expected size")

        audit_rate = n / full.seconds
        limit_rate = n / limit_s
        print(
            f"\nmachine: {os.cpu_count()} cores, {platform.machine()}, Python "
            f"{platform.python_version()}; server: tlog serve (uvicorn) on 127.0.0.1"
        )
        print(
            f"full audit, {n:,} entries ({full.bundles:,} bundles, {full.tiles:,} hash tiles, "
            f"{args.workers} download threads): {full.seconds:.2f} s = {audit_rate:,.0f} entries/s"
        )
        print(
            f"hashlib SHA-256 limit: {n:,} leaf + {n - 1:,} node hashes in {limit_s:.2f} s "
            f"= {limit_rate:,.0f} entries/s"
        )
        print(f"ratio audit / SHA-256 limit: {audit_rate / limit_rate:.2f}")
        cpu_rate = n / cpu.seconds
        print(
            f"  where it goes: the same audit with every tile already in memory (no HTTP) "
            f"{cpu.seconds:.2f} s = {cpu_rate:,.0f} entries/s ({cpu_rate / limit_rate:.2f} of "
            f"the limit); only downloading every bundle and tile (no hashing) {floor_s:.2f} s "
            f"= {n / floor_s:,.0f} entries/s"
        )
        print(
            f"incremental audit, +{inc.entries:,} entries ({inc.bundles} bundles, "
            f"{inc.tiles} tiles, consistency proof from {inc.previous_size:,}): "
            f"{inc.seconds:.3f} s"
        )
        print(f"state file: {state.stat().st_size:,} bytes")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
