"""Where a SCIM batch spends its time, in process, per stage (thread CPU, so other load on
the machine does not count), against the raw log's append of the same number of leaves.

    .venv/bin/python -m bench.scim_batch [--batches 5] [--profile parse|stage]
    .venv/bin/python -m bench.scim_batch --http [--duration 10] [--threads]
                                         [--database postgresql://...]

Stages of one 1,000-event ``POST /v1/scim/events/batch`` body (realistic create events,
encryption on), each timed by ``time.thread_time`` over ``--batches`` fresh batches:

* **parse**: the route's body parsing and strict validation of every event, with its
  canonical encoding (``ScimRoutes._parse_batch``);
* **check**: what ``ScimService.submit`` does per event around the staging: the tenant and
  reserved-namespace checks (``check_events``) and the metrics callback (``on_logged``);
* **stage**: what the writer thread does under the SCIM lock: subject keys, effect, leaf,
  encryption, records (``ScimService._stager``), into an overlay;
* **commit**: the durable ``put_aux`` of the staged records (thread CPU; the fsync wait is
  not CPU);
* **append (reference)**: the raw log's ``Log.integrate`` of as many leaves of a SCIM leaf's
  size, what ``/v1/entries/batch`` does per batch.

Reported: µs per event for each stage, events/s for parse+check+stage+commit, and the ratio to
the reference's entries/s. ``--profile`` prints a cProfile of one stage (``SORT=cumtime``).

``--http``: the same over HTTP against a real ``tlog serve`` on 127.0.0.1, in one run:
``POST /v1/scim/events/batch`` (1,000 realistic create events a request, encryption on,
durable, in a signed checkpoint before the answer) from 2 client threads, then the raw
``POST /v1/entries/batch`` (1,000 entries of a SCIM leaf's size a request) as the
reference; reported as events/s, entries/s and their ratio (target >= 0.25x, >= 10,000/s),
and the server's CPU (user, system, from /proc), minor page faults, bytes written and write
calls (``/proc/<pid>/io``) per event and per entry during each load; on LMDB also each
sub-database's entries, depth and pages after the SCIM load (the store's size, which the
sequencer writer's cost per event follows).
``--threads``: also the server's CPU per event by thread name (decode pool, SCIM group
writer, sequencer writer, publisher, event loop), from a start-up hook (``bench.threadcpu``).
``--pyspy FILE``: py-spy records the server during the SCIM load only (started once the
bodies are built), ``--gil --idle`` stacks in collapsed form (``PYSPY_ARGS`` adds options).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import platform
import pstats
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from bench import threadcpu
from bench.http import log_and_hello
from bench.scim_proxy import (
    cpu_model,
    post_batches,
    raw_batch_load,
    sample_events,
    tlog_token,
)
from client.formats.note import Ed25519Signer
from tlog.config import ServeConfig
from tlog.scim.routes import JSON, ScimRoutes
from tlog.scim.service import ScimService
from tlog.scim.store import Overlay
from tlog.server import build_app
from tlog.signer import CheckpointSigner

N = 1000


def _cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.thread_time()
    out = fn()
    return time.thread_time() - t0, out


def _checks(service: ScimService, events: list[Any]) -> None:
    service.check_events("bench-batch", events)
    if service.on_logged is not None:
        service.on_logged(events)


def _cpu_s(pid: int) -> tuple[float, float, int, int]:
    """CPU seconds in user and in system mode the process ``pid`` has used so far, its
    minor page faults, and the context switches of its live threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    switches += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            pass
    return int(fields[11]) / tck, int(fields[12]) / tck, int(fields[7]), switches


def _per(a: tuple[float, float, int, int], b: tuple[float, float, int, int], n: int) -> str:
    """CPU per item between two :func:`_cpu_s` readings."""
    n = max(n, 1)
    user, system, faults, switches = b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]
    return (
        f"server CPU {(user + system) / n * 1e6:.1f} µs (user {user / n * 1e6:.1f}, "
        f"system {system / n * 1e6:.1f}), {faults / n:.2f} minor faults, "
        f"{switches / n:.2f} context switches"
    )


def _io(pid: int) -> tuple[int, int]:
    """Bytes the process ``pid`` has written to storage so far, and its write calls."""
    f = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(f["write_bytes"]), int(f["syscw"])


def _io_per(a: tuple[int, int], b: tuple[int, int], n: int) -> str:
    n = max(n, 1)
    return f"{(b[0] - a[0]) / n / 1024:.1f} KiB written in {(b[1] - a[1]) / n:.1f} write calls"


def _lmdb_stat(data: Path) -> str:
    """Entries, depth and pages of each LMDB sub-database of the store in ``data`` (opened
    read-only beside the server, which LMDB allows)."""
    env = lmdb.open(str(data), readonly=True, lock=False, max_dbs=16)
    out = []
    try:
        with env.begin() as txn:
            for name, _ in txn.cursor():
                st = env.stat() if not name else txn.stat(env.open_db(name, txn=txn))
                pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                out.append(
                    f"{name.decode()}: {st['entries']:,} entries, depth {st['depth']}, "
                    f"{pages:,} pages"
                )
    finally:
        env.close()
    return "; ".join(out)


