"""Durable appends on the PostgreSQL backend vs the LMDB backend vs raw PostgreSQL inserts of the
same rows, same machine, same run.

    .venv/bin/python -m bench.pg [--entries 20000] [--batch 1000] [--singles 200] [--rounds 2]
                                 [--no-replica] [--profile]

Starts its own throwaway PostgreSQL on 127.0.0.1 (harness/pgreplica.py, as the tests do:
``fsync = on``, ``synchronous_commit = on``), twice: alone, and as a primary with a synchronous
streaming standby (the HA configuration). Each scenario is run in process, as ``tlog serve``'s
writer thread runs it (``Log.integrate`` on the backend, the remembered-checkpoint file
updated after each commit):

* **batch**: ``--entries`` 64-byte entries in ``--batch``-entry batches: entries/s and the
  latency of one batch (p50, p99);
* **single**: ``--singles`` batches of one entry each (one commit per entry, what a lone
  ``POST /v1/entries`` costs): entries/s and latency.

The references: the LMDB backend (the default store), and **raw inserts**: the very rows the
tlog run committed (entries, dedup keys, tile blobs, checkpoint, state row; captured from its
``commit_batch`` calls) replayed into a fresh database of the same schema with the fewest
statements, one transaction per batch, no hashing, signing, compare-and-swap or checks: what
PostgreSQL costs for those rows. Two ways, the faster one is the reference: COPY for entries
and dedup keys plus one multi-row upsert, one INSERT, one UPDATE; or the backend's own
statements (binary arrays expanded by ``unnest``) sent in one pipeline.

Where the time goes: each tlog run is split into time inside ``commit_batch`` (the database)
and the rest (leaf and tree hashing, dedup lookup, signing, proof checks, checkpoint file);
``--profile`` adds pg_stat_statements' top statements for one PostgreSQL batch run and a
pyinstrument profile of it (if pyinstrument is installed). Every run is bounded (< 2 min with
the defaults).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.formats.note import Ed25519Signer
from tlog.backend import BatchWrite
from tlog.integrity import CheckpointFile
from tlog.log import Log
from tlog.signer import CheckpointSigner
from tlog.storage import Storage

ORIGIN = "bench.example/log"


def entries(n: int, tag: str) -> list[bytes]:
    # ~64-byte entries: the size of a SCIM leaf (v, ts, tenant ref, commitment) in CBOR.
    return [b"%s-%012d-" % (tag.encode(), i) + b"x" * 44 for i in range(n)]


@dataclass
class Run:
    entries: int
    seconds: float
    latencies: list[float]
    db_seconds: float = 0.0
    batches: list[BatchWrite] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.entries / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def run_log(backend: Any, work: list[list[bytes]], keep: bool) -> Run:
    """``Log.integrate`` over ``work`` (a list of batches) on ``backend``."""
    d = Path(tempfile.mkdtemp(prefix="tlog-bench-pg-"))
    try:
        signer = Ed25519Signer(ORIGIN, bytes(range(32)))
        cs = CheckpointSigner(signer, ORIGIN)
        log_ = Log(backend, cs, CheckpointFile(d / "last", cs.verifier, cs.origin))
        commit = backend.commit_batch
        run = Run(sum(len(b) for b in work), 0.0, [])

        def timed(b: BatchWrite) -> None:
            t0 = time.perf_counter()
            commit(b)
            run.db_seconds += time.perf_counter() - t0
            if keep:
                run.batches.append(b)

        backend.commit_batch = timed
        t = time.perf_counter()
        for batch in work:
            t0 = time.perf_counter()
            log_.integrate(batch)
            run.latencies.append(time.perf_counter() - t0)
        run.seconds = time.perf_counter() - t
        return run
    finally:
        backend.close()
        shutil.rmtree(d)


def run_raw(url: str, batches: list[BatchWrite], pipelined: bool) -> Run:
    """The same rows as a tlog run, inserted with the fewest statements: COPY for entries
    and dedup keys (``pipelined=False``), or the backend's own statements (binary arrays
    expanded by ``unnest``) sent in one pipeline per transaction; the better of the two is
    the reference."""
    import psycopg

    from tlog.pg import SCHEMA, ByteaArray

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    run = Run(sum(len(b.entries) for b in batches), 0.0, [])
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.commit()
        t = time.perf_counter()
        for b in batches:
            t0 = time.perf_counter()
            if pipelined:
                with conn.pipeline():
                    conn.execute(
                        "INSERT INTO tlog_entries (idx, data) SELECT %b::int8 + n - 1, e "
                        "FROM unnest(%b::bytea[]) WITH ORDINALITY AS t(e, n)",
                        (b.first_index, ByteaArray(b.entries)),
                    )
                    conn.execute(
                        "INSERT INTO tlog_dedup (leaf_hash, idx) SELECT h, %b::int8 + n - 1 "
                        "FROM unnest(%b::bytea[]) WITH ORDINALITY AS t(h, n)",
                        (b.first_index, ByteaArray(b.leaf_hashes)),
                    )
                    conn.execute(
                        "INSERT INTO tlog_tiles (level, idx, blob) "
                        "SELECT * FROM unnest(%b::int2[], %b::int8[], %b::bytea[]) "
                        "ON CONFLICT (level, idx) DO UPDATE SET blob = EXCLUDED.blob",
                        (
                            [x[0] for x in b.blobs],
                            [x[1] for x in b.blobs],
                            ByteaArray(x[2] for x in b.blobs),
                        ),
                    )
                    _raw_tail(conn, b)
                conn.commit()
                run.latencies.append(time.perf_counter() - t0)
                continue
            with conn.cursor() as cur:
                with cur.copy("COPY tlog_entries (idx, data) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "bytea"])
                    for i, e in enumerate(b.entries, b.first_index):
                        cp.write_row((i, e))
                with cur.copy("COPY tlog_dedup (leaf_hash, idx) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["bytea", "int8"])
                    for i, h in enumerate(b.leaf_hashes, b.first_index):
                        cp.write_row((h, i))
                values = ",".join(["(%s, %s, %s)"] * len(b.blobs))
                cur.execute(
                    f"INSERT INTO tlog_tiles (level, idx, blob) VALUES {values} "
                    "ON CONFLICT (level, idx) DO UPDATE SET blob = EXCLUDED.blob",
                    [x for blob in b.blobs for x in blob],
                )
            _raw_tail(conn, b)
            conn.commit()
            run.latencies.append(time.perf_counter() - t0)
        run.seconds = run.db_seconds = time.perf_counter() - t
    return run


def _raw_tail(conn: Any, b: BatchWrite) -> None:
    conn.execute(
        "INSERT INTO tlog_checkpoints (size, note) VALUES (%s, %s)", (b.tree_size, b.checkpoint)
    )
    conn.execute(
        "UPDATE tlog_state SET tree_size = %s, checkpoint = %s, epoch = epoch + 1 WHERE id = 1",
        (b.tree_size, b.checkpoint),
    )


class Server:
    """A throwaway PostgreSQL (alone, or with a synchronous standby) and fresh databases."""

    def __init__(self, replica: bool, profile: bool) -> None:
        from harness.pgreplica import Replicated

        conf: dict[str, str] = {}
        if profile:
            conf = {
                "shared_preload_libraries": "'pg_stat_statements'",
                "pg_stat_statements.track": "all",
            }
        self.cluster = Replicated(standby=replica, conf=conf)
        self._n = 0

    def fresh(self) -> str:
        self._n += 1
        return self.cluster.create_database(f"bench{self._n}")

    def close(self) -> None:
        self.cluster.close()


def pg_backend(url: str) -> Any:
    from tlog.pg import PgStorage

    return PgStorage(url)


def lmdb_backend(d: Path) -> Callable[[], Any]:
    def make() -> Any:
        path = Path(tempfile.mkdtemp(prefix="db-", dir=d))
        return Storage(path / "db")

    return make


def profile_pg(server: Server, work: list[list[bytes]]) -> None:
    import psycopg.conninfo

    url = server.fresh()
    admin = server.cluster.primary
    admin.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    admin.query("SELECT pg_stat_statements_reset()")
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    prof = Profiler(interval=0.0005) if Profiler else None
    if prof:
        prof.start()
    run = run_log(pg_backend(url), work, keep=False)
    if prof:
        prof.stop()
    print(
        f"\nprofiled PostgreSQL batch run: {run.rate:,.0f} entries/s; "
        f"{run.db_seconds / run.seconds:.0%} of the time inside commit_batch"
    )
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    rows = admin.query(
        "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = %s ORDER BY total_exec_time DESC LIMIT 8",
        dbname,
    )
    print("pg_stat_statements, top statements by server time (ms):")
    for calls, total, nrows, q in rows:
        print(f"  {total:9.1f} ms {calls:6d} calls {nrows:8d} rows  {q}")
    if prof:
        print(prof.output_text(unicode=False, color=False, show_all=False)[:6000])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-replica", action="store_true", help="skip the synchronous standby")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from harness.pgreplica import replication_missing

    reason = replication_missing()
    if reason:
        sys.exit(f"bench.pg: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-"))
    servers = {"alone": Server(False, args.profile)}
    if not args.no_replica:
        servers["sync standby"] = Server(True, False)
    best: dict[str, Run] = {}

    def keep(name: str, run: Run) -> None:
        if name not in best or run.rate > best[name].rate:
            best[name] = run
        print(
            f"  {name:38} {run.rate:10,.0f} entries/s  p50 {run.pct(0.5):7.2f} ms  "
            f"p99 {run.pct(0.99):7.2f} ms  db {run.db_seconds / run.seconds:4.0%}",
            flush=True,
        )

    try:
        for r in range(args.rounds):
            print(f"round {r}", flush=True)
            for kind, per, count in (
                ("batch", args.batch, args.entries),
                ("single", 1, args.singles),
            ):
                es = entries(count, f"{kind}{r}")
                work = [es[i : i + per] for i in range(0, count, per)]
                lm = run_log(lmdb_backend(tmp)(), work, keep=False)
                keep(f"{kind}: LMDB backend", lm)
                for sname, srv in servers.items():
                    pgr = run_log(pg_backend(srv.fresh()), work, keep=True)
                    keep(f"{kind}: PostgreSQL backend ({sname})", pgr)
                    for how in ("COPY", "pipelined"):
                        raw = run_raw(srv.fresh(), pgr.batches, pipelined=how == "pipelined")
                        keep(f"{kind}: raw inserts, {how} ({sname})", raw)
        if args.profile:
            es = entries(args.entries, "prof")
            profile_pg(
                servers["alone"],
                [es[i : i + args.batch] for i in range(0, args.entries, args.batch)],
            )
    finally:
        for srv in servers.values():
            srv.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; best of {args.rounds} rounds"
    )
    for kind in ("batch", "single"):
        lm = best[f"{kind}: LMDB backend"]
        for sname in servers:
            pgr = best[f"{kind}: PostgreSQL backend ({sname})"]
            raws = [best[f"{kind}: raw inserts, {how} ({sname})"] for how in ("COPY", "pipelined")]
            raw = max(raws, key=lambda r: r.rate)
            how = "COPY" if raw is raws[0] else "pipelined"
            print(
                f"{kind:6} {sname:12}: PostgreSQL backend {pgr.rate:9,.0f}/s "
                f"(p50 {pgr.pct(0.5):.2f} ms, p99 {pgr.pct(0.99):.2f} ms) = "
                f"{pgr.rate / raw.rate:.2f}x raw inserts ({how}: {raw.rate:,.0f}/s, "
                f"p50 {raw.pct(0.5):.2f} ms), {pgr.rate / lm.rate:.2f}x LMDB "
                f"({lm.rate:,.0f}/s, p50 {lm.pct(0.5):.2f} ms)"
            )


if __name__ == "__main__":
    main()
