"""Single SCIM events (``POST /v1/scim/events``) on the PostgreSQL backend.

    .venv/bin/python -m bench.pg_scim_single [--duration 8] [--connections 64] [--rounds 1]
        [--subjects N] [--frontends 2]

Needs ``wrk`` and PostgreSQL (``initdb``/``pg_ctl``, as the tests find them: harness/pg.py).
Starts a throwaway cluster on 127.0.0.1 (``fsync = on``, on disk), then ``tlog serve
--database <a fresh schema> --replication none`` with the serve defaults, and loads it as
``bench.scim_single`` does (wrk -t2, a fresh create event per request: each answer waits for
the event's records and leaf to be durable and in a signed, remembered checkpoint).
``--subjects N``: each event's rid is one of N (after the first few, events of known
subjects: their staging reads the subject's DEK and resource state), not a fresh one.
``--frontends 2``: a second ``tlog serve`` on the same database (the first's signing key
and SCIM master key file, as docs/operations.md's deployment shapes say), each loaded by
its own wrk with half the connections at once: SCIM writes on both frontends take turns
with the SCIM writer fence. Reported: the sum of both, the non-2xx answers (a staging that
lost the fence more than ``FENCE_RETRIES`` times is a 503), and the fence claims each
frontend made (``tlog_scim_writer_fence_claims_total``). ``--raw``: ``POST /v1/entries``
(one raw entry a request) instead of SCIM events, the reference without SCIM records.

Reported per round: requests/s, p50/p99, the server's CPU per request (user + system time
of its process over the requests answered) and the write transactions per event (xids the
database handed out during the run, over the events logged: a group of ``k`` events costs
``1/k`` when its records and leaves are one transaction, ``2/k`` when they were two).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.http import POST_LUA, wrk
from bench.scim_proxy import cpu_model, tlog_token
from bench.scim_single import SCIM_LUA, TENANT, cpu_seconds, template
from bench.tlogserve import Serve, serving
from harness.pg import PgCluster


def write_xids(cluster: PgCluster) -> int:
    """The next transaction id (itself one xid); after a second, for the stats to settle."""
    time.sleep(1.0)
    return int(str(cluster.query("SELECT pg_current_xact_id()")[0][0]))


def fence_claims(url: str) -> int:
    """The SCIM writer fence claims this frontend has made (all reasons)."""
    text = httpx.get(url + "/metrics").text
    found = re.findall(r"^tlog_scim_writer_fence_claims_total\{[^}]*\} (\S+)$", text, re.M)
    return int(sum(float(v) for v in found))


@contextlib.contextmanager
def frontends(data: Path, url: str, count: int) -> Iterator[list[Serve]]:
    """``count`` ``tlog serve`` processes on database ``url``: the first makes the keys, the
    others take its signing key and SCIM master key file."""
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(serving(data, database=url))
        servers = [first]
        for i in range(1, count):
            other = data.with_name(f"{data.name}-{i}")
            other.mkdir(mode=0o700)
            shutil.copy2(data / "log.key", other / "log.key")
            key = ("--scim-master-key", str(data / "scim-master.key"))
            servers.append(stack.enter_context(serving(other, *key, database=url)))
        yield servers


def one_round(
    cluster: PgCluster,
    tmp: Path,
    duration: int,
    connections: int,
    subjects: int = 0,
    count: int = 1,
    raw: bool = False,
) -> str:
    url = cluster.new_schema()
    data = tmp / f"data-{time.monotonic_ns()}"
    with frontends(data, url, count) as servers:
        token = tlog_token(data, TENANT, url)
        if raw:
            script = POST_LUA.replace("%PATH%", "/v1/entries").replace("%TOKEN%", token)
        else:
            script = SCIM_LUA.replace("%BODY%", template()).replace("%TOKEN%", token)
        if subjects:
            fresh = 'string.format("u-%d-%d-%d", tid, n, r(1, 1000000000))'
            if fresh not in script:
                raise RuntimeError("bench.scim_single's SCIM_LUA changed: update --subjects")
            script = script.replace(fresh, f'string.format("u-%d", r(1, {subjects}))')
        x0 = write_xids(cluster)
        f0 = [fence_claims(s.url) for s in servers]
        c0 = [cpu_seconds(s.pid) for s in servers]
        seed = "math.randomseed(os.time() * 1000 + tid)"
        if seed not in script:
            raise RuntimeError("the wrk script's seed changed: update the seeds here")
        # Each wrk its own random sequence (eids, rids): started in the same second, they
        # would otherwise send the same events to every frontend.
        scripts = [
            script.replace(seed, f"math.randomseed(os.time() * 1000 + tid + {k * 7919})")
            for k in range(count)
        ]
        each = max(1, connections // len(servers))
        with ThreadPoolExecutor(len(servers)) as pool:
            results = list(
                pool.map(lambda k: wrk(servers[k].url, scripts[k], duration, each), range(count))
            )
        cpu = sum(cpu_seconds(s.pid) for s in servers) - sum(c0)
        claims = [fence_claims(s.url) - f for s, f in zip(servers, f0, strict=True)]
        x1 = write_xids(cluster)
        size = int(httpx.get(servers[0].url + "/checkpoint").text.splitlines()[1])
        rps = sum(r["rps"] for r in results)
        answered = max(rps * duration, 1)
        line = (
            f"{rps:6,.0f} req/s  p50 {max(r.get('p50_ms', 0) for r in results):6.1f} ms  "
            f"p99 {max(r.get('p99_ms', 0) for r in results):6.1f} ms  "
            f"non-2xx {sum(r['non2xx'] for r in results):.0f}  "
            f"server CPU {1e6 * cpu / answered:5.0f} µs/request  "
            f"write transactions/event {(x1 - x0 - 1) / max(size, 1):.3f} "
            f"({x1 - x0 - 1} for {size} events)  load {os.getloadavg()[0]:.1f}"
        )
        if count > 1:
            line += "\n  per frontend: " + "; ".join(
                f"{r['rps']:,.0f} req/s, {c} fence claims"
                for r, c in zip(results, claims, strict=True)
            )
        return line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--subjects", type=int, default=0, help="rids drawn from N (0: fresh)")
    ap.add_argument("--frontends", type=int, default=1, help="tlog serve processes (1 or more)")
    ap.add_argument("--raw", action="store_true", help="POST /v1/entries instead (reference)")
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
            got = one_round(
                cluster,
                tmp,
                args.duration,
                args.connections,
                args.subjects,
                args.frontends,
                args.raw,
            )
            print(f"round {i + 1}: {got}")
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
