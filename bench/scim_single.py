"""Single SCIM events (``POST /v1/scim/events``) vs a hello-world POST, same uvicorn settings.

    .venv/bin/python -m bench.scim_single [--duration 10] [--connections 64]
                                          [--database postgresql://...]

Needs ``wrk`` (``apt-get install -y wrk``). Both servers run as one uvicorn process on
127.0.0.1 with ``tlog serve``'s defaults, loaded by wrk in the same run:

* **reference**: ``bench.hello`` ``POST /`` (reads the body, answers a small JSON);
* **SCIM**: ``tlog serve`` ``POST /v1/scim/events``, one realistic create event per
  request (JSON, a fresh eid and resource id each, so no request is a duplicate): each
  answer waits until the event is validated, encrypted under its subject's DEK, durably
  committed and in a signed checkpoint, and carries the receipt.

Reported: requests/s, p50/p99, each server's CPU per request (user + system time of its
process during its run, over the requests answered: unlike the rates, it hardly moves with
the machine's other load), and the ratio SCIM / hello (the target is >= 0.25).

``--in-process N [--map-size BYTES]``: no HTTP server and no wrk: ``tlog serve``'s ASGI
app built in this process (``tlog.server.build_app``, the serve defaults, uvloop, the heap
frozen after a warm-up as ``tlog serve`` freezes it once it listens), driven by 64 concurrent
callers with N events in all; reported: the process's CPU per event and the event loop's
share of it (the rest is the SCIM group writer, the sequencer's writer and publisher), the
CPU per event of each thread, user + system (``/proc/self/task``, sampled every 20 ms), the
events per durable commit, the bytes and write calls per event (``/proc/self/io``: LMDB's
page writes, the checkpoint file) and the context switches per event (``getrusage``). It
leaves out uvicorn and the sockets, which hello-world pays as well. ``--map-size`` replaces
the serve default's LMDB map size: under valgrind (which cannot reserve that much address
space) give it ``1073741824``; the instructions of two values of N differ by the events'.

``--staging R``: the SCIM group writer's staging alone (:func:`staging`): single events
staged as the writer stages them against the same events as batches, thread CPU per event;
with ``--mode``, one of them once, to count instructions under valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.http import log_and_hello, wrk
from bench.scim_proxy import cpu_model, sample_events, tlog_token

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench-single"

HELLO_LUA = """
request = function()
  return wrk.format("POST", "/", {["Content-Type"] = "application/json"}, '%BODY%')
end
"""

# A fresh lowercase UUIDv7-shaped eid and a fresh rid per request (LuaJIT: 24-bit pieces).
SCIM_LUA = """
local id = 0
local n = 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) math.randomseed(os.time() * 1000 + tid) end
local r = math.random
request = function()
  n = n + 1
  local eid = string.format("%08x-%04x-7%03x-%x%03x-%06x%06x", r(0, 0x7fffffff), r(0, 0xffff),
    r(0, 0xfff), r(8, 11), r(0, 0xfff), r(0, 0xffffff), r(0, 0xffffff))
  local rid = string.format("u-%d-%d-%d", tid, n, r(1, 1000000000))
  local body = string.gsub(string.gsub('%BODY%', "EID", eid), "RID", rid)
  return wrk.format("POST", "/v1/scim/events",
    {["Authorization"] = "Bearer %TOKEN%", ["Content-Type"] = "application/json"}, body)
end
"""


def template() -> str:
    """One create event as JSON with EID/RID placeholders, escaped for a Lua '...' string."""
    ev = json.loads(sample_events(1, "tmpl")[0])
    ev["eid"] = "EID"
    ev["rid"] = "RID"
    ev["tenant"] = TENANT
    text = json.dumps(ev, separators=(",", ":"))
    if "'" in text or "%" in text:
        raise RuntimeError("template would need more escaping for Lua")
    return text.replace("\\", "\\\\")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ThreadCpu:
    """CPU time by thread name over a run: every thread's user + system time
    (``/proc/self/task``), sampled every 20 ms so that the group writer threads that end
    and start again meanwhile are counted too (up to their last sample)."""

    def __init__(self) -> None:
        self._first: dict[int, tuple[float, float]] = {}
        self._last: dict[int, tuple[str, tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="bench-cpu", daemon=True)
        self._thread.start()

    def _sample(self, first: bool = False) -> None:
        for t in threading.enumerate():
            tid = t.native_id
            if tid is None or t.name == "bench-cpu":
                continue
            try:
                v = cpu_user_sys_task(tid)
            except OSError:
                continue
            if first:
                self._first[tid] = v
            self._last[tid] = (t.name, v)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self) -> dict[str, tuple[float, float]]:
        """CPU seconds (user, system) by thread name."""
        self._stop.set()
        self._thread.join()
        self._sample()
        out: dict[str, tuple[float, float]] = {}
        for tid, (name, (u, s)) in self._last.items():
            if name.startswith("tlog-read"):
                name = "tlog-read"
            u0, s0 = self._first.get(tid, (0.0, 0.0))
            pu, ps = out.get(name, (0.0, 0.0))
            out[name] = (pu + u - u0, ps + s - s0)
        return out


def cpu_user_sys_task(tid: int) -> tuple[float, float]:
    """User and system CPU time of this process's thread ``tid`` so far (Linux /proc)."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _io() -> tuple[int, int]:
    """Bytes this process passed to write calls so far, and the number of those calls."""
    f = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(f["wchar"]), int(f["syscw"])


