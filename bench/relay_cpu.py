"""The relay thread's CPU a batch, split by step (``proxy13`` round): one real ``tlog serve``,
an outbox of events delivered in batches of ``--batch`` with the log's key pinned (receipts
verified), no linger; prints the relay thread's CPU per batch in the HTTP POST, the answer's
parse, the receipt check and the commitment check, and in all. The events are queued with
their canonical forms, as the adapters queue them (``proxy17``); ``--no-handed`` queues them
without (an outbox from before a restart: the relay decodes each event's JSON again).

    .venv/bin/python -m bench.relay_cpu [--events 1200] [--batch 12] [--runs 2] [--no-handed]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

import client.adapters.receipts as receipts
import client.adapters.relay as relay_module
from bench.scim_proxy import tlog_token
from bench.tlogserve import start_serve
from client.adapters.outbox import Canonical, Outbox, OutboxRecord
from client.adapters.relay import Relay
from client.scim.fastjson import check_event_json_canonical
from harness.net import stop_processes
from harness.scim import event_record

_spent: dict[str, float] = collections.defaultdict(float)


def _timed(owner: object, name: str, key: str) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    def timed(*a: Any, **kw: Any) -> Any:
        c = time.thread_time()
        try:
            return inner(*a, **kw)
        finally:
            _spent[key] += time.thread_time() - c

    setattr(owner, name, timed)


def _record(i: int, handed: bool) -> OutboxRecord:
    r = event_record(i)
    got = check_event_json_canonical(r.body.encode("utf-8")) if handed else None
    if got is None:
        return r
    return OutboxRecord(r.eid, r.req, r.body, Canonical(got[1], dict(got[0]["actor"])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-handed", action="store_true")
    args = ap.parse_args()
    _timed(Relay, "_post", "post")
    _timed(Relay, "_deliver_once", "total")
    _timed(receipts.ReceiptVerifier, "check", "receipts")
    _timed(relay_module, "check_commitments", "commitments")
    _timed(relay_module, "_parse_results", "parse")
    tmp = Path(tempfile.mkdtemp(prefix="tlog-bench-relay-cpu-"))
    srv = start_serve(tmp / "log")
    try:
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        tok = tlog_token(tmp / "log", "t1")
        for run in range(args.runs):
            ob = Outbox(tmp / f"o{run}.sqlite")
            ob.put([_record(run * args.events + i, not args.no_handed) for i in range(args.events)])
            relay = Relay(
                ob, srv.url, tok, batch_size=args.batch, idle=0.01, linger=0, log_key=vkey
            )
            _spent.clear()
            relay.start()
            while ob.counts()["pending"]:
                time.sleep(0.005)
            relay.stop()
            ob.close()
            assert relay.unverified == 0
            b = max(relay.attempts, 1)
            split = ", ".join(f"{k} {1e3 * v / b:.3f}" for k, v in sorted(_spent.items()))
            print(f"run {run}: {b} batches of {args.batch}; relay CPU ms a batch: {split}")
    finally:
        stop_processes([srv.proc])


if __name__ == "__main__":
    main()
