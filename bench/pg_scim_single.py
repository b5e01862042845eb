"""Single SCIM events (``POST /v1/scim/events``) on the PostgreSQL backend.

    .venv/bin/python -m bench.pg_scim_single [--duration 8] [--connections 64] [--rounds 1]
        [--subjects N]

Needs ``wrk`` and PostgreSQL (``initdb``/``pg_ctl``, as the tests find them: harness/pg.py).
Starts a throwaway cluster on 127.0.0.1 (``fsync = on``, on disk), then ``tlog serve
--database <a fresh schema> --replication none`` with the serve defaults, and loads it as
``bench.scim_single`` does (wrk -t2, a fresh create event per request: each answer waits for
the event's records and leaf to be durable and in a signed, remembered checkpoint).
``--subjects N``: each event's rid is one of N (after the first few, events of known
subjects: their staging reads the subject's DEK and resource state), not a fresh one.

Reported per round: requests/s, p50/p99, the server's CPU per request (user + system time
of its process over the requests answered) and the write transactions per event (xids the
database handed out during the run, over the events logged: a group of ``k`` events costs
``1/k`` when its records and leaves are one transaction, ``2/k`` when they were two).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.http import wrk
from bench.scim_proxy import cpu_model, tlog_token
from bench.scim_single import SCIM_LUA, TENANT, cpu_seconds, template
from bench.tlogserve import serving
from harness.pg import PgCluster


def write_xids(cluster: PgCluster) -> int:
    """The next transaction id (itself one xid); after a second, for the stats to settle."""
    time.sleep(1.0)
    return int(str(cluster.query("SELECT pg_current_xact_id()")[0][0]))


def one_round(
    cluster: PgCluster, tmp: Path, duration: int, connections: int, subjects: int = 0
) -> str:
    url = cluster.new_schema()
    data = tmp / f"data-{time.monotonic_ns()}"
    with serving(data, database=url) as server:
        base = server.url
        token = tlog_token(data, TENANT, url)
        script = SCIM_LUA.replace("%BODY%", template()).replace("%TOKEN%", token)
        if subjects:
            fresh = 'string.format("u-%d-%d-%d", tid, n, r(1, 1000000000))'
            if fresh not in script:
                raise RuntimeError("bench.scim_single's SCIM_LUA changed: update --subjects")
            script = script.replace(fresh, f'string.format("u-%d", r(1, {subjects}))')
        x0 = write_xids(cluster)
        c0 = cpu_seconds(server.pid)
        res = wrk(base, script, duration, connections)
        cpu = cpu_seconds(server.pid) - c0
        x1 = write_xids(cluster)
        size = int(httpx.get(base + "/checkpoint").text.splitlines()[1])
        answered = max(res["rps"] * duration, 1)
        return (
            f"{res['rps']:6,.0f} req/s  p50 {res.get('p50_ms', 0):6.1f} ms  "
            f"p99 {res.get('p99_ms', 0):6.1f} ms  non-2xx {res['non2xx']:.0f}  "
            f"server CPU {1e6 * cpu / answered:5.0f} µs/request  "
            f"write transactions/event {(x1 - x0 - 1) / max(size, 1):.3f} "
            f"({x1 - x0 - 1} for {size} events)  load {os.getloadavg()[0]:.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--subjects", type=int, default=0, help="rids drawn from N (0: fresh)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.pg_scim_single needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-pgscim-"))
    cluster = PgCluster({"shared_buffers": "128MB"}).init()
    try:
        cluster.start()
        print(
            f"machine: {os.cpu_count()} cores ({cpu_model()}), Python "
            f"{platform.python_version()}; wrk -t2 -c{args.connections} -d{args.duration}s"
        )
        for i in range(args.rounds):
            got = one_round(cluster, tmp, args.duration, args.connections, args.subjects)
            print(f"round {i + 1}: {got}")
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
