"""The outbox writer thread's CPU a write (``proxy18`` round): events added as the proxy
adds them (one ``add`` a write, ``--concurrency`` at a time, so they share group commits),
and marked delivered in batches of ``--batch`` as the relay marks them. Prints the writer
thread's CPU (user + system) a write spent on the adds and on the marks.

    .venv/bin/python -m bench.outbox_cpu [--events 2400] [--batch 12] [--concurrency 4]

To measure another checkout's outbox, run this file with that checkout first on the path:
``PYTHONPATH=../other .venv/bin/python bench/outbox_cpu.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from client.adapters.outbox import Outbox, Receipt
from harness.scim import event_record


def _cpu(tid: int, clock: int) -> tuple[float, float]:
    """(CPU, system) seconds of thread ``tid`` of this process: its CPU clock (fine
    grained), and the system time of ``/proc`` (in clock ticks)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return time.clock_gettime(clock), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def run(events: int, batch: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        outbox = Outbox(Path(d) / "o.sqlite")
        writer = next(t for t in threading.enumerate() if t.name == "outbox-writer")
        tid = writer.native_id
        assert tid is not None and writer.ident is not None
        clock = time.pthread_getcpuclockid(writer.ident)
        spent = {"adds": 0.0, "adds sys": 0.0, "marks": 0.0, "marks sys": 0.0}
        recs = [event_record(i) for i in range(events)]
        for start in range(0, events, batch):
            part = recs[start : start + batch]
            u0, s0 = _cpu(tid, clock)
            for i in range(0, len(part), concurrency):
                for fut in [outbox.add([r]) for r in part[i : i + concurrency]]:
                    fut.result()
            u1, s1 = _cpu(tid, clock)
            outbox.mark_delivered(
                [Receipt(r.eid, start + k, "AA==", start + k + 1, "cp") for k, r in enumerate(part)]
            ).result()
            u2, s2 = _cpu(tid, clock)
            spent["adds"] += u1 - u0
            spent["adds sys"] += s1 - s0
            spent["marks"] += u2 - u1
            spent["marks sys"] += s2 - s1
        assert outbox.counts()["delivered"] == events
        outbox.close()
    return {k: 1000 * v / events for k, v in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    import client.adapters.outbox as mod

    print(f"outbox: {mod.__file__}; load {os.getloadavg()[0]:.1f}")
    for _ in range(a.runs):
        r = run(a.events, a.batch, a.concurrency)
        adds, marks = r["adds"], r["marks"]
        print(
            f"writer CPU ms a write: adds {adds:.3f} (sys {r['adds sys']:.3f}), "
            f"marks {marks:.3f} (sys {r['marks sys']:.3f}), in all {adds + marks:.3f}"
        )


if __name__ == "__main__":
    main()
