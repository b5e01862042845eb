"""The sequencer's writer thread ending on an error nothing caught (a defect, injected here)
answers what it held and what was queued, refuses what comes after, and says so loudly:
nobody waits for a writer that is gone, and every ``done`` and ``failed`` hook runs (the
SCIM writer gives back the PostgreSQL write turn it holds for a group in ``done``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from tests.pgsupport import open_store
from tlog.log import Log
from tlog.sequencer import Sequencer, SequencerStopped

from .conftest import make_signer


class Boom(Exception):
    pass


def test_a_writer_that_dies_answers_everything_it_held_and_queued(
    tmp_path: Path, database: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(database, tmp_path)
    seq = Sequencer(
        Log(store, make_signer()), max_batch_entries=1, max_batch_age=0.0, max_backlog=1000
    )
    inside, go = threading.Event(), threading.Event()

    def checked(batch: list[object]) -> list[object]:
        inside.set()
        assert go.wait(30)
        raise Boom("injected")

    seq._checked = checked  # type: ignore[method-assign,assignment]
    seq.start()
    done: list[object] = []
    failed: list[BaseException] = []
    try:
        caplog.set_level(logging.CRITICAL, "tlog.sequencer")
        # One batch held by the writer (it dies inside it), two more queued behind it.
        for i in range(3):
            seq.enqueue([b"e%d" % i], None, [], done.append, failed=failed.append)
            if i == 0:
                assert inside.wait(30)
        go.set()

        async def refused() -> None:
            with pytest.raises(SequencerStopped, match="not accepting"):
                await asyncio.wait_for(seq.submit([b"after"]), 10)

        for _ in range(100):
            if len(done) == 3:
                break
            threading.Event().wait(0.05)
        assert len(done) == 3, done
        assert all(isinstance(d, SequencerStopped) and "writer stopped" in str(d) for d in done)
        assert len(failed) == 3
        asyncio.run(refused())
        assert any("writer stopped" in r.getMessage() for r in caplog.records)
        with store.read() as rv:
            assert rv.tree_size() == 0
    finally:
        seq.stop(timeout=5)
        store.close()
