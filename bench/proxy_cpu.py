"""The proxy's own CPU per write, measured apart from any real SP (``tlog scim-proxy``).

    .venv/bin/python -m bench.proxy_cpu [--duration 8] [--connections 16]
        [--proxy-root DIR]   # run the proxy of another checkout (a "before" worktree)

``bench.scim_proxy`` measures the proxy against scim2-server, whose CPU (3-4 ms a write)
shares the machine's cores with the proxy, so its figures move with the machine's load. This
bench keeps what the proxy does per write and removes the rest: the upstream is a tiny
asyncio SP (:func:`serve_sp`, a subprocess) that answers like scim2-server under waitress
(``201`` with the created User for ``POST /Users``, ``204`` and ``Connection: close`` for
``PATCH``, as waitress answers a body-less response), the log is a real ``tlog serve``, and
the load is the same wrk script as ``bench.scim_proxy`` (half creates, half PATCHes). The
SP answers at once, so the proxy runs near saturation and its CPU per write is what it
costs per write, much less dependent on the machine's load than end-to-end figures.
Reported: the proxy process's user and system CPU per write (``/proc``), split into its
event-loop thread and its other threads (outbox writer, relay, workers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench.scim_proxy import (
    durable_env,
    named_split,
    named_switches,
    thread_cpu,
    thread_names,
    thread_switches,
    tlog_token,
    wrk,
)
from bench.tlogserve import start_serve
from harness.net import free_port, stop_processes, wait_http
from harness.tlog import ROOT, log_vkey, tlog_env

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


# --- the stand-in SP -----------------------------------------------------------------------


class _SP(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time per connection; answers by method.
    ``keep_alive``: the ``204`` keeps the connection too (waitress closes it)."""

    def __init__(self, port: int, keep_alive: bool = False) -> None:
        self.buf = b""
        self.port = port
        self.keep_alive = keep_alive
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self.answer(head.split(" ", 2), body)

    def answer(self, line: list[str], body: bytes) -> None:
        assert self.transport is not None
        method, path = line[0], line[1]
        base = f"http://127.0.0.1:{self.port}"
        if method == "POST":
            rid = uuid.uuid4().hex
            user = json.loads(body)
            doc = {
                "schemas": [USER],
                "id": rid,
                "meta": {
                    "resourceType": "User",
                    "created": "2026-12-01T05:47:14.040691Z",
                    "lastModified": "2026-12-01T05:47:14.040691Z",
                    "location": f"{base}/v2/Users/{rid}",
                    "version": 'W/"1"',
                },
                "userName": user.get("userName"),
            }
            out = json.dumps(doc).encode()
            self.transport.write(
                b"HTTP/1.1 201 Created\r\nCache-Control: no-cache\r\n"
                + f"Content-Length: {len(out)}\r\n".encode()
                + f"Content-Location: {base}/v2/Users/{rid}\r\n".encode()
                + b"Content-Type: application/scim+json\r\n"
                + b'Date: Tue, 01 Dec 2026 05:47:14 GMT\r\nEtag: W/"1"\r\n'
                + f"Location: {base}/v2/Users/{rid}\r\n\r\n".encode()
                + out
            )
        else:  # waitress answers a 204 with Connection: close
            rid = path.rstrip("/").rsplit("/", 1)[-1]
            self.transport.write(
                b"HTTP/1.1 204 No Content\r\nCache-Control: no-cache\r\n"
                + (b"" if self.keep_alive else b"Connection: close\r\n")
                + b"Content-Type: application/scim+json\r\n"
                b'Date: Tue, 01 Dec 2026 05:47:14 GMT\r\nEtag: W/"3"\r\n'
                + f"Location: {base}/v2/Users/{rid}\r\n\r\n".encode()
            )
            if not self.keep_alive:
                self.transport.close()


def serve_sp(port: int, keep_alive: bool = False) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _SP(port, keep_alive), "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    asyncio.run(run())


# uvicorn re-raises the SIGTERM it caught once it has shut down: made a SystemExit here, so
# that cProfile writes its stats.
_CPROFILE = (
    "import cProfile, runpy, signal, sys; "
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "sys.argv = ['tlog', *sys.argv[1:]]; "
    'cProfile.run(\'runpy.run_module("tlog.cli", run_name="__main__")\', %r)'
)


