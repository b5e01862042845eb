"""The ``tlog`` command run as a process, as an operator runs it (``python -m tlog.cli``):
this package never imports ``tlog`` itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ROOT", "log_vkey", "tlog_argv", "tlog_cli", "tlog_env"]

ROOT = Path(__file__).resolve().parent.parent


def tlog_argv(*args: str) -> list[str]:
    """The command line of ``tlog ARGS`` (run it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", "tlog.cli", *args]


def tlog_env() -> dict[str, str]:
    """This environment without the ``TLOG_*`` settings variables: a developer's own
    settings must not change a test or a benchmark (nor make one of its processes use
    another store than the others)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TLOG_")}


def tlog_cli(
    *args: str,
    timeout: float = 120,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    wrapper: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``tlog ARGS`` to completion, its output captured as text, within ``timeout``
    seconds (subprocess.TimeoutExpired after it), ``stdin`` its input. The environment is
    ``env``, or by default :func:`tlog_env`. ``check``: fail (AssertionError)
    unless it exits 0, saying what it wrote to stderr. ``wrapper``: a command that runs it
    (e.g. ``setpriv ...`` as another user, ``unshare -m ...`` in a mount namespace)."""
    if env is None:
        env = tlog_env()
    r = subprocess.run(
        [*wrapper, *tlog_argv(*args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        input=stdin,
        env=env,
    )
    if check:
        assert r.returncode == 0, f"tlog {' '.join(args)}: exit {r.returncode}: {r.stderr}"
    return r


def log_vkey(url: str, timeout: float = 30.0) -> str:
    """The verifier key the log at ``url`` names (``GET /v1/log``): a benchmark's or a test's
    log is its own, so its word is what ``tlog scim-proxy --log-key`` is given."""
    import httpx

    vkey = httpx.get(url.rstrip("/") + "/v1/log", timeout=timeout).json()["vkey"]
    return str(vkey)
