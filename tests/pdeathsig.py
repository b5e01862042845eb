"""Run a command that dies with the process that started it (Linux).

``python -m tests.pdeathsig PARENT_PID -- COMMAND...`` asks the kernel for SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)``, which survives ``execve``), checks that its parent
is still ``PARENT_PID`` (the parent may have died before the request; then it exits at once)
and ``exec``s COMMAND in its place. So a ``tlog serve`` that a test started is killed by the
kernel when pytest is, however pytest ended (SIGKILL, a CI timeout, the OOM killer), with no
``preexec_fn`` in a threaded pytest. Standard library only: it must start fast.

The "parent" is the thread that forked: call :func:`tests.support.start_server` from a
thread that outlives the server (the test's own thread, as every caller does).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m tests.pdeathsig PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            print(f"pdeathsig: prctl failed: {os.strerror(err)}", file=sys.stderr)
            return 1
        if os.getppid() != parent:  # the parent died before the request took effect
            return 1
    os.execvp(argv[2], argv[2:])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