def http(
    duration: int, pyspy: Path | None = None, database: str | None = None, threads: bool = False
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-scim-batch-"))
    tcpu = tmp / "threads.json" if threads else None
    if tcpu is not None:
        os.environ.update(threadcpu.hook_env(tcpu))
    pids: list[int] = []
    with log_and_hello(tmp, pids, database) as (url, _):
        token = tlog_token(tmp / "data", "bench-batch", database)
        bodies = [  # built before the clock starts: we measure the log
            [
                ('{"events":[' + ",".join(sample_events(N, f"b{t}-{k}")) + "]}").encode()
                for k in range(max(2, duration))
            ]
            for t in range(2)
        ]
        spy = None
        if pyspy is not None:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            extra = shlex.split(os.environ.get("PYSPY_ARGS", ""))
            opts = ["--gil", "--idle", "-r", "200", "-f", "raw", "-o", str(pyspy), *extra]
            spy = subprocess.Popen(
                [exe, "record", *opts, "-p", str(pids[0])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        t0 = None if tcpu is None else threadcpu.read(tcpu)
        c0 = _cpu_s(pids[0])
        io0 = _io(pids[0])
        path = "/v1/scim/events/batch"
        scim, scim_n = post_batches(url, token, path, "results", bodies, duration)
        c1 = _cpu_s(pids[0])
        io1 = _io(pids[0])
        t1 = None if tcpu is None else threadcpu.read(tcpu)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        c2 = _cpu_s(pids[0])
        stat = "" if database else _lmdb_stat(tmp / "data" / "db")
        io2 = _io(pids[0])
        raw, raw_n = raw_batch_load(url, token, duration)
        c3 = _cpu_s(pids[0])
        io3 = _io(pids[0])
    print(f"machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}")
    print(
        f"POST /v1/scim/events/batch x1000, 2 threads, encryption on: {scim:,.0f} events/s "
        f"({scim_n:,}); per event: {_per(c0, c1, scim_n)}, {_io_per(io0, io1, scim_n)}"
    )
    if stat:
        print(f"  store after the SCIM load: {stat}")
    print(
        f"POST /v1/entries/batch x1000, 2 threads (reference): {raw:,.0f} entries/s ({raw_n:,}); "
        f"per entry: {_per(c2, c3, raw_n)}, {_io_per(io2, io3, raw_n)}"
    )
    if t0 is not None and t1 is not None:
        for name, v in sorted(t1.items(), key=lambda kv: kv[1] - t0.get(kv[0], 0.0), reverse=True):
            d = v - t0.get(name, 0.0)
            if d > 0:
                print(f"  thread {name}: {d / max(scim_n, 1) * 1e6:.1f} µs/event")
    print(f"SCIM batch / raw: {scim / raw if raw else 0:.3f}x (target >= 0.25x, >= 10,000/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--profile", choices=["parse", "stage"], default=None)
    ap.add_argument("--http", action="store_true")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--pyspy", type=Path, default=None, help="with --http: py-spy output file")
    ap.add_argument("--database", help="with --http: serve from this postgresql:// URL")
    ap.add_argument(
        "--threads", action="store_true", help="with --http: the server's CPU by thread"
    )
    args = ap.parse_args()
    if args.http:
        http(args.duration, args.pyspy, args.database, args.threads)
        return

    origin = "bench.example/scim-batch"
    signer = CheckpointSigner(Ed25519Signer(origin, bytes(range(32))), origin)
    with tempfile.TemporaryDirectory() as tmp:
        app, log_, _ = build_app(ServeConfig(data=Path(tmp)), signer)
        service: ScimService = app.state.scim
        # The events are for tenant "bench-batch" (bench.scim_proxy.sample_events).
        routes = ScimRoutes(service, app.api)
        bodies = [
            ('{"events":[' + ",".join(sample_events(N, f"s{k}")) + "]}").encode()
            for k in range(args.batches)
        ]
        times = {"parse": 0.0, "check": 0.0, "stage": 0.0, "commit": 0.0, "append": 0.0}
        prof = cProfile.Profile(time.thread_time) if args.profile else None
        for body in bodies:
            if prof is not None and args.profile == "parse":
                prof.enable()
            dt, parsed = _cpu(lambda body=body: routes._parse_batch(body, JSON))  # type: ignore[misc]
            if prof is not None:
                prof.disable()
            times["parse"] += dt
            events = [ev for ev, _ in parsed]
            encoded = [data for _, data in parsed]
            dt, _ = _cpu(functools.partial(_checks, service, events))
            times["check"] += dt
            stage = service._stager("bench-batch", events, encoded)
            with service.storage.read() as rv:
                tx = Overlay(rv)
                if prof is not None and args.profile == "stage":
                    prof.enable()
                dt, _ = _cpu(lambda stage=stage, tx=tx: stage(tx))  # type: ignore[misc]
                if prof is not None:
                    prof.disable()
                times["stage"] += dt
                items = tx.items()
            dt, _ = _cpu(lambda items=items: service.storage.put_aux(items))  # type: ignore[misc]
            times["commit"] += dt
            leaves = [b"r" + os.urandom(72) for _ in range(N)]
            dt, _ = _cpu(lambda leaves=leaves: log_.integrate(leaves))  # type: ignore[misc]
            times["append"] += dt
        log_.storage.close()
    n = N * args.batches
    for k, v in times.items():
        print(f"{k:>8}: {v / n * 1e6:8.1f} µs/event")
    scim = n / (times["parse"] + times["check"] + times["stage"] + times["commit"])
    raw = n / times["append"]
    print(f"SCIM parse+check+stage+commit: {scim:,.0f} events/s (thread CPU)")
    print(f"raw Log.integrate (reference): {raw:,.0f} entries/s; ratio {scim / raw:.3f}x")
    if prof is not None:
        pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(40)


if __name__ == "__main__":
    main()
