"""Red team 8, attack 4: PostgreSQL's disk full. The log's tables live in a tablespace on a
small tmpfs of their own (the test's own cluster); a filler file takes most of it. SCIM
batches, single SCIM events and raw entries are committed by a real ``tlog serve`` until
the tablespace is full, then the filler is removed.

Expected: the commits that find no room get a clear 503 saying the disk is full, nothing
acknowledged is lost, the server keeps serving reads, and writes resume by themselves once
there is room again (no restart); every acknowledged submission is in the log once with a
verified inclusion proof, one root per size, and ``tlog fsck`` is clean."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.pg import PgCluster, memory_dir
from tests.pgsupport import running_cluster

from .redteam8_load import faulted_server, fill_then_free, small_tmpfs

pytestmark = pytest.mark.slow


def _tablespace(cluster: PgCluster, mnt: Path) -> str:
    """A tablespace in ``mnt``; returns a URL of a fresh schema whose tables go there."""
    ts = mnt / "ts"
    ts.mkdir()
    if cluster.user is not None:
        shutil.chown(ts, cluster.user)
    os.chmod(ts, 0o700)
    cluster.sql(f"CREATE TABLESPACE rt8 LOCATION '{ts}'")
    return cluster.new_schema() + "%20-cdefault_tablespace%3Drt8"


def test_postgresql_tablespace_full_during_scim_batches(tmp_path: Path) -> None:
    with (
        running_cluster(tmp_root=memory_dir()) as cluster,
        # In the cluster's directory, which its OS user can reach.
        small_tmpfs(cluster.base / "mnt", "24m") as mnt,
    ):
        try:
            _fill_and_free(tmp_path, cluster, mnt)
        finally:
            cluster.stop("fast")  # before the tmpfs is unmounted


def _fill_and_free(tmp_path: Path, cluster: PgCluster, mnt: Path) -> None:
    url = _tablespace(cluster, mnt)
    with faulted_server(tmp_path, url, 10) as run:
        load = run.load
        # Leave a few MB: the tables fill them within a few hundred batches.
        fill_then_free(mnt, load, run.srv.url, leave=3 << 20, says="disk")
        # Full: every write was refused, with the reason.
        full = [a for a in load.failures() if "disk" in a.text]
        assert full, load.summary()
        assert all("out of disk space" in a.text for a in full), [a.text for a in full][:3]
