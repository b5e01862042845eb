"""The PostgreSQL test harness never leaks a cluster: a test process killed mid-way (SIGKILL, a
CI timeout) takes its throwaway cluster with it (harness/pgwatchdog.py), and a cluster whose
watchdog died too is removed by the next session (:func:`harness.pg.reap_stale`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pg import memory_dir, reap_stale
from harness.pgwatchdog import alive, descendants, postmaster_pid
from tests.pgsupport import require_postgres

ROOT = Path(__file__).resolve().parent.parent
BOUND = 30.0  # seconds the cluster may take to go once its owner is gone

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A directory of our own for the clusters under test (readable by the cluster's OS
    user, so not under pytest's 0700 tmp_path), so reaping touches nobody else's."""
    require_postgres()
    root = Path(tempfile.mkdtemp(prefix="tlog-harness-", dir=memory_dir()))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def cluster_pids(base: Path) -> list[int]:
    """The postmaster of the cluster in ``base`` and every process under it."""
    pm = postmaster_pid(base / "data")
    assert pm is not None and alive(pm), "the cluster is not running"
    return [pm, *descendants(pm)]


def wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path, bound: float = 180) -> str:
    deadline = time.monotonic() + bound
    while not path.exists() or not path.read_text().endswith("\n"):
        assert proc.poll() is None, f"the holder exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"no cluster within {bound} s: {log.read_text()}"
        time.sleep(0.1)
    return path.read_text().strip()


def wait_gone(pids: list[int], base: Path) -> None:
    deadline = time.monotonic() + BOUND
    while any(alive(p) for p in pids) or base.exists():
        if time.monotonic() > deadline:
            left = [p for p in pids if alive(p)]
            pytest.fail(f"{BOUND} s after its owner died: processes {left}, dir {base.exists()}")
        time.sleep(0.1)


def test_a_killed_pytest_takes_its_cluster_with_it(tmp_path: Path, pg_root: Path) -> None:
    """A pytest session that started the session cluster is SIGKILLed in the middle of a
    test: the postmaster, every backend and the cluster's directory are gone within BOUND."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text("from tests.conftest import pg_cluster  # noqa: F401\n")
    (inner / "test_hold.py").write_text(
        textwrap.dedent(
            """
            import os
            import pathlib
            import time


            def test_hold(pg_cluster):
                pathlib.Path(os.environ["HOLD_FILE"]).write_text(f"{pg_cluster.base}\\n")
                time.sleep(600)
            """
        )
    )
    hold, log = tmp_path / "hold", tmp_path / "inner.log"
    env = dict(os.environ, HOLD_FILE=str(hold), PYTHONPATH=str(ROOT), TLOG_PG_TMP=str(pg_root))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull]
            + ["--rootdir", str(inner), str(inner / "test_hold.py")],
            cwd=inner,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = Path(wait_file(hold, proc, log))
        assert base.parent == pg_root
        pids = cluster_pids(base)
        assert len(pids) > 1  # the postmaster and its background workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_gone(pids, base)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_cluster_whose_watchdog_died_too_is_reaped_by_the_next_session(
    tmp_path: Path, pg_root: Path
) -> None:
    """Owner and watchdog both SIGKILLed (say, the OOM killer): the cluster keeps running
    until :func:`reap_stale`, which a session runs before it starts its first cluster, stops
    it and deletes it; a cluster whose owner lives and a directory without an owner file
    are left alone."""
    hold, log = tmp_path / "hold", tmp_path / "holder.log"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from harness.pg import PgCluster
        c = PgCluster(tmp_root={str(pg_root)!r}).init().start()
        open({str(hold)!r}, "w").write(f"{{c.base}} {{c._watchdog[0].pid}}\\n")
        time.sleep(600)
        """
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    foreign = pg_root / "tlog-pg-foreign"  # a cluster this harness did not make
    foreign.mkdir()
    pids: list[int] = []
    try:
        base_text, watchdog = wait_file(hold, proc, log).split()
        base = Path(base_text)
        pids = cluster_pids(base)
        assert reap_stale([str(pg_root)]) == []  # its owner is alive: not stale
        assert all(alive(p) for p in pids)
        os.kill(int(watchdog), signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(1)
        assert alive(pids[0])  # nobody left to stop it: leaked, until the next session
        assert reap_stale([str(pg_root)]) == [base]
        wait_gone(pids, base)
        assert foreign.is_dir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for p in pids[:1]:  # a failed assertion above must not leak the cluster either
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_small_dev_shm_is_not_used_for_test_files(tmp_path: Path) -> None:
    """review 39: the tests put their files on /dev/shm only when it has room (a
    container's default /dev/shm is 64 MiB: the clusters and data directories would fill
    it, and the disk-fault tests would fail for the wrong reason)."""
    from harness.pg import SHM_FREE_MIN, shm_dir
    from tests.support import run_tool

    small, roomy = tmp_path / "small", tmp_path / "roomy"
    small.mkdir()
    roomy.mkdir()
    m = run_tool("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small))
    if m.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {m.stderr.strip()}")
    try:
        assert shm_dir(str(small)) is None
        m = run_tool(
            "mount", "-t", "tmpfs", "-o", f"size={SHM_FREE_MIN + (64 << 20)}", "tmpfs", str(roomy)
        )
        assert m.returncode == 0, m.stderr
        try:
            assert shm_dir(str(roomy)) == str(roomy)
        finally:
            run_tool("umount", str(roomy))
    finally:
        run_tool("umount", str(small))
    assert shm_dir(str(tmp_path / "missing")) is None
