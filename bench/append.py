"""Durable in-process append throughput vs pymerkle's in-memory tree, same machine, same run.

    .venv/bin/python -m bench.append [--entries 200000] [--rounds 3]

tlog: Log.integrate() in batches (each batch one fsynced LMDB transaction with entries,
dedup index, tree hashes and a signed checkpoint), and Log.publish() of each batch's
checkpoint (the remembered-checkpoint file written and fdatasynced) on a second thread while
the next batch is built and committed, as the sequencer of ``tlog serve`` does; the clock
stops when the last checkpoint is remembered. pymerkle: InmemoryTree.append_entry()
per entry (not durable, no signatures). Rounds alternate between the two so that machine
noise hits both; the best round of each is reported.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from client.formats.note import Ed25519Signer
from tlog.integrity import CheckpointFile
from tlog.log import Log
from tlog.signer import CheckpointSigner
from tlog.storage import Storage


def entries(n: int, tag: str) -> list[bytes]:
    # ~64-byte entries: the size of a SCIM leaf (v, ts, tenant ref, commitment) in CBOR.
    return [b"%s-%012d-" % (tag.encode(), i) + b"x" * 44 for i in range(n)]


def run_tlog(n: int, batch: int, tag: str) -> float:
    d = Path(tempfile.mkdtemp(prefix="tlog-bench-", dir="."))
    try:
        signer = Ed25519Signer.generate("bench.example/log")
        cs = CheckpointSigner(signer, "bench.example/log")
        # As `tlog serve` runs it: every batch also updates the remembered checkpoint file.
        log_ = Log(Storage(d / "db"), cs, CheckpointFile(d / "last", cs.verifier, cs.origin))
        es = entries(n, tag)
        with ThreadPoolExecutor(1) as publisher:
            t = time.perf_counter()
            pending: Future[None] | None = None
            for i in range(0, n, batch):
                res = log_.integrate(es[i : i + batch], publish=False)
                if pending is not None:
                    pending.result()
                pending = publisher.submit(log_.publish, res.checkpoint)
            if pending is not None:
                pending.result()
            dt = time.perf_counter() - t
        log_.storage.close()
        return n / dt
    finally:
        shutil.rmtree(d)


def run_pymerkle(n: int, tag: str) -> float:
    import pymerkle

    tree = pymerkle.InmemoryTree()
    es = entries(n, tag)
    t = time.perf_counter()
    for e in es:
        tree.append_entry(e)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for name, fn in [
            ("tlog durable, batch 10000", lambda r=r: run_tlog(args.entries, 10_000, f"a{r}")),
            ("tlog durable, batch 1000", lambda r=r: run_tlog(args.entries, 1000, f"b{r}")),
            ("pymerkle in-memory", lambda r=r: run_pymerkle(args.entries, f"c{r}")),
        ]:
            v = fn()
            best[name] = max(best.get(name, 0.0), v)
            print(f"round {r}: {name:28} {v:12,.0f} entries/s", flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    ref = best["pymerkle in-memory"]
    for name, v in best.items():
        print(f"{name:28} {v:12,.0f} entries/s  ({v / ref:4.2f}x pymerkle)")


if __name__ == "__main__":
    main()
