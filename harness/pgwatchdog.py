"""The watchdog of one throwaway PostgreSQL cluster: it outlives the process (a test session,
a benchmark) that started the cluster and, once that process is gone however it ended
(SIGKILL, a CI timeout), stops the cluster and deletes its directory.

Started by :class:`harness.pg.PgCluster` as ``python pgwatchdog.py BASE BINDIR USER``
with its standard input the read end of a pipe whose only write end the owner holds
(Python creates pipes non-inheritable, so no other child of the owner keeps it open).
End of file on standard input therefore means the owner has exited. The watchdog runs in its
own session, so a signal to the owner's process group does not reach it. Standard library only:
it must start fast and must not import the code under test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (the first is the state), or None
    when the process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ")"
    return None if fields[0] in ("Z", "X") else fields


def alive(pid: int) -> bool:
    return proc_stat(pid) is not None


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (f := proc_stat(int(p.name))) is not None:
            parents[int(p.name)] = int(f[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        cur = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == cur]
        out += kids
        frontier += kids
    return out


def reap(base: Path, bindir: str, user: str) -> None:
    """Stop the cluster in ``base`` at once (no shutdown checkpoint: it holds test data only)
    and delete ``base``."""
    data = base / "data"
    pid = postmaster_pid(data)
    if pid is not None and alive(pid):
        argv = [str(Path(bindir) / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(argv, capture_output=True, timeout=30, check=False)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):  # pg_ctl failed: SIGKILL; its children exit when they see it gone
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    base, bindir, user = Path(argv[0]), argv[1], argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the owner; EOF follows
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:  # pragma: no cover - retried by Python since 3.5
            continue
        except OSError:
            break
    reap(base, bindir, user)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
