"""Red team 9, the stray 503 of red team 8's "terminated after its commit was written" test
(docs/operations.md, "The stray 503"): the writer's session ended by the server right after
a commit that answered normally, its end reaching the frontend only once the next batch was
sent (after the pre-write poll, ``tlog.pg._dead_while_idle``, found nothing to read).

Documented behaviour, asserted here deterministically (the poll is made to miss the end, as
it does when the end arrives a moment after it): that batch fails before its COMMIT, so
nothing of it is written and its submitters get a clear 503 (``StorageError``); it is the
same failure, to the frontend, as a session killed in the middle of a batch (attack 1);
the log reloads and the next batch commits on a new connection, without a restart."""

from __future__ import annotations

import pytest

import tlog.pg
from client.formats.merkle import leaf_hash
from harness.pg import PgCluster
from tlog.backend import StorageError
from tlog.fsck import fsck
from tlog.log import Log
from tlog.pg import PgStorage

from .conftest import make_signer


def test_session_ended_after_a_commit_fails_only_the_next_batch_clearly(
    pg_url: str, pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = PgStorage(pg_url)
    try:
        log_ = Log(st, make_signer())
        log_.integrate([b"a", b"b"])
        writer = st._writer
        assert writer is not None
        # Ended after its last commit answered (the test waits until the backend is gone);
        # the poll before the next write is made to find nothing, as when the end arrives
        # just after it.
        pg_cluster.sql(f"SELECT pg_terminate_backend({writer.info.backend_pid}, 5000)")
        monkeypatch.setattr(tlog.pg, "_dead_while_idle", lambda conn: False)
        with pytest.raises(StorageError) as failed:
            log_.integrate([b"c"])
        assert "server closed the connection" in str(failed.value), failed.value
        assert type(failed.value) is StorageError  # not CommitUnknown: COMMIT was never sent
        assert log_._stale
        with st.read() as rv:
            assert rv.tree_size() == 2
            assert rv.index_of(leaf_hash(b"c")) is None
        assert st._writer is None  # dropped: the next write takes a new connection
        monkeypatch.undo()
        r = log_.integrate([b"c"])  # the client's retry
        assert r.indices == [2] and not log_._stale
        assert st._writer is not None and st._writer is not writer
        assert fsck(st).ok
    finally:
        st.close()
