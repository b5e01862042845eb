"""SCIM writes through ``tlog scim-proxy`` vs scim2-server alone, and the log's batch path.

    .venv/bin/python -m bench.scim_proxy [--duration 10] [--connections 16] [--prefill 300]
        [--proxy-root DIR]   # run the proxy of another checkout (a "before" worktree)
        [--skip-batch]       # only the direct and proxied runs, not the log's batch path
        [--profile FILE [--profile-mode gil|threads|native]]   # py-spy on the proxy
        [--strace FILE]      # strace on the proxy: its system calls a write, by thread

Needs ``wrk`` (``apt-get install -y wrk``), the scim2 packages and waitress (the ``dev``
extra). Everything runs on 127.0.0.1 in the same run, on the same machine:

* **direct**: scim2-server's application under waitress (:mod:`bench.scim_sp`: HTTP/1.1
  keep-alive, 8 worker threads; ``--sp wsgiref`` uses the ``scim2-server`` command's own
  wsgiref server instead, which closes every connection, for both runs);
* **proxy**: an identical, fresh ``scim2-server`` behind ``tlog scim-proxy`` (fail-closed:
  each answer waits for its event to be fsynced in the outbox), which relays the events to a
  real ``tlog serve`` (SCIM service on: every event encrypted, committed, sequenced);
* the load: the same wrk script for both, half ``POST /Users`` (unique userName), half
  ``PATCH /Users/<id>`` (replace displayName) on users created beforehand. Every request
  is a SCIM write, i.e. one audit event through the proxy, so events/s = requests/s;
* the CPU each process used per write (``/proc``), and the proxy's split by thread: its
  event loop, and the others (outbox writer, relay, workers), user and system time; each
  thread's context switches a write (voluntary: it waited; involuntary: it was preempted);
* with ``--strace FILE``: the proxy's system calls a write by thread and call (a separate
  run: strace stops the proxy at every call, so that run's other figures do not count);
* after the proxy run, the time for the relay to drain the outbox into the log;
* **batch path**: ``POST /v1/scim/events/batch`` with 1000-event batches (realistic create
  events) from 2 client threads: events/s durably committed, encrypted, in the tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from bench.http import wrk as run_wrk
from bench.tlogserve import start_serve
from client.adapters.middleware import event_json
from client.scim.actions import parse_request
from client.scim.event import new_event
from harness.net import free_port, stop_processes, wait_http
from harness.tlog import ROOT, log_vkey, tlog_argv, tlog_cli, tlog_env

SCIM_TOKEN = "bench-scim-token"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"

WRITE_LUA = """
local ids = {%IDS%}
local id = 0
local n = 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) math.randomseed(os.time() * 1000 + tid) end
local headers = {["Authorization"] = "Bearer %TOKEN%",
                 ["Content-Type"] = "application/scim+json"}
