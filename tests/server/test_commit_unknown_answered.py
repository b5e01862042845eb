"""A batch whose commit outcome was unknown and, read back, is not in the store: the log
says so once (``Log.integrate``: "commit outcome unknown and not found in the store"), the
submitters get 503's reason ("nothing of the batch was acknowledged"), and the sequencer
logs no traceback for it, as for the other store faults it expects (a conflict, the store
not held or unreachable). Red team 12's partition test met this at CI: a writer session
ended as dark mid-transaction printed a traceback for a case the design names."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.pgsupport import open_store
from tlog.backend import BatchWrite, CommitUnknown
from tlog.log import Log
from tlog.sequencer import Sequencer, SequencerStopped

from .conftest import make_signer


def test_an_unknown_commit_not_found_is_answered_without_a_traceback(
    tmp_path: Path,
    database: str | None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store(database, tmp_path)
    seq = Sequencer(
        Log(store, make_signer()), max_batch_entries=1, max_batch_age=0.0, max_backlog=1000
    )
    seq.start()
    try:
        caplog.set_level(logging.INFO)

        def lost(batch: BatchWrite) -> None:  # nothing written, and the answer lost
            raise CommitUnknown("the connection was lost while committing")

        async def submit(entry: bytes) -> object:
            try:
                return await asyncio.wait_for(seq.submit([entry]), 30)
            except SequencerStopped as exc:
                return exc

        with monkeypatch.context() as m:
            m.setattr(store, "commit_batch", lost)
            got = asyncio.run(submit(b"lost"))
        assert isinstance(got, SequencerStopped), got
        assert "nothing of the batch was acknowledged" in str(got), got
        said = [r for r in caplog.records if r.name.startswith("tlog")]
        assert any("not found in the store" in r.getMessage() for r in said), said
        assert not [r for r in said if r.exc_info], [r.getMessage() for r in said if r.exc_info]
        # The log carries on: the entry retried is the first one stored.
        ok = asyncio.run(submit(b"lost"))
        assert not isinstance(ok, BaseException), ok
        assert ok.indices == [0]  # type: ignore[attr-defined]
        with store.read() as rv:
            assert rv.tree_size() == 1
    finally:
        seq.stop(timeout=5)
        store.close()
