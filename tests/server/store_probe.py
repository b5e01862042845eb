"""Run in a subprocess by test_corruption.py: open a (possibly damaged) store the way
``tlog serve`` does, read everything the log serves, run ``tlog fsck``, and dump the store's
logical content. Prints one JSON object. A SIGBUS/SIGSEGV shows as the exit signal.

    python -m tests.server.store_probe <data dir>
    python -m tests.server.store_probe sweep <data dir> <work dir> <seed> <flips>
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from client.formats.tiles import TILE_WIDTH
from tests.server.conftest import make_signer
from tlog.log import Log, NotFound
from tlog.storage import Storage, StorageError

SAMPLE = 97  # every 97th index gets a proof (a spread over every tile)


def _b(x: bytes) -> str:
    return base64.b64encode(x).decode()


def served(log_: Log) -> dict[str, Any]:
    """What the log serves, as JSON-able values; a refusal is {"error": <class name>}."""
    out: dict[str, Any] = {}
    size = log_.latest.size

    def get(key: str, fn: Any, *args: Any) -> None:
        try:
            v = fn(*args)
        except (StorageError, NotFound) as exc:
            out[key] = {"error": type(exc).__name__}
            return
        if isinstance(v, bytes):
            v = _b(v)
        elif isinstance(v, list):
            v = [_b(h) for h in v]
        elif hasattr(v, "note"):
            v = v.note
        out[key] = v

    out["latest"] = log_.latest.note
    for i in range(size):
        get(f"entry/{i}", log_.entry, i)
    for i in range(0, size, SAMPLE):
        get(f"incl/{i}", log_.inclusion_proof, i, size)
    sizes = [s for s in range(0, size + 1, 100)]
    for s in sizes:
        get(f"cp/{s}", log_.checkpoint_note, s)
    for a, b in itertools.pairwise(sizes[1:]):
        get(f"cons/{a}/{b}", log_.consistency_proof, a, b)
        get(f"cons/{a}/{size}", log_.consistency_proof, a, size)
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        w = min(TILE_WIDTH, size - n * TILE_WIDTH)
        get(f"tile/0/{n}/{w}", log_.hash_tile, 0, n, w, size)
        get(f"bundle/{n}/{w}", log_.entry_bundle, n, w, size)
    if size >> 8:
        get("tile/1/0", log_.hash_tile, 1, 0, size >> 8, size)
    return out


def logical_dump(db: Path) -> str:
    """SHA-256 over every key and value of every named database (what the log *means*)."""
    import lmdb

    h = hashlib.sha256()
    env = lmdb.open(str(db), readonly=True, lock=False, max_dbs=16)
    try:
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
            for name in names:
                d = env.open_db(name, txn=txn, create=False)
                for k, v in txn.cursor(db=d):
                    h.update(b"%d:%d:" % (len(k), len(v)) + name + bytes(k) + bytes(v))
    finally:
        env.close()
    return h.hexdigest()


def probe(data: Path) -> dict[str, Any]:
    from tlog.cli import main as tlog_main

    res: dict[str, Any] = {}
    try:
        storage = Storage(data / "db")
        log_ = Log(storage, make_signer())
    except StorageError as exc:
        res["start"] = f"refused: {exc}"
    else:
        res["start"] = "ok"
        try:
            res["served"] = served(log_)
        finally:
            storage.close()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        res["fsck_exit"] = tlog_main(["fsck", "--data", str(data)])
    res["fsck_out"] = out.getvalue() + err.getvalue()
    if "data.mdb structure" not in res["fsck_out"]:  # never map a structurally broken file
        try:
            res["dump"] = logical_dump(data / "db")
        except Exception as exc:  # the test only compares dumps; any failure means "differs"
            res["dump"] = f"unreadable: {type(exc).__name__}"
    return res


def sweep(src: Path, work: Path, seed: int, flips: int) -> None:
    """Probe ``src``, then ``flips`` copies of it with one random byte changed each; one
    JSON line per probe (flushed, so a fatal signal shows which flip it was)."""
    import random
    import shutil

    print(json.dumps({"k": -1, **probe(src)}), flush=True)
    rng = random.Random(seed)
    length = (src / "db" / "data.mdb").stat().st_size
    for k in range(flips):
        data = work / f"flip{k}"
        shutil.copytree(src, data)
        off = rng.randrange(length)
        with (data / "db" / "data.mdb").open("r+b") as f:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ rng.randrange(1, 256)]))
        print(json.dumps({"k": k, "offset": off}), flush=True)
        print(json.dumps({"k": k, "offset": off, **probe(data)}), flush=True)
        shutil.rmtree(data)


if __name__ == "__main__":
    if sys.argv[1] == "sweep":
        sweep(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        print(json.dumps(probe(Path(sys.argv[1]))))
