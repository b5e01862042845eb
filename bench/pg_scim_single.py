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

Reported per round: requests/s, p50/p99, the servers' CPU per request (user + system time
of their processes over the requests answered), PostgreSQL's (the postmaster and its
children), and the write transactions per event (xids the database handed out during the
run, over the events logged: a group of ``k`` events costs ``1/k`` when its records and
leaves are one transaction, ``2/k`` when they were two; a batch refused by the SCIM writer
fence, or a fence claim, takes one too). Per frontend: requests/s, CPU per request (user /
system), batches committed and requests per batch, fence claims, context switches per
request. ``--profile DIR``: ``py-spy record`` of each frontend during the load (``--gil``
and ``--idle``, raw collapsed stacks, sampled without pausing the server).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import subprocess
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


def rollbacks(cluster: PgCluster) -> int:
    """Transactions rolled back in the database so far (a batch refused by the SCIM writer
    fence or a lost compare-and-swap is one)."""
    rows = cluster.query("SELECT xact_rollback FROM pg_stat_database WHERE datname = 'postgres'")
    return int(rows[0][0])


def counters(url: str) -> tuple[float, float]:
    """This frontend's SCIM writer fence claims (all reasons) and committed batches."""
    text = httpx.get(url + "/metrics").text
    found = re.findall(r"^tlog_scim_writer_fence_claims_total\{[^}]*\} (\S+)$", text, re.M)
    batches = re.findall(r"^tlog_batch_entries_count (\S+)$", text, re.M)
    return sum(float(v) for v in found), sum(float(v) for v in batches)


def proc_times(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds of process ``pid`` (all its threads) and its context
    switches (voluntary + involuntary, all threads) so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        switches += sum(int(v) for v in re.findall(r"^\w*ctxt_switches:\s+(\d+)$", status, re.M))
    return int(fields[11]) / tick, int(fields[12]) / tick, switches


def cluster_cpu(cluster: PgCluster) -> float:
    """User + system CPU seconds of the cluster's postmaster and its children alive now
    (the benches' sessions live for the whole run; the checkpointer and WAL writer too)."""
    pm = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(pm)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pm:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextlib.contextmanager
def profiled(servers: list[Serve], out: Path | None, duration: int) -> Iterator[None]:
    """``py-spy record --idle --gil`` (and a wall-clock one, ``--idle`` only) of each
    frontend for the run, as speedscope files in ``out`` (None: no profile)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs: list[subprocess.Popen[bytes]] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for k, s in enumerate(servers):
            for kind, flags in (("gil", ["--gil"]), ("wall", ["--idle"])):
                argv = [spy, "record", "-p", str(s.pid), "-d", str(duration), "-r", "200"]
                argv += ["--nonblocking"]  # sampled without pausing the server
                argv += [*flags, "-f", "raw", "-o", str(out / f"frontend{k}-{kind}.txt")]
                procs.append(
                    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
    try:
        yield
    finally:
        for p in procs:
            try:
                p.wait(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


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
    profile: Path | None = None,
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
        r0 = rollbacks(cluster)
        k0 = [counters(s.url) for s in servers]
        c0 = [cpu_seconds(s.pid) for s in servers]
        t0 = [proc_times(s.pid) for s in servers]
        pg0 = cluster_cpu(cluster)
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
        with profiled(servers, profile, duration), ThreadPoolExecutor(len(servers)) as pool:
            results = list(
                pool.map(lambda k: wrk(servers[k].url, scripts[k], duration, each), range(count))
            )
        cpus = [cpu_seconds(s.pid) - c for s, c in zip(servers, c0, strict=True)]
        times = [
            tuple(b - a for a, b in zip(t, proc_times(s.pid), strict=True))
            for s, t in zip(servers, t0, strict=True)
        ]
        cpu = sum(cpus)
        pg_cpu = cluster_cpu(cluster) - pg0
        k1 = [counters(s.url) for s in servers]
        claims = [int(b[0] - a[0]) for a, b in zip(k0, k1, strict=True)]
        batches = [int(b[1] - a[1]) for a, b in zip(k0, k1, strict=True)]
        x1 = write_xids(cluster)
        rolled = rollbacks(cluster) - r0
        size = int(httpx.get(servers[0].url + "/checkpoint").text.splitlines()[1])
        rps = sum(r["rps"] for r in results)
        answered = max(rps * duration, 1)
        line = (
            f"{rps:6,.0f} req/s  p50 {max(r.get('p50_ms', 0) for r in results):6.1f} ms  "
            f"p99 {max(r.get('p99_ms', 0) for r in results):6.1f} ms  "
            f"non-2xx {sum(r['non2xx'] for r in results):.0f}  "
            f"server CPU {1e6 * cpu / answered:5.0f} µs/request  "
            f"PostgreSQL CPU {1e6 * pg_cpu / answered:5.0f} µs/request  "
            f"write transactions/event {(x1 - x0 - 1) / max(size, 1):.3f} "
            f"({x1 - x0 - 1} for {size} events), {rolled} rolled back  "
            f"load {os.getloadavg()[0]:.1f}"
        )
        line += "\n  per frontend: " + "; ".join(
            f"{r['rps']:,.0f} req/s, {1e6 * c / max(r['rps'] * duration, 1):,.0f} µs CPU/request, "
            f"{b} batches ({r['rps'] * duration / max(b, 1):.1f} requests/batch), "
            f"{n} fence claims, user/system {1e6 * t[0] / max(r['rps'] * duration, 1):,.0f}/"
            f"{1e6 * t[1] / max(r['rps'] * duration, 1):,.0f} µs/request, "
            f"{t[2] / max(r['rps'] * duration, 1):.1f} context switches/request"
            for r, c, b, n, t in zip(results, cpus, batches, claims, times, strict=True)
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
    ap.add_argument("--profile", type=Path, help="py-spy profiles of each frontend to DIR")
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
                args.profile / f"round{i + 1}" if args.profile else None,
            )
            print(f"round {i + 1}: {got}")
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
