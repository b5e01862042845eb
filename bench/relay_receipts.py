"""The relay's cost of verifying the log's receipts (``gaps8`` round): the same outbox
delivered by a relay without a log key and by one with it, alternated, against one real
``tlog serve``; reports this process's CPU per event, the wall time, and the CPU and wall
time of :meth:`client.adapters.receipts.ReceiptVerifier.check` per batch.

    .venv/bin/python -m bench.relay_receipts [--events 10000] [--batch 1000] [--runs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import client.adapters.receipts as receipts
from bench.scim_proxy import tlog_token
from bench.tlogserve import start_serve
from client.adapters.outbox import Outbox
from client.adapters.relay import Relay
from harness.net import stop_processes
from harness.scim import event_record

_spent = [0.0, 0.0, 0]
_check = receipts.ReceiptVerifier.check


def _timed(self: receipts.ReceiptVerifier, *a: Any, **kw: Any) -> None:
    c, w = time.thread_time(), time.perf_counter()
    try:
        _check(self, *a, **kw)
    finally:
        _spent[0] += time.thread_time() - c
        _spent[1] += time.perf_counter() - w
        _spent[2] += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    receipts.ReceiptVerifier.check = _timed  # type: ignore[method-assign]
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-relay-"))
    srv = start_serve(tmp / "log")
    try:
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        tok = tlog_token(tmp / "log", "t1")
        n, k = args.events, 0
        for r in range(args.runs):
            for keyed in (False, True):
                ob = Outbox(tmp / f"o{r}{keyed}.sqlite")
                ob.put([event_record(k * n + i) for i in range(n)])
                k += 1
                relay = Relay(
                    ob,
                    srv.url,
                    tok,
                    batch_size=args.batch,
                    idle=0.01,
                    linger=0,
                    log_key=vkey if keyed else None,
                )
                _spent[:] = [0.0, 0.0, 0]
                p0, w0 = time.process_time(), time.monotonic()
                relay.start()
                while ob.counts()["pending"]:
                    time.sleep(0.005)
                w1, p1 = time.monotonic(), time.process_time()
                relay.stop()
                ob.close()
                assert relay.unverified == 0
                calls = max(int(_spent[2]), 1)
                print(
                    f"run {r} log key {'yes' if keyed else 'no '}: {n} events, batch "
                    f"{args.batch}: wall {w1 - w0:.2f} s, process CPU "
                    f"{1e6 * (p1 - p0) / n:.0f} us/event; check: {_spent[2]} calls, CPU "
                    f"{1e3 * _spent[0] / calls:.2f} ms/batch, wall {1e3 * _spent[1] / calls:.2f} "
                    "ms/batch",
                    flush=True,
                )
    finally:
        stop_processes([srv.proc])


if __name__ == "__main__":
    main()