def in_process(total: int, callers: int = 64, map_size: int = 0) -> None:
    """``--in-process``: the app alone (module docstring); ``map_size`` (``--map-size``),
    if not 0, replaces the serve default's LMDB map size (valgrind cannot reserve that
    much address space)."""
    import asyncio
    import gc
    import random
    import time

    import uvloop

    from client.formats.note import Ed25519Signer
    from tlog.config import ServeConfig
    from tlog.server import build_app
    from tlog.signer import CheckpointSigner

    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-scim1-"))
    origin = "bench.example/log"
    cfg = ServeConfig(data=tmp / "data", **({"map_size": map_size} if map_size else {}))
    sys.setswitchinterval(cfg.switch_interval_ms / 1000.0)  # as tlog serve sets it
    app, log_, tokens = build_app(cfg, CheckpointSigner(Ed25519Signer(origin, bytes(32)), origin))
    token, _ = tokens.create("submitter", tenant=TENANT, name="bench")
    body = template().replace("\\\\", "\\")
    head = [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")]
    statuses: dict[int, int] = {}

    async def caller(k: int, n: int) -> None:
        for i in range(n):
            h = f"{random.getrandbits(128):032x}"
            eid = f"{h[:8]}-{h[8:12]}-7{h[13:16]}-a{h[17:20]}-{h[20:]}"
            data = body.replace("EID", eid).replace("RID", f"u-{k}-{i}-{h[:8]}").encode()
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/v1/scim/events",
                "raw_path": b"/v1/scim/events",
                "query_string": b"",
                "headers": [*head, (b"content-length", str(len(data)).encode())],
                "http_version": "1.1",
                "scheme": "http",
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 2),
                "root_path": "",
            }
            sent: list[dict[str, object]] = []

            async def receive(data: bytes = data) -> dict[str, object]:
                return {"type": "http.request", "body": data, "more_body": False}

            async def send(m: dict[str, object], sent: list[dict[str, object]] = sent) -> None:
                sent.append(m)

            await app(scope, receive, send)
            status = int(sent[0]["status"])  # type: ignore[call-overload]
            statuses[status] = statuses.get(status, 0) + 1

    async def run() -> None:
        async with app.app.router.lifespan_context(app.app):
            await asyncio.gather(*(caller(k, 20) for k in range(callers)))  # warm-up
            gc.collect()  # as tlog serve does once it listens (run_hardened)
            gc.freeze()
            statuses.clear()
            per = max(total // callers, 1)
            seq = app.api.seq
            b0 = seq.batches
            io0 = _io()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            threads = _ThreadCpu()
            c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            await asyncio.gather(*(caller(k, per) for k in range(callers)))
            c1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
            by_name = threads.stop()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            io1 = _io()
            n = per * callers
            print(
                f"in process, {callers} callers, {n} events: CPU {1e6 * (c1 - c0) / n:.0f} "
                f"µs/event (event loop {1e6 * (t1 - t0) / n:.0f}), {n / (w1 - w0):,.0f} "
                f"events/s; answers {statuses}"
            )
            print(
                f"  {n / max(seq.batches - b0, 1):.1f} events a commit; written "
                f"{(io1[0] - io0[0]) / n / 1024:.1f} KiB in {(io1[1] - io0[1]) / n:.1f} "
                "write calls an event; context switches an event (all threads): "
                f"{(ru1.ru_nvcsw - ru0.ru_nvcsw) / n:.1f} voluntary, "
                f"{(ru1.ru_nivcsw - ru0.ru_nivcsw) / n:.1f} involuntary"
            )
            print(
                "  by thread, µs/event (user + system): "
                + ", ".join(
                    f"{k} {1e6 * (u + s) / n:.0f} ({1e6 * u / n:.0f} + {1e6 * s / n:.0f})"
                    for k, (u, s) in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
                    if 1e6 * (u + s) / n >= 1
                )
            )

    try:
        uvloop.run(run())
    finally:
        log_.storage.close()
        shutil.rmtree(tmp, ignore_errors=True)


GROUP = 20  # single events a group writer stages together under this bench's load


def staging(rounds: int, modes: list[str]) -> None:
    """``--staging R``: the group writer's staging alone, one thread, no commit: ``R`` groups
    of ``GROUP`` new-subject creates staged as the writer stages single events (one staging
    each, the group's memo shared) and the same number as batches of ``GROUP`` (one
    staging). Thread CPU per event, best of three; ``--mode single`` (or ``batch``) runs only
    that one once, for ``valgrind --tool=cachegrind``: its instruction count at two values
    of ``R`` gives instructions per event, which the machine's load does not move."""
    import gc
    import random
    import time

    from client.formats.note import Ed25519Signer
    from client.scim.fastjson import decode_event_json
    from tlog.config import ServeConfig
    from tlog.scim.store import Overlay
    from tlog.server import build_app
    from tlog.signer import CheckpointSigner

    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-stage-"))
    origin = "bench.example/log"
    # a small map: valgrind cannot reserve the serve default's address space
    cfg = ServeConfig(data=tmp / "data", map_size=1 << 30)
    app, log_, _ = build_app(cfg, CheckpointSigner(Ed25519Signer(origin, bytes(32)), origin))
    svc = app.state.scim
    body = template().replace("\\\\", "\\")

    def event(k: int) -> Any:
        h = f"{random.getrandbits(128):032x}"
        eid = f"{h[:8]}-{h[8:12]}-7{h[13:16]}-a{h[17:20]}-{h[20:]}"
        return decode_event_json(body.replace("EID", eid).replace("RID", f"u-{k}-{h[:8]}").encode())

    def run(mode: str, n: int, commit: bool = False) -> float:
        groups = [[event(r * GROUP + k) for k in range(GROUP)] for r in range(n)]
        t0 = time.thread_time()
        for group in groups:
            with svc.storage.read() as rv:
                tx = Overlay(rv, None)
                svc._group_memo, svc._group_tenants = {}, {}  # as _commit_group sets them
                if mode == "single":
                    for ev, enc in group:
                        tx.mark()
                        svc._stager(TENANT, [ev], [enc])(tx)
                else:
                    svc._stager(TENANT, [e for e, _ in group], [c for _, c in group])(tx)
                svc._group_memo = svc._group_tenants = None
                items = tx.items()
            if commit:
                svc.storage.put_aux(items)
        return 1e6 * (time.thread_time() - t0) / (n * GROUP)

    try:
        run("batch", 1, commit=True)  # the tenant's and the actor's keys, durable
        gc.collect()
        gc.freeze()  # as tlog serve does once it listens
        if len(modes) == 1:
            run(modes[0], rounds)
            return
        best = {m: min(run(m, rounds) for _ in range(3)) for m in modes}
        print(
            f"staging only, {GROUP} new-subject creates a group, {rounds} groups: "
            + ", ".join(f"{m} {v:.0f} µs/event" for m, v in best.items())
        )
    finally:
        log_.storage.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--in-process", type=int, default=0, metavar="N")
    ap.add_argument(
        "--map-size",
        type=int,
        default=0,
        help="--in-process: LMDB map size (for valgrind: 1073741824)",
    )
    ap.add_argument("--database", help="serve from this postgresql:// URL (default: LMDB)")
    ap.add_argument("--staging", type=int, default=0, metavar="R")
    ap.add_argument("--mode", choices=("single", "batch"))
    args = ap.parse_args()
    if args.staging:
        staging(args.staging, [args.mode] if args.mode else ["single", "batch"])
        return
    if args.in_process:
        in_process(args.in_process, map_size=args.map_size)
        return
    if shutil.which("wrk") is None:
        sys.exit("bench.scim_single needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-scim1-"))
    pids: list[int] = []
    with log_and_hello(tmp, pids, args.database) as (turl, hurl):
        token = tlog_token(tmp / "data", TENANT, args.database)
        body = template()
        d, cn = args.duration, args.connections
        c0 = cpu_seconds(pids[1])
        hello = wrk(hurl + "/", HELLO_LUA.replace("%BODY%", body), d, cn)
        hello["cpu_us"] = 1e6 * (cpu_seconds(pids[1]) - c0) / max(hello["rps"] * d, 1)
        c0 = cpu_seconds(pids[0])
        scim = wrk(turl, SCIM_LUA.replace("%BODY%", body).replace("%TOKEN%", token), d, cn)
        scim["cpu_us"] = 1e6 * (cpu_seconds(pids[0]) - c0) / max(scim["rps"] * d, 1)
    print(
        f"machine: {os.cpu_count()} cores ({cpu_model()}), Python "
        f"{platform.python_version()}; wrk -t2 -c{args.connections} -d{args.duration}s"
    )
    for name, r in (("hello POST / (reference)", hello), ("POST /v1/scim/events", scim)):
        print(
            f"{name:26} {r['rps']:9,.0f} req/s  p50 {r.get('p50_ms', 0):7.2f} ms  "
            f"p99 {r.get('p99_ms', 0):7.2f} ms  non-2xx {r['non2xx']:.0f}  "
            f"server CPU {r['cpu_us']:6.0f} µs/request"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"single SCIM events / hello: {scim['rps'] / hello['rps']:.2f}x (target >= 0.25x)")


if __name__ == "__main__":
    main()
