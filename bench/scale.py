"""A log of 10 million entries: proof latency in process, start-up time, resident memory.

    .venv/bin/python -m bench.scale [--entries 10000000] [--dir bench/out/scale]

Builds the log once (kept in --dir and reused by later runs, grown if --entries is larger),
then measures in a *fresh* process, so that nothing from the build is in memory:
* start-up: opening the store and the log (identity check, O(log n) root check);
* proof latency: 20,000 random inclusion proofs and 5,000 random consistency proofs
  against the latest checkpoint, each through the same call the HTTP handler uses;
* resident memory (VmRSS, VmHWM) after all of that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from client.formats.note import Ed25519Signer
from tlog.log import Log
from tlog.signer import CheckpointSigner
from tlog.storage import Storage

SEED = bytes(range(32))
ORIGIN = "bench.example/scale"


def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519Signer(ORIGIN, SEED), ORIGIN)


def build(path: Path, n: int) -> None:
    log_ = Log(Storage(path), signer())
    have = log_.latest.size
    if have >= n:
        log_.storage.close()
        return
    t = time.perf_counter()
    batch = 20_000
    i = have
    while i < n:
        k = min(batch, n - i)
        log_.integrate([b"scale-%012d-" % j + b"x" * 44 for j in range(i, i + k)])
        i += k
        if (i // batch) % 25 == 0:
            el = time.perf_counter() - t
            print(f"  built {i:,} entries, {(i - have) / el:,.0f}/s", flush=True)
    print(f"build: {n - have:,} entries in {time.perf_counter() - t:.0f} s", flush=True)
    log_.storage.close()


def rss() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) // 1024
    return out


def measure(path: Path) -> None:
    t = time.perf_counter()
    log_ = Log(Storage(path), signer())
    startup = time.perf_counter() - t
    at_start = rss()
    size = log_.latest.size
    rnd = random.Random(1)
    inc = []
    for _ in range(20_000):
        i = rnd.randrange(size)
        t = time.perf_counter()
        log_.inclusion_proof(i, size)
        inc.append(time.perf_counter() - t)
    cons = []
    for _ in range(5_000):
        m = rnd.randrange(1, size)
        t = time.perf_counter()
        log_.consistency_proof(m, size)
        cons.append(time.perf_counter() - t)

    def pct(xs: list[float], p: float) -> float:
        return sorted(xs)[int(p * (len(xs) - 1))] * 1000

    print(
        json.dumps(
            {
                "tree_size": size,
                "startup_s": round(startup, 4),
                "inclusion_p50_ms": round(pct(inc, 0.5), 3),
                "inclusion_p99_ms": round(pct(inc, 0.99), 3),
                "consistency_p50_ms": round(pct(cons, 0.5), 3),
                "consistency_p99_ms": round(pct(cons, 0.99), 3),
                "inclusion_mean_ms": round(statistics.mean(inc) * 1000, 3),
                **{f"{k}_MB": v for k, v in rss().items()},
                **{f"start_{k}_MB": v for k, v in at_start.items()},
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--dir", default="bench/out/scale")
    ap.add_argument("--measure-only", action="store_true")
    args = ap.parse_args()
    path = Path(args.dir)
    if args.measure_only:
        measure(path)
        return
    build(path, args.entries)
    du = sum(f.stat().st_size for f in path.iterdir())
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--dir", str(path), "--measure-only"],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout)
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; store {du / 2**30:.2f} GiB"
    )
    print(
        f"tree size {r['tree_size']:,}: start-up {r['startup_s'] * 1000:.1f} ms "
        f"(target < 1 s); inclusion proof p50 {r['inclusion_p50_ms']:.3f} ms, "
        f"p99 {r['inclusion_p99_ms']:.3f} ms (target p50 < 1 ms); consistency p50 "
        f"{r['consistency_p50_ms']:.3f} ms"
    )
    print(
        f"memory after start-up: RSS {r['start_VmRSS_MB']} MB (private {r['start_RssAnon_MB']} "
        f"MB); after 25,000 random proofs: RSS {r['VmRSS_MB']} MB = private "
        f"{r['RssAnon_MB']} MB + {r['RssFile_MB']} MB of LMDB file pages mapped from the "
        f"page cache (clean, shared, reclaimable); target < 300 MB"
    )


if __name__ == "__main__":
    main()