# --- measuring -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--proxy-root", type=Path, default=ROOT)
    ap.add_argument(
        "--durable-intents",
        action="store_true",
        help="run the proxy with durable write-ahead intents (TLOG_PROXY_DURABLE_INTENTS)",
    )
    ap.add_argument(
        "--cprofile",
        type=Path,
        help="run the proxy under cProfile (its event-loop thread only) and write the stats "
        "to this file when it stops (the CPU figures of such a run are not comparable)",
    )
    ap.add_argument(
        "--sp-keeps-alive",
        action="store_true",
        help="the stand-in SP keeps the connection after a 204 too (waitress closes it): "
        "what the proxy's reconnect after every PATCH costs it",
    )
    ap.add_argument("--serve-sp", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sp:
        serve_sp(args.serve_sp, args.sp_keeps_alive)
        return
    if shutil.which("wrk") is None:
        sys.exit("bench.proxy_cpu needs wrk: apt-get install -y wrk")
    root = args.proxy_root.resolve()
    py = root / ".venv" / "bin" / "python"
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-proxycpu-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sport, pport = free_port(), free_port()
        log = start_serve(tmp / "log")
        procs.append(log.proc)
        log_url = log.url
        (tmp / "proxy.token").write_text(tlog_token(tmp / "log", "bench-proxy"))
        sp_p = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.proxy_cpu", "--serve-sp", str(sport)),
                *(("--sp-keeps-alive",) if args.sp_keeps_alive else ()),
            ],
            cwd=ROOT,
        )
        procs.append(sp_p)
        upstream = f"http://127.0.0.1:{sport}/v2"
        proxy_p = subprocess.Popen(
            [
                str(py),
                *(("-c", _CPROFILE % str(args.cprofile.resolve())) if args.cprofile else ()),
                *(() if args.cprofile else ("-m", "tlog.cli")),
                *("scim-proxy", "--upstream", upstream),
                *("--log", log_url, "--token-file", str(tmp / "proxy.token")),
                *("--tenant", "bench-proxy", "--sp-id", "bench-sp"),
                *("--listen", f"127.0.0.1:{pport}", "--outbox", str(tmp / "outbox.sqlite")),
                *("--log-level", "warning"),
            ],
            cwd=root,
            # The key by environment: a checkout from before --log-key ignores it.
            env={**tlog_env(), "TLOG_PROXY_LOG_KEY": log_vkey(log_url), **durable_env(args)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proxy_p)
        base = f"http://127.0.0.1:{pport}/v2"
        wait_http(base + "/ServiceProviderConfig", proxy_p)
        ids = [uuid.uuid4().hex for _ in range(300)]
        wrk(base, ids, 2, args.connections)  # warm-up
        before = thread_cpu(proxy_p.pid)
        switches_before = thread_switches(proxy_p.pid)
        res = wrk(base, ids, args.duration, args.connections)
        after = thread_cpu(proxy_p.pid)
        switches_after = thread_switches(proxy_p.pid)
        names = thread_names(proxy_p.pid)
    finally:
        stop_processes(procs, 15)
        shutil.rmtree(tmp, ignore_errors=True)
    n = max(res["requests"], 1.0)

    def per_write(tids: list[int]) -> tuple[float, float]:
        u = sum(after[t][0] - before.get(t, (0.0, 0.0))[0] for t in tids)
        s = sum(after[t][1] - before.get(t, (0.0, 0.0))[1] for t in tids)
        return 1000 * u / n, 1000 * s / n

    main_t = [proxy_p.pid]
    others = [t for t in after if t != proxy_p.pid]
    mu, ms = per_write(main_t)
    ou, os_ = per_write(others)
    print(
        f"proxy {root}: {res['rps']:,.0f} writes/s, p99 {res.get('p99_ms', 0):.1f} ms, "
        f"non-2xx {res['non2xx']:.0f}, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  proxy CPU ms per write: {mu + ms + ou + os_:.3f} (event loop {mu:.3f} user + "
        f"{ms:.3f} sys; other threads {ou:.3f} user + {os_:.3f} sys)"
    )
    if names:
        print("  other threads by name, user + sys: " + named_split(before, after, names, n))
    print(
        "  context switches a write by thread, voluntary + involuntary: "
        + named_switches(switches_before, switches_after, names, n)
    )


if __name__ == "__main__":
    main()
