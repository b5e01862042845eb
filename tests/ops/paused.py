"""A real ``tlog`` command run in a process of its own that pauses at a point a test-only
patch picks (in that process only), says so on stderr, and goes on once a line arrives on
its stdin: the ops11 and redteam9 tests race a second command or a ``tlog serve`` against
it there."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MARK = "ops11: PAUSED"
# What a patch calls where the command is to pause.
PAUSE = f"""
import sys

def pause():
    print({MARK!r}, file=sys.stderr, flush=True)
    sys.stdin.readline()
"""


def pause_at(at: str) -> str:
    """The patch that pauses at the first call of ``at`` (``module:function``, a plain
    function), then runs it."""
    module, name = at.split(":")
    return f"""
import importlib

_module = importlib.import_module({module!r})
_run = getattr(_module, {name!r})
_paused = []
def _first_call_pauses(*a, **k):
    if not _paused:
        _paused.append(1)
        pause()
    return _run(*a, **k)
setattr(_module, {name!r}, _first_call_pauses)
"""


def command_script(patch: str, command: str) -> str:
    """The ``python -c`` program: ``PAUSE``, then ``patch`` (which calls ``pause()``), then
    ``tlog COMMAND ARGS`` with the process's own arguments."""
    return (
        PAUSE
        + patch
        + f"\nfrom tlog.cli import main\nsys.exit(main([{command!r}, *sys.argv[1:]]))\n"
    )


@dataclass
class Paused:
    proc: subprocess.Popen[str]
    said: list[str]  # its stderr up to and with the pause's line

    def resume(self, timeout: float = 300) -> tuple[str, str]:
        """Let it go on to its end, which must be exit code 0; (stdout, rest of stderr)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, "".join(self.said) + err + out
        return out, err


@contextmanager
def paused(script: str, *args: str) -> Iterator[Paused]:
    """Run ``python -c script ARGS`` until it says :data:`MARK` (failing with what it said
    if it ends first); killed on the way out unless it ended."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None and proc.stdin is not None
        said: list[str] = []
        for line in proc.stderr:
            said.append(line)
            if MARK in line:
                break
        else:
            raise AssertionError(f"{proc.wait()}: {''.join(said)}")
        yield Paused(proc, said)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def retake_gated(gate: str) -> str:
    """A patch for ``tlog serve`` on PostgreSQL: every attempt to take the store's operator
    lock again after the first one waits until the file ``gate`` exists (a test decides
    when the server may try)."""
    return f"""
import os, time
import tlog.pg as _pg
_hold_store = _pg.hold_store
_calls = []
def _gated(*a, **k):
    _calls.append(1)
    while len(_calls) > 1 and not os.path.exists({gate!r}):
        time.sleep(0.05)
    return _hold_store(*a, **k)
_pg.hold_store = _gated
"""
