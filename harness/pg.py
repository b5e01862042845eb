"""A throwaway PostgreSQL server on 127.0.0.1, for the tests and the benchmarks.

``initdb`` and ``pg_ctl`` come from ``$TLOG_PG_BIN``, ``/usr/lib/postgresql/<version>/bin``
(newest first) or ``PATH``. PostgreSQL refuses to run as root, so as root the cluster runs as
the ``postgres`` system user (created by the Debian package), or as a ``tlog-pg`` system user
created here; otherwise as the current user. Every cluster listens on 127.0.0.1 only, runs
with ``fsync = on`` and trusts local connections (it holds test data only).

:func:`postgres_missing` says why PostgreSQL cannot run here (a test skips with it:
``tests/pgsupport.py``); :class:`PgCluster` raises :class:`harness.Unavailable` with that
reason. A primary with a synchronous standby is :mod:`harness.pgreplica`.

**No cluster outlives the process that made it.** ``pg_ctl`` detaches the postmaster, so a
run killed mid-way (SIGKILL, a CI timeout) would leave it running, with its directory in
/dev/shm. So every :class:`PgCluster` has a watchdog (``harness/pgwatchdog.py``, in its own
session) that holds the read end of a pipe only the owning process can write: when that
process is gone, however it ended, the watchdog stops the cluster and deletes its directory.
The directory also names its owner (``owner``: pid and start time), and :func:`reap_stale`
(run when a test session starts its first cluster) removes any ``tlog-pg-*`` cluster whose
owner is dead, in case a watchdog was killed too. Clusters without an ``owner`` file are
never touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Unavailable, pgwatchdog
from harness.net import free_port

__all__ = [
    "SUPERUSER",
    "PgCluster",
    "memory_dir",
    "pg_bin_dir",
    "pg_os_user",
    "postgres_missing",
    "reap_stale",
]

SUPERUSER = "tlog"
_schemas = itertools.count()


def pg_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    env = os.environ.get("TLOG_PG_BIN")
    candidates = [Path(env)] if env else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted(
            (p for p in root.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name)
        )
        candidates += [p / "bin" for p in versions]
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def pg_os_user() -> str | None:
    """The OS user the cluster runs as: None for the current user (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tlog-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "tlog-pg"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return "tlog-pg"


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot run here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'tlog[postgres]')"
    if pg_bin_dir() is None:
        return (
            "PostgreSQL is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or "
            "PATH; apt-get install postgresql)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    return None


class PgCluster:
    """One PostgreSQL server in its own temporary directory."""

    def __init__(
        self,
        conf: dict[str, str] | None = None,
        *,
        port: int | None = None,
        tmp_root: str | None = None,
    ) -> None:
        bindir = pg_bin_dir()
        if bindir is None:
            raise Unavailable(postgres_missing() or "no PostgreSQL")
        self.bin = bindir
        self.user = pg_os_user()
        self.base = Path(tempfile.mkdtemp(prefix="tlog-pg-", dir=tmp_root))
        (self.base / OWNER_FILE).write_text(_owner_text(os.getpid()) or "")
        self._watchdog = _start_watchdog(self.base, self.bin, self.user)
        self.data = self.base / "data"
        self.port = port or free_port()
        self.conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            **(conf or {}),
        }
        if self.user is not None:
            shutil.chown(self.base, self.user)
            os.chmod(self.base, 0o700)
        self.logfile = self.base / "server.log"

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program from the bin directory, run as the cluster's OS user."""
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )

    def init(self, *initdb_args: str) -> PgCluster:
        """initdb (``initdb_args`` added, e.g. ``-X`` for a WAL directory elsewhere), then
        this cluster's settings appended to postgresql.conf."""
        r = self.run(
            "initdb",
            "-D",
            str(self.data),
            *initdb_args,
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--data-checksums",
            "--no-sync",  # the bootstrap only: the
            # server itself runs with fsync on
        )
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stdout}{r.stderr}")
        with (self.data / "postgresql.conf").open("a") as f:
            for k, v in self.conf.items():
                f.write(f"{k} = {v}\n")
        return self

    def start(self, timeout: float = 60) -> PgCluster:
        r = self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        if r.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}{log}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (or ``immediate``: like a crash, recovery at next start)."""
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
        self.release_watchdog()

    def release_watchdog(self) -> None:
        """Let the watchdog go (it finds nothing left to clean up and exits)."""
        proc, fd = self._watchdog
        if fd >= 0:
            os.close(fd)
            self._watchdog = (proc, -1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)

    def url(self, dbname: str = "postgres", schema: str | None = None) -> str:
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"
        if schema is not None:
            url += f"?options=-csearch_path%3D{schema}"
        return url

    def query(self, sql: str, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) as the superuser; its rows, if it returns any."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql.encode(), params or None)
            return cur.fetchall() if cur.description else []

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        self.query(statement, dbname=dbname)

    def new_schema(self) -> str:
        """A fresh, empty schema; returns a URL whose search_path is that schema."""
        name = f"t{os.getpid()}_{next(_schemas)}_{int(time.time() * 1000) % 10**6}"
        self.sql(f"CREATE SCHEMA {name}")
        return self.url(schema=name)


OWNER_FILE = "owner"


def _owner_text(pid: int) -> str | None:
    """``"<pid> <start time>"`` of a live process (the start time tells a reused pid apart),
    or None when it is gone."""
    fields = pgwatchdog.proc_stat(pid)
    return None if fields is None else f"{pid} {fields[19]}"  # field 22 of stat: starttime


def _start_watchdog(
    base: Path, bindir: Path, user: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    """The watchdog of the cluster in ``base`` (harness/pgwatchdog.py) and the write end of its
    pipe, held by this process only (os.pipe's ends are not inherited by children)."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", pgwatchdog.__file__, str(base), str(bindir), user or ""],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return proc, write_end


def reap_stale(roots: list[str | None]) -> list[Path]:
    """Stop and delete every ``tlog-pg-*`` cluster under ``roots`` (None: the default
    temporary directory) whose owner process is gone; returns their directories."""
    bindir = pg_bin_dir()
    if bindir is None:
        return []
    done: list[Path] = []
    for root in {Path(r or tempfile.gettempdir()) for r in roots}:
        for base in root.glob("tlog-pg-*"):
            try:
                owner = (base / OWNER_FILE).read_text().split()
            except OSError:
                continue  # not made by this harness (or not yet): not ours to judge
            if len(owner) != 2 or not owner[0].isdigit():
                continue
            if _owner_text(int(owner[0])) == " ".join(owner):
                continue  # its owner is alive
            pgwatchdog.reap(base, str(bindir), _dir_user(base))
            done.append(base)
    return done


def _dir_user(base: Path) -> str:
    """The OS user to run pg_ctl as for the cluster in ``base`` ('' for the current one)."""
    if os.geteuid() != 0:
        return ""
    try:
        return pwd.getpwuid((base / "data").stat().st_uid).pw_name
    except (OSError, KeyError):
        return ""


# The free space /dev/shm must have for the tests to put their files there: a container's
# default /dev/shm is 64 MiB, which a cluster or a session's data directories would fill
# (review 39); below it, the default temporary directory (the disk) is used.
SHM_FREE_MIN = 4 << 30


def shm_dir(path: str = "/dev/shm") -> str | None:  # noqa: S108 - throwaway test files
    """``path`` (``/dev/shm``) when it is a writable directory with at least
    ``SHM_FREE_MIN`` bytes free, else None."""
    shm = Path(path)
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    return str(shm) if st.f_bavail * st.f_frsize >= SHM_FREE_MIN else None


def memory_dir() -> str | None:
    """``/dev/shm`` when it is a writable tmpfs with room (:func:`shm_dir`;
    ``TLOG_PG_TMP`` overrides; empty: the default temporary directory)."""
    env = os.environ.get("TLOG_PG_TMP")
    if env is not None:
        return env or None
    return shm_dir()
