"""Bucket publication (catch-up) vs plain unconditional PUTs of the same objects, same
SeaweedFS server, same run.

    .venv/bin/python -m bench.bucket [--entries 100000] [--rounds 2]

tlog: a log of N entries (LMDB) is attached to an empty bucket and
``BucketPublisher.publish_once()`` publishes it: every entry bundle and hash tile read
through the log's verified read side, created with ``If-None-Match: *`` (8 in flight), then
the checkpoint by compare-and-swap. Reference: the same objects (bytes prepared in memory
beforehand) written with plain ``put_object`` and the same 8 threads, no condition, no
reading or verification: what the S3 server itself costs. Rounds alternate; best of each.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from client.formats.note import Ed25519Signer
from client.formats.tiles import entry_bundles_for_size, tiles_for_size
from harness.s3 import start_seaweedfs
from tlog.bucket import BucketPublisher, S3Store, content_headers
from tlog.log import Log
from tlog.signer import CheckpointSigner
from tlog.storage import Storage


def entries(n: int) -> list[bytes]:
    return [b"bench-%012d-" % i + b"x" * 50 for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tlog-bench-bucket-"))
    s3 = start_seaweedfs(work / "s3")
    try:
        signer = CheckpointSigner(Ed25519Signer.generate("bench.example/log"), "bench.example/log")
        log_ = Log(Storage(work / "db"), signer)
        es = entries(args.entries)
        for i in range(0, len(es), 4096):
            log_.integrate(es[i : i + 4096])
        size = log_.latest.size
        tiles = tiles_for_size(size) + entry_bundles_for_size(size)
        objects = [
            (
                t.path(),
                log_.entry_bundle(t.index, t.width, size)
                if t.is_entries
                else log_.hash_tile(t.level, t.index, t.width, size),
            )
            for t in tiles
        ]
        best_tlog = best_ref = float("inf")
        for _ in range(args.rounds):
            store = S3Store(f"s3://{s3.bucket()}/log", client=s3.client())
            pub = BucketPublisher(log_, store)
            t0 = time.perf_counter()
            assert pub.publish_once() == size
            best_tlog = min(best_tlog, time.perf_counter() - t0)

            bucket, client = s3.bucket(), s3.client()

            def put(obj: tuple[str, bytes], bucket: str = bucket, client: object = client) -> None:
                ctype, cache = content_headers(obj[0])
                client.put_object(  # type: ignore[attr-defined]
                    Bucket=bucket,
                    Key="log/" + obj[0],
                    Body=obj[1],
                    ContentType=ctype,
                    CacheControl=cache,
                )

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, objects))
            best_ref = min(best_ref, time.perf_counter() - t0)
        n = len(objects) + 1
        print(
            f"machine: {platform.machine()} {platform.python_implementation()} "
            f"{platform.python_version()}; entries {size}; objects {n}"
        )
        print(
            f"tlog publish (verified reads, If-None-Match, CAS checkpoint): "
            f"{best_tlog:.2f} s, {size / best_tlog:,.0f} entries/s, "
            f"{n / best_tlog:,.0f} objects/s"
        )
        print(
            f"reference: plain put_object of the same objects: {best_ref:.2f} s, "
            f"{len(objects) / best_ref:,.0f} objects/s"
        )
        print(f"ratio tlog/reference time: {best_tlog / best_ref:.2f}")
        log_.storage.close()
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
