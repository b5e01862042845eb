"""A PostgreSQL primary with a synchronous streaming standby on 127.0.0.1, for the failover
tests and the PostgreSQL benchmark (``bench/pg.py``).

Built on :class:`harness.pg.PgCluster` (one server each): the primary runs with
``wal_level = replica`` and ``synchronous_standby_names = '*'`` (whichever standby streams is
the synchronous one, so the same setting still holds after a promotion), the standby is made by
``pg_basebackup -R`` and streams from it, so a COMMIT on the primary returns only once the
standby has flushed the commit record (``synchronous_commit = on``, or ``remote_apply``).

* :meth:`Replicated.kill_primary` SIGKILLs every process of the primary at once (the machine
  is gone: no shutdown checkpoint, no goodbye to the standby); the dead node is never started
  again as a primary;
* :meth:`Replicated.promote` makes the standby the primary (``pg_ctl promote``);
* :meth:`Replicated.add_standby` makes a new synchronous standby of the current primary, as
  Patroni re-seeds the old primary after a failover. Until one streams, commits on a primary
  with ``synchronous_standby_names`` set wait: nothing is acknowledged without a second copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from harness import Unavailable
from harness.pg import SUPERUSER, PgCluster, pg_bin_dir, postgres_missing
from harness.pgwatchdog import alive, descendants, postmaster_pid

__all__ = ["Replicated", "replication_missing"]


def replication_missing() -> str | None:
    """Why a replicated pair cannot run here, or None."""
    reason = postgres_missing()
    if reason is not None:
        return reason
    b = pg_bin_dir()
    if b is None or not (b / "pg_basebackup").is_file():
        return "pg_basebackup is not installed (apt-get install postgresql)"
    return None


class Node(PgCluster):
    """A :class:`PgCluster` that can also be killed outright, promoted and queried."""

    name: str = ""

    def postmaster(self) -> int | None:
        pid = postmaster_pid(self.data)
        return pid if pid is not None and alive(pid) else None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once: a lost machine, not a shutdown."""
        pid = self.postmaster()
        if pid is None:
            return
        pids = [pid, *descendants(pid)]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes survived SIGKILL")
            time.sleep(0.02)

    def promote(self) -> None:
        r = self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote", timeout=70)
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: promote failed: {r.stdout}{r.stderr}")

    def destroy(self) -> None:
        # Test data only: no clean shutdown needed (pg_ctl stop costs seconds here), and the
        # directory (tens of MB of WAL and catalog files) is removed in the background.
        self.kill()
        if self.base.is_dir():
            subprocess.Popen(
                ["rm", "-rf", "--", str(self.base)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self.release_watchdog()


class Replicated:
    """A primary and (unless ``standby=False``) one synchronous streaming standby."""

    def __init__(
        self,
        *,
        standby: bool = True,
        synchronous_commit: str = "on",
        conf: dict[str, str] | None = None,
    ) -> None:
        reason = replication_missing()
        if reason is not None:
            raise Unavailable(reason)
        self.nodes: list[Node] = []
        self.primary = self._node(
            {
                "wal_level": "replica",
                "max_wal_senders": "8",
                "wal_keep_size": "'256MB'",
                "synchronous_standby_names": "'*'" if standby else "''",
                "synchronous_commit": synchronous_commit,
                "shared_buffers": "64MB",
                **(conf or {}),
            }
        )
        try:
            self.primary.init()
            with (self.primary.data / "pg_hba.conf").open("a") as f:
                f.write(f"host replication {SUPERUSER} 127.0.0.1/32 trust\n")
            self.primary.start()
            self.standby: Node | None = None
            if standby:
                self.add_standby()
        except BaseException:
            self.close()
            raise

    def _node(self, conf: dict[str, str] | None = None) -> Node:
        node = Node(conf)
        node.name = f"node{len(self.nodes) + 1}"
        self.nodes.append(node)
        return node

    def add_standby(self, timeout: float = 60) -> Node:
        """A new synchronous standby of the current primary, streaming when this returns."""
        node = self._node()
        r = node.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            SUPERUSER,
            "-D",
            str(node.data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {r.stdout}{r.stderr}")
        # The copied postgresql.conf is the primary's: this node's own port and socket go
        # last (the last setting wins). -R appends its primary_conninfo after any copied
        # from the primary's own standby days: keep only the new one, naming this node so
        # pg_stat_replication says which standby is which.
        with (node.data / "postgresql.conf").open("a") as f:
            for k in ("port", "unix_socket_directories"):
                f.write(f"{k} = {node.conf[k]}\n")
        auto = node.data / "postgresql.auto.conf"
        lines = auto.read_text().splitlines()
        conninfo = [ln for ln in lines if ln.startswith("primary_conninfo")][-1]
        lines = [ln for ln in lines if not ln.startswith("primary_conninfo")]
        lines.append(conninfo.replace("= '", f"= 'application_name={node.name} ", 1))
        auto.write_text("\n".join(lines) + "\n")
        node.start()
        self.standby = node
        self.wait_sync(node, timeout)
        return node

    def wait_sync(self, node: Node, timeout: float = 60) -> None:
        """Wait until ``node`` streams from the primary as its synchronous standby."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.primary.query(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                node.name,
            )
            if rows and rows[0][0] in ("sync", "quorum"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} is not a synchronous standby: {rows}")
            time.sleep(0.05)

    def kill_primary(self) -> Node:
        """SIGKILL the primary; returns the dead node."""
        self.primary.kill()
        return self.primary

    def promote(self) -> Node:
        """Promote the standby (after :meth:`kill_primary`): it is the primary now, with no
        standby of its own until :meth:`add_standby`."""
        assert self.standby is not None, "no standby to promote"
        self.standby.promote()
        self.primary, self.standby = self.standby, None
        deadline = time.monotonic() + 60
        while self.primary.query("SELECT pg_is_in_recovery()")[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError("the promoted standby is still in recovery")
            time.sleep(0.05)
        return self.primary

    def url(self, dbname: str = "postgres", **params: str) -> str:
        """A ``postgresql://`` URL listing every node; ``target_session_attrs=read-write``
        makes libpq connect to whichever of them is the primary now."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        opts = {"connect_timeout": "3", "target_session_attrs": "read-write", **params}
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"postgresql://{SUPERUSER}@{hosts}/{dbname}?{query}"

    def create_database(self, name: str) -> str:
        """A new database on the primary; its multi-host URL."""
        self.primary.query(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        for n in self.nodes:
            try:
                n.destroy()
            except (OSError, RuntimeError):
                pass
