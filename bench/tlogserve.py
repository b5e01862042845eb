"""``tlog serve`` for the benchmarks: the one place a bench starts the log server.

:func:`start_serve` runs ``tlog serve`` on a free loopback port (``--log-level warning``),
on LMDB in the data directory or on a PostgreSQL ``--database`` (a single server, so
``--replication none``), and returns once it answers ``GET /checkpoint`` with 200;
:func:`serving` is the same as a context manager that stops it afterwards. Every bench that
measures a real server process (``bench.http``, ``bench.scim_single``, ``bench.scim_batch``,
``bench.pg_scim_single``, ``bench.scim_proxy``, ``bench.proxy_cpu``, ``bench.audit``) starts
it here, so they run the same command line.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.net import free_port, stop_processes, wait_http
from harness.tlog import ROOT, tlog_argv, tlog_env

__all__ = ["ORIGIN", "Serve", "serve_argv", "serving", "start_serve"]

ORIGIN = "bench.example/log"  # the benches' log origin (None: the serve default)
STARTUP = 90.0  # seconds; a loaded two-core machine with PostgreSQL start-up can be slow


@dataclass
class Serve:
    """A running ``tlog serve``: its process, base URL and data directory."""

    proc: subprocess.Popen[bytes]
    url: str
    data: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_processes([self.proc])


def serve_argv(
    data: Path,
    port: int,
    *extra: str,
    database: str | None = None,
    origin: str | None = ORIGIN,
) -> list[str]:
    """The ``tlog serve`` command line of :func:`start_serve`."""
    argv = tlog_argv("serve", "--data", str(data), "--host", "127.0.0.1", "--port", str(port))
    argv += ["--log-level", "warning"]
    if origin is not None:
        argv += ["--origin", origin]
    if database is not None:
        argv += ["--database", database, "--replication", "none"]
    return [*argv, *extra]


def start_serve(
    data: Path,
    *extra: str,
    database: str | None = None,
    origin: str | None = ORIGIN,
    quiet: bool = True,
    timeout: float = STARTUP,
) -> Serve:
    """Start ``tlog serve`` with data directory ``data`` (``extra``: more flags) on a free
    port and wait until ``/checkpoint`` answers 200. ``database``: a ``postgresql://`` URL
    (None: LMDB in ``data``); ``origin`` None keeps the serve default. Its standard output
    (the banner) goes to /dev/null, its standard error too when ``quiet`` (else to this
    process's)."""
    port = free_port()
    proc = subprocess.Popen(
        serve_argv(data, port, *extra, database=database, origin=origin),
        cwd=ROOT,
        env=tlog_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/checkpoint", proc, timeout, ok=lambda r: r.status_code == 200)
    except BaseException:
        stop_processes([proc])
        raise
    return Serve(proc, url, data)


@contextlib.contextmanager
def serving(
    data: Path,
    *extra: str,
    database: str | None = None,
    origin: str | None = ORIGIN,
    quiet: bool = True,
) -> Iterator[Serve]:
    """:func:`start_serve`, stopped when the block ends."""
    srv = start_serve(data, *extra, database=database, origin=origin, quiet=quiet)
    try:
        yield srv
    finally:
        srv.stop()
