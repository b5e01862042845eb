"""Real Go programs of the witness network, built on demand at pinned versions and cached.

``go_binary(name)`` returns the path of a binary built with ``go install module@version``
into ``~/.cache/tlog-tests/go-bin/<name>@<version>/`` (``$TLOG_TESTS_CACHE`` overrides the
cache root), building it the first time under a file lock so parallel tests build once.
Where ``go`` is missing, or the build fails (offline, a proxy refusing a module), it raises
:class:`harness.Unavailable` with the reason (a test skips with it). ``GOTOOLCHAIN=auto``
lets Go fetch the toolchain a module asks for (torchwood v0.10.0 needs Go 1.27) from the
module proxy. The first build of all four takes several minutes on two cores (about 12 min
measured, mostly the Go 1.27 toolchain download and modernc.org/sqlite); later runs reuse
the binaries. The time of each build is written next to it (``build-seconds``) and printed;
``$TLOG_GO_BUILD_TIMEOUT`` (seconds, default 1200) bounds each build, after which it is
unavailable.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import Unavailable

# name -> (package, version). Versions looked up with `go list -m -versions` (witness has
# no tags: the newest pseudo-version at the time of writing).
PINNED: dict[str, tuple[str, str]] = {
    "litewitness": ("filippo.io/torchwood/cmd/litewitness", "v0.10.0"),
    "omniwitness": (
        "github.com/transparency-dev/witness/cmd/omniwitness",
        "v0.0.0-20260720115447-2e1c6971d19e",
    ),
    "fsck": ("github.com/transparency-dev/tessera/cmd/fsck", "v1.0.4"),
    "posix-oneshot": ("github.com/transparency-dev/tessera/cmd/examples/posix-oneshot", "v1.0.4"),
}
# Seconds for one `go install` (toolchain download included); over it: Unavailable.
BUILD_TIMEOUT = float(os.environ.get("TLOG_GO_BUILD_TIMEOUT", "1200"))

_failed: dict[str, str] = {}


def cache_root() -> Path:
    default = Path.home() / ".cache" / "tlog-tests"
    return Path(os.environ.get("TLOG_TESTS_CACHE", str(default))) / "go-bin"


def go_binary(name: str) -> Path:
    """The cached binary of ``name`` (a key of :data:`PINNED`), built the first time."""
    pkg, version = PINNED[name]
    target = cache_root() / f"{name}@{version}"
    exe = target / pkg.rsplit("/", 1)[1]
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    if name in _failed:
        raise Unavailable(_failed[name])
    go = shutil.which("go")
    if go is None:
        raise Unavailable(f"needs Go to build {pkg}@{version}: `go` is not on PATH")
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, across processes
        if exe.is_file():
            return exe
        env = dict(os.environ, GOBIN=str(target), GOTOOLCHAIN="auto", GOFLAGS="-buildvcs=false")
        start = time.monotonic()
        try:
            out = subprocess.run(
                [go, "install", f"{pkg}@{version}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _failed[name] = f"building {pkg}@{version} took over {BUILD_TIMEOUT:.0f}s"
            raise Unavailable(_failed[name]) from None
        seconds = time.monotonic() - start
        if out.returncode != 0 or not exe.is_file():
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            _failed[name] = f"cannot build {pkg}@{version} (offline?): {' | '.join(tail)}"
            raise Unavailable(_failed[name])
        (target / "build-seconds").write_text(f"{seconds:.1f}\n")
        sys.stderr.write(f"[harness] built {pkg}@{version} in {seconds:.0f}s\n")
    return exe
