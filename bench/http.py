"""HTTP throughput of a real ``tlog serve`` vs a hello-world Starlette app, same uvicorn settings.

    .venv/bin/python -m bench.http [--duration 10] [--connections 64] [--prefill 100000]
                                   [--database postgresql://...]

Needs ``wrk`` (Debian package ``wrk``; ``apt-get install -y wrk``). Both servers run as one
uvicorn process with the defaults ``tlog serve`` uses (uvloop, httptools, no access log, no
server header) on 127.0.0.1, loaded by the same wrk command line in the same run.

Scenarios:
* POST /v1/entries, unique single entries, 64 connections: each answer waits for its durable
  commit and carries checkpoint, inclusion proof and tlog-proof, vs POST / (echo) on hello;
* GET /v1/proof/inclusion at random indices, GET /tile/0/<random full tile>,
  vs GET / on hello;
* POST /v1/entries/batch, 10,000 entries per request, 4 client threads: entries/s durable.
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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.tlogserve import start_serve
from harness.net import free_port, stop_processes, wait_http
from harness.tlog import ROOT

POST_LUA = """
local id = 0
local n = 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) math.randomseed(os.time() * 1000 + tid) end
request = function()
  n = n + 1
  local body = string.format("bench-%d-%d-%d-%d", tid, os.time(), math.random(1, 1000000000), n)
  return wrk.format("POST", "%PATH%", {["Authorization"] = "Bearer %TOKEN%"}, body)
end
"""

GET_LUA = """
local id = 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) math.randomseed(os.time() * 1000 + tid) end
request = function()
  return wrk.format("GET", string.format("%FMT%", math.random(0, %MAX%)))
end
"""


def parse_wrk(out: str) -> dict[str, float]:
    """wrk's report (``--latency``): requests/s, p50 and p99 in ms, non-2xx answers, requests
    and socket errors (those also said on stderr)."""

    def ms(v: str, unit: str) -> float:
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    res = {"rps": float(m.group(1))}
    for pct in ("50", "99"):
        mm = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if mm:
            res[f"p{pct}_ms"] = ms(mm.group(1), mm.group(2))
    mm = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = float(mm.group(1)) if mm else 0.0
    mm = re.search(r"(\d+) requests in", out)
    res["requests"] = float(mm.group(1)) if mm else 0.0
    mm = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = (
        0.0 if mm is None else float(sum(int(x) for x in re.findall(r"\d+", mm.group(1))))
    )
    if mm is not None:
        print(f"  wrk socket errors: {mm.group(1)}", file=sys.stderr)
    return res


def wrk(url: str, script: str, duration: int, connections: int) -> dict[str, float]:
    """wrk with the Lua ``script`` against ``url`` (2 threads, or 1 for one connection)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [
                *("wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s"),
                *("--latency", "-s", f.name, url),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return parse_wrk(out)


def batch_load(
    url: str, token: str, seconds: float, threads: int = 4, per_request: int = 10_000
) -> float:
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(t: int) -> None:
        n = 0
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as c:
            while time.monotonic() < stop:
                body = b"".join(
                    len(e).to_bytes(2, "big") + e
                    for e in (
                        b"batch-%d-%d-%012d-" % (os.getpid(), t, n + i) + b"x" * 36
                        for i in range(per_request)
                    )
                )
                n += per_request
                r = c.post("/v1/entries/batch", content=body)
                if r.status_code == 200:
                    with lock:
                        done[0] += per_request

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0] / (time.monotonic() - t0)


@contextlib.contextmanager
def log_and_hello(
    tmp: Path, pids: list[int] | None = None, database: str | None = None
) -> Iterator[tuple[str, str]]:
    """Start `tlog serve` (data in `tmp/data`; ``database``: a PostgreSQL URL, else LMDB) and
    the hello-world reference app on free loopback ports, wait until both answer and yield
    their base URLs; then stop both and remove `tmp`. Every wrk benchmark that compares the
    log with hello-world uses it. ``pids``: gets the process ids of the log and of
    hello-world, in that order."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = start_serve(tmp / "data", database=database)
        procs.append(log.proc)
        hport = free_port()
        hello_p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.hello:app",
                "--port",
                str(hport),
                "--no-access-log",
                "--no-server-header",
                *("--host", "127.0.0.1", "--log-level", "warning"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(hello_p)
        if pids is not None:
            pids += [log.pid, hello_p.pid]
        hurl = f"http://127.0.0.1:{hport}"
        wait_http(hurl + "/", hello_p)
        yield log.url, hurl
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=100_000)
    ap.add_argument("--database", help="serve from this postgresql:// URL (default: LMDB)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.http needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-http-", dir="."))
    with log_and_hello(tmp, database=args.database) as (turl, hurl):
        token = (tmp / "data" / "demo-submitter.token").read_text().strip()
        # Prefill so that proofs and tiles come from a realistic tree.
        with httpx.Client(
            base_url=turl, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as c:
            for i in range(0, args.prefill, 10_000):
                body = b"".join(
                    len(e).to_bytes(2, "big") + e
                    for e in (b"prefill-%012d" % j for j in range(i, i + 10_000))
                )
                c.post("/v1/entries/batch", content=body).raise_for_status()
        d, cn = args.duration, args.connections
        results: dict[str, dict[str, float]] = {}
        results["hello POST /"] = wrk(
            hurl + "/", POST_LUA.replace("%PATH%", "/").replace("%TOKEN%", "x"), d, cn
        )
        results["tlog POST /v1/entries"] = wrk(
            turl, POST_LUA.replace("%PATH%", "/v1/entries").replace("%TOKEN%", token), d, cn
        )
        results["hello GET /"] = wrk(
            hurl + "/", GET_LUA.replace("%FMT%", "/").replace("%MAX%", "1"), d, cn
        )
        results["tlog GET inclusion proof"] = wrk(
            turl,
            GET_LUA.replace("%FMT%", "/v1/proof/inclusion?index=%d").replace(
                "%MAX%", str(args.prefill - 1)
            ),
            d,
            cn,
        )
        results["tlog GET tile/0/N"] = wrk(
            turl,
            GET_LUA.replace("%FMT%", "/tile/0/%03d").replace(
                "%MAX%", str(min(999, args.prefill // 256 - 1))
            ),
            d,
            cn,
        )
        batch_eps = batch_load(turl, token, d)

    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; wrk -t2 -c{args.connections} -d{args.duration}s; "
        f"tree prefilled with {args.prefill} entries"
    )
    for name, r in results.items():
        print(
            f"{name:28} {r['rps']:10,.0f} req/s  p50 {r.get('p50_ms', 0):7.2f} ms  "
            f"p99 {r.get('p99_ms', 0):7.2f} ms  non-2xx {r['non2xx']:.0f}"
        )
    hp, hg = results["hello POST /"]["rps"], results["hello GET /"]["rps"]
    post = results["tlog POST /v1/entries"]
    print(
        f"POST /v1/entries vs hello POST: {post['rps'] / hp:5.1%} (target >= 30%), "
        f"p99 {post.get('p99_ms', 0):.1f} ms (target < 50 ms)"
    )
    print(f"POST /v1/entries vs hello GET:  {post['rps'] / hg:5.1%}")
    for k in ("tlog GET inclusion proof", "tlog GET tile/0/N"):
        print(f"{k} vs hello GET: {results[k]['rps'] / hg:5.1%} (target >= 50%)")
    print(
        f"POST /v1/entries/batch (10,000 per request, 4 clients): {batch_eps:,.0f} entries/s "
        f"durable (target 50,000)"
    )


if __name__ == "__main__":
    main()