request = function()
  n = n + 1
  if n % 2 == 0 then
    local body = string.format(
      '{"schemas":["%USER%"],"userName":"bench-%d-%d-%d-%d","displayName":"Bench User"}',
      tid, os.time(), math.random(1, 1000000000), n)
    return wrk.format("POST", "%BASE%/Users", headers, body)
  end
  local uid = ids[math.random(1, #ids)]
  local body = string.format(
    '{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],' ..
    '"Operations":[{"op":"replace","path":"displayName","value":"d-%d-%d"}]}', tid, n)
  return wrk.format("PATCH", "%BASE%/Users/" .. uid, headers, body)
end
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def wrk(base: str, ids: list[str], duration: int, connections: int) -> dict[str, float]:
    script = (
        WRITE_LUA.replace("%IDS%", ",".join(json.dumps(i) for i in ids))
        .replace("%TOKEN%", SCIM_TOKEN)
        .replace("%USER%", USER)
        .replace("%BASE%", httpx.URL(base).path.rstrip("/"))
    )
    return run_wrk(base, script, duration, connections)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(f[11]) / tick, int(f[12]) / tick)
    return out


def thread_switches(pid: int) -> dict[int, tuple[int, int]]:
    """(voluntary, involuntary) context switches of each thread of ``pid`` so far: each is
    the thread put off its CPU (waiting, or preempted), with the caches it then finds cold."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        v = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M)
        nv = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M)
        if v and nv:
            out[int(tid)] = (int(v.group(1)), int(nv.group(1)))
    return out


def named_switches(
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    names: dict[int, str],
    n: float,
) -> str:
    """Context switches a write of each thread by name, voluntary + involuntary."""
    by = _per_name(before, after, names)
    by["event loop"] = by.pop("MainThread", [0.0, 0.0])
    return ", ".join(
        f"{k} {v / n:.2f} + {nv / n:.2f}"
        for k, (v, nv) in sorted(by.items(), key=lambda kv: -sum(kv[1]))
        if v + nv > 0
    )


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name of ``pid`` (``py-spy dump``, if installed; else
    empty): the proxy's threads are the event loop (MainThread), ``outbox-writer``,
    ``scim-relay`` and asyncio's workers."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        out = subprocess.run(
            [str(spy), "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M):
        names[int(m.group(1))] = m.group(2)
    return names


def _per_name(
    before: Mapping[int, tuple[float, float]],
    after: Mapping[int, tuple[float, float]],
    names: dict[int, str],
) -> dict[str, list[float]]:
    """The two counters' growth from ``before`` to ``after`` summed by thread name (threads
    no longer running, or unnamed, as "other")."""
    by: dict[str, list[float]] = {}
    for tid, (a, b) in after.items():
        a0, b0 = before.get(tid, (0.0, 0.0))
        acc = by.setdefault(names.get(tid, "other"), [0.0, 0.0])
        acc[0] += a - a0
        acc[1] += b - b0
    return by


def named_split(
    before: dict[int, tuple[float, float]],
    after: dict[int, tuple[float, float]],
    names: dict[int, str],
    n: float,
) -> str:
    """The proxy's CPU ms per write (user + sys) of each thread other than the event loop,
    by name (threads no longer running, or unnamed, summed as "other")."""
    by = _per_name(before, after, names)
    by.pop("MainThread", None)
    return ", ".join(
        f"{k} {1000 * u / n:.3f} + {1000 * s / n:.3f}"
        for k, (u, s) in sorted(by.items(), key=lambda kv: -sum(kv[1]))
        if u + s > 0
    )


def syscalls_per_write(path: Path, writes: float, names: dict[int, str]) -> list[str]:
    """The proxy's system calls a write, by thread (its Python name where known) and call,
    from the trace ``strace -f -o path`` wrote (one line a call: ``<tid> <call>(...``; a
    call split by another thread's is counted at its start, not at ``<... resumed>``)."""
    calls: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"(\d+) +([a-z_0-9]+)\(", line)
        if m is None:
            continue
        name = names.get(int(m.group(1)), "other")
        by = calls.setdefault("event loop" if name == "MainThread" else name, {})
        by[m.group(2)] = by.get(m.group(2), 0) + 1
    out = []
    for thread, by in sorted(calls.items(), key=lambda kv: -sum(kv[1].values())):
        top = sorted(by.items(), key=lambda kv: -kv[1])
        out.append(
            f"  system calls a write, {thread}: {sum(by.values()) / writes:.1f} ("
            + ", ".join(f"{k} {v / writes:.2f}" for k, v in top if v / writes >= 0.01)
            + ")"
        )
    return out


def cpu_during(
    procs: dict[str, subprocess.Popen[bytes]], fn: Callable[[], dict[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Run ``fn`` (a wrk run); return its result and the CPU seconds each process used."""
    before = {n: cpu_seconds(p.pid) for n, p in procs.items()}
    res = fn()
    used = {}
    for n, p in procs.items():
        a, b = before[n], cpu_seconds(p.pid)
        if a is not None and b is not None:
            used[n] = b - a
    return res, used


def start_scim2_server(sp: str) -> tuple[subprocess.Popen[bytes], str]:
    """scim2-server's application on a free port: under waitress (``bench.scim_sp``, HTTP/1.1
    keep-alive) or under the ``scim2-server`` command's own wsgiref server (``sp="wsgiref"``,
    a new connection per request)."""
    port = free_port()
    if sp == "wsgiref":
        exe = Path(sys.executable).with_name("scim2-server")
        cmd = [str(exe), "--hostname", "127.0.0.1", "--reverse-proxy"]
        cmd += ["--port", str(port), "--bearer-token", SCIM_TOKEN]
    else:
        cmd = [sys.executable, "-m", "bench.scim_sp", "--port", str(port)]
        cmd += ["--bearer-token", SCIM_TOKEN]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v2"
    wait_http(base + "/ServiceProviderConfig", p)
    return p, base


def prefill(base: str, n: int) -> list[str]:
    ids = []
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {SCIM_TOKEN}"}, timeout=30
    ) as c:
        for i in range(n):
            r = c.post("/Users", json={"schemas": [USER], "userName": f"prefill-{i}"})
            r.raise_for_status()
            ids.append(r.json()["id"])
    return ids


def outbox_counts(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = dict(conn.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall())
    finally:
        conn.close()
    return int(rows.get(0, 0)), int(rows.get(1, 0))


def sample_events(n: int, tag: str) -> list[str]:
    out = []
    for i in range(n):
        uid = f"{tag}-{i:08x}"
        body = {
            "schemas": [USER],
            "userName": f"{uid}@example.com",
            "displayName": "Bench",
            "emails": [{"value": f"{uid}@example.com", "primary": True}],
            "active": True,
        }
        raw = json.dumps(body).encode()
        intent = parse_request("create", "User", raw)
        ev = new_event(
            tenant="bench-batch",
            sp="bench-sp",
            op="create",
            rt="User",
            rid=uid,
            actor={"kind": "bearer", "tok_d": b"\x01" * 32},
            corr=f"req-{uid}",
            req={"m": "POST", "p": "/Users", "dig": b"\x02" * 32, "len": len(raw)},
            res={"st": 201, "etag": 'W/"1"'},
            outcome="success",
            **intent.event_fields(),
        )
        out.append(event_json(ev))
    return out


def post_batches(
    url: str, token: str, path: str, count: str, bodies: list[list[bytes]], seconds: float
) -> tuple[float, int]:
    """POST each thread's pre-built JSON bodies to ``path`` until ``seconds`` pass or the
    bodies run out; returns (items/s, items), counting ``len(answer[count])`` per 200."""
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(t: int) -> None:
        k = 0
        with httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=120,
        ) as c:
            while time.monotonic() < stop and k < len(bodies[t]):
                r = c.post(path, content=bodies[t][k])
                k += 1
                if r.status_code == 200:
                    with lock:
                        done[0] += len(r.json()[count])
                else:
                    print(f"{path} answered {r.status_code}: {r.text[:200]}", file=sys.stderr)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0] / (time.monotonic() - t0), done[0]


def batch_load(url: str, token: str, seconds: float, threads: int = 2) -> tuple[float, int]:
    """Events/s through POST /v1/scim/events/batch, 1000 events per request."""
    bodies: list[list[bytes]] = []
    for t in range(threads):  # built before the clock starts: we measure the log
        bodies.append(
            [
                ('{"events":[' + ",".join(sample_events(1000, f"b{t}-{k}")) + "]}").encode()
                for k in range(max(2, int(seconds)))
            ]
        )
    return post_batches(url, token, "/v1/scim/events/batch", "results", bodies, seconds)


def raw_batch_load(url: str, token: str, seconds: float, threads: int = 2) -> tuple[float, int]:
    """Entries/s through the raw POST /v1/entries/batch (1000 entries of a SCIM leaf's
    size per request, same threads): the reference for the SCIM batch path."""
    import base64

    bodies = [
        [
            json.dumps(
                {"entries": [base64.b64encode(b"r" + os.urandom(72)).decode() for _ in range(1000)]}
            ).encode()
            for _ in range(max(2, int(seconds) * 4))
        ]
        for _ in range(threads)
    ]
    return post_batches(url, token, "/v1/entries/batch", "indices", bodies, seconds)


def durable_env(args: argparse.Namespace) -> dict[str, str]:
    """The proxy's environment for ``--durable-intents`` (nothing without it)."""
    return {"TLOG_PROXY_DURABLE_INTENTS": "true"} if args.durable_intents else {}


def tlog_token(data: Path, tenant: str, database: str | None = None) -> str:
    """A new submitter token for ``tenant`` of the log in ``data`` (and ``database``)."""
    store = [] if database is None else ["--database", database]
    r = tlog_cli(
        "token", "create", "--role", "submitter", "--tenant", tenant, "--data", str(data), *store
    )
    if r.returncode != 0:
        raise RuntimeError(f"tlog token create: {r.stderr}")
    return r.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--prefill", type=int, default=300)
    ap.add_argument(
        "--receipt-timeout",
        type=float,
        default=0.0,
        help="proxy --receipt-timeout (0: answer once the event is in the outbox)",
    )
    ap.add_argument(
        "--upstream-connections",
        type=int,
        default=64,
        help="proxy --upstream-connections (default 64, the proxy's default)",
    )
    ap.add_argument(
        "--sp",
        choices=("waitress", "wsgiref"),
        default="waitress",
        help="the SCIM SP's HTTP server, the same for the direct and the proxied run: waitress "
        "(keep-alive, bench.scim_sp; default) or the scim2-server command's wsgiref",
    )
    ap.add_argument(
        "--proxy-root",
        type=Path,
        default=ROOT,
        help="run the proxy of another checkout (its .venv), e.g. a 'before' worktree; "
        "everything else (SPs, log, load) from this one",
    )
    ap.add_argument(
        "--durable-intents",
        action="store_true",
        help="run the proxy with durable write-ahead intents (TLOG_PROXY_DURABLE_INTENTS)",
    )
    ap.add_argument(
        "--skip-batch",
        action="store_true",
        help="skip the log's batch-path measurements after the proxy run",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="write py-spy's collapsed stacks (--gil) of the proxy during its run to this file",
    )
    ap.add_argument(
        "--profile-mode",
        choices=("gil", "threads", "native"),
        default="gil",
        help="py-spy's mode for --profile: the thread holding the GIL (default), every "
        "running thread by name (threads), or that with native frames (native; py-spy then "
        "pauses the proxy to sample it, which slows it)",
    )
    ap.add_argument(
        "--strace",
        type=Path,
        help="trace the proxy's system calls during its run (strace -f, every thread) into "
        "this file and print their counts a write by thread and call (strace slows the "
        "proxy several times: that run's throughput and CPU figures are not comparable)",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.scim_proxy needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-scim-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = start_serve(tmp / "log")
        procs.append(log.proc)
        log_p, log_url = log.proc, log.url
        proxy_token = tlog_token(tmp / "log", "bench-proxy")
        batch_token = tlog_token(tmp / "log", "bench-batch")
        (tmp / "proxy.token").write_text(proxy_token)

        direct_p, direct_base = start_scim2_server(args.sp)
        procs.append(direct_p)
        up_p, upstream = start_scim2_server(args.sp)
        procs.append(up_p)
        pport = free_port()
        outbox = tmp / "proxy-outbox.sqlite"
        proxy_root = args.proxy_root.resolve()
        proxy_py = proxy_root / ".venv" / "bin" / "python"
        proxy_p = subprocess.Popen(
            [
                str(proxy_py) if proxy_root != ROOT else sys.executable,
                *tlog_argv(
                    "scim-proxy",
                    "--upstream",
                    upstream,
                    "--log",
                    log_url,
                    "--token-file",
                    str(tmp / "proxy.token"),
                    "--tenant",
                    "bench-proxy",
                    "--sp-id",
                    "bench-sp",
                    "--listen",
                    f"127.0.0.1:{pport}",
                    "--outbox",
                    str(outbox),
                    "--receipt-timeout",
                    str(args.receipt_timeout),
                    "--upstream-connections",
                    str(args.upstream_connections),
                    "--log-level",
                    "warning",
                )[1:],
            ],
            cwd=proxy_root,
            # The key by environment: a checkout from before --log-key ignores it.
            env={**tlog_env(), "TLOG_PROXY_LOG_KEY": log_vkey(log_url), **durable_env(args)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proxy_p)
        proxy_base = f"http://127.0.0.1:{pport}/v2"
        wait_http(proxy_base + "/ServiceProviderConfig", proxy_p)

        direct_ids = prefill(direct_base, args.prefill)
        proxy_ids = prefill(upstream, args.prefill)
        d, cn = args.duration, args.connections
        direct, direct_cpu = cpu_during(
            {"scim2-server": direct_p}, lambda: wrk(direct_base, direct_ids, d, cn)
        )
        spy = None
        if args.profile is not None:  # py-spy on the proxy during its run (collapsed stacks)
            spy = subprocess.Popen(
                [
                    *(str(Path(sys.executable).with_name("py-spy")), "record"),
                    *{
                        "gil": ["--gil", "--nonblocking"],
                        "threads": ["--threads", "--nonblocking"],
                        # py-spy reads native stacks only by pausing the process: the
                        # figures of a native-profiled run are not comparable.
                        "native": ["--threads", "--native"],
                    }[args.profile_mode],
                    *("--format", "raw", "-r", "200", "-o", str(args.profile)),
                    *("-d", str(d + 1), "-p", str(proxy_p.pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        tracer = None
        if args.strace is not None:
            tracer = subprocess.Popen(
                ["strace", "-f", "-qq", "-o", str(args.strace), "-p", str(proxy_p.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # attached to every thread before the load starts
        threads_before = thread_cpu(proxy_p.pid)
        switches_before = thread_switches(proxy_p.pid)
        proxied, proxy_cpu = cpu_during(
            {"scim2-server": up_p, "tlog scim-proxy": proxy_p, "tlog serve": log_p},
            lambda: wrk(proxy_base, proxy_ids, d, cn),
        )
        threads_after = thread_cpu(proxy_p.pid)
        switches_after = thread_switches(proxy_p.pid)
        if tracer is not None:  # detached before py-spy reads the thread names
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        names = thread_names(proxy_p.pid)
        if spy is not None:
            spy.wait(60)
        t0 = time.monotonic()
        pending, delivered = outbox_counts(outbox)
        backlog_at_end = pending
        while pending:
            time.sleep(0.1)
            pending, delivered = outbox_counts(outbox)
        drain = time.monotonic() - t0
        if not args.skip_batch:
            batch_eps, batch_n = batch_load(log_url, batch_token, d)
            raw_eps, raw_n = raw_batch_load(log_url, batch_token, d)
    finally:
        stop_processes(procs, 15)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}; everything on this host"
    )
    if proxy_root != ROOT:
        print(f"proxy: the checkout at {proxy_root}")
    print(f"SP: scim2-server's application under {args.sp}, direct and behind the proxy")
    print(
        f"load: wrk -t2 -c{args.connections} -d{args.duration}s, 50% POST /Users + 50% PATCH "
        f"/Users/<id> (of {args.prefill} users); proxy fail-closed, receipt-timeout "
        f"{args.receipt_timeout}s, upstream-connections {args.upstream_connections}"
    )
    for name, r in (("scim2-server direct", direct), ("through tlog scim-proxy", proxied)):
        print(
            f"{name:26} {r['rps']:8,.0f} writes/s (= events/s)  p50 {r.get('p50_ms', 0):6.2f} "
            f"ms  p99 {r.get('p99_ms', 0):7.2f} ms  non-2xx {r['non2xx']:.0f}  "
            f"socket errors {r['socket_errors']:.0f}"
        )
    for label, cpu, r in (("direct", direct_cpu, direct), ("proxied", proxy_cpu, proxied)):
        n = max(r["requests"], 1.0)
        parts = ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in cpu.items())
        print(f"  CPU ms per write, {label}: {parts}")
    n = max(proxied["requests"], 1.0)
    split = {}
    for part, tids in (
        ("event loop", [proxy_p.pid]),
        ("other threads", [t for t in threads_after if t != proxy_p.pid]),
    ):
        for k, name in ((0, "user"), (1, "sys")):
            split[f"{part} {name}"] = sum(
                threads_after[t][k] - threads_before.get(t, (0.0, 0.0))[k] for t in tids
            )
    print(
        "  proxy CPU ms per write by thread: "
        + ", ".join(f"{k} {1000 * v / n:.3f}" for k, v in split.items())
        + f" (load {os.getloadavg()[0]:.1f})"
    )
    if names:
        print(
            "  other threads by name, ms per write user + sys: "
            + named_split(threads_before, threads_after, names, n)
        )
        print(
            "  context switches a write by thread, voluntary + involuntary: "
            + named_switches(switches_before, switches_after, names, n)
        )
    if args.strace is not None:
        print("\n".join(syscalls_per_write(args.strace, n, names)))
    ratio = proxied["rps"] / direct["rps"] if direct["rps"] else 0.0
    p99 = proxied.get("p99_ms", 0) / direct["p99_ms"] if direct.get("p99_ms") else 0.0
    print(f"proxy / direct: throughput {ratio:.0%} (target >= 80%), p99 {p99:.2f}x (target <= 2x)")
    print(
        f"events in the log from the proxy: {delivered:,} (wrk counted {proxied['requests']:,.0f}"
        f" requests); backlog at the end of the run {backlog_at_end}, drained in {drain:.2f}s"
    )
    if args.skip_batch:
        return
    print(
        f"batch path, POST /v1/scim/events/batch x1000 events, 2 threads, encryption on: "
        f"{batch_eps:,.0f} events/s ({batch_n:,} events)"
    )
    print(
        f"raw path, POST /v1/entries/batch x1000 entries, 2 threads (reference): "
        f"{raw_eps:,.0f} entries/s ({raw_n:,}); SCIM batch / raw: "
        f"{batch_eps / raw_eps if raw_eps else 0:.2f}x (target >= 0.25x)"
    )


if __name__ == "__main__":
    main()
