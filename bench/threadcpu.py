"""CPU time of a server process by thread name, for benches (``bench.scim_batch --threads``).

``hook_env(out)`` returns environment variables that make a Python process started with
them (its command line naming ``serve``) load :func:`install` at start-up (a
``sitecustomize`` in a directory beside ``out``, on ``PYTHONPATH``, a copy of this module): a
daemon thread then writes, four times a second, ``{thread name: CPU seconds}`` as JSON to
``out``, summing the threads of one name (those that ended included: the SCIM group writer
is started again after each idle spell). :func:`read` reads it. Measurement only: nothing
of the project imports this.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ENV = "BENCH_THREAD_CPU"


def hook_env(out: Path) -> dict[str, str]:
    site = out.parent / "threadcpu-site"  # beside ``out``: removed with the bench's files
    site.mkdir(exist_ok=True)
    # this module's own text (stdlib only): the project is not on sys.path yet at start-up
    (site / "sitecustomize.py").write_text(Path(__file__).read_text() + "\n\ninstall()\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, ENV: str(out)}


def read(out: Path, settle: float = 0.6) -> dict[str, float]:
    """The newest figures (after ``settle`` seconds: the writer's period, and some)."""
    time.sleep(settle)
    return {str(k): float(v) for k, v in json.loads(out.read_text()).items()}


def install() -> None:
    out = os.environ.get(ENV)
    if not out or "serve" not in sys.argv:
        return
    ended: dict[str, float] = {}
    lock = threading.Lock()
    run = threading.Thread.run

    def counted(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            spent = time.thread_time()
            with lock:
                ended[self.name] = ended.get(self.name, 0.0) + spent

    threading.Thread.run = counted  # type: ignore[method-assign]

    def snapshot() -> dict[str, float]:
        with lock:
            cpu = dict(ended)
        for t in threading.enumerate():
            if t.ident is None or not t.is_alive():
                continue
            try:
                spent = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except OSError:  # ended meanwhile
                continue
            cpu[t.name] = cpu.get(t.name, 0.0) + spent
        return cpu

    def writer() -> None:
        tmp = out + ".tmp"
        while True:
            time.sleep(0.25)
            Path(tmp).write_text(json.dumps(snapshot()))
            os.replace(tmp, out)

    threading.Thread(target=writer, name="bench-threadcpu", daemon=True).start()
