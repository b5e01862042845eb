"""Review 38: the log's own events that a direct write committed but whose sequencing
failed (the ``scim/Q`` records of red team 28) are put in the log by the running server,
not only at the next start or expiry run.

Before, :meth:`tlog.scim.erasure.Erasures.start` tried once at start and never again with
the expiry off, and a failed resequencing also failed every expiry run: a retention
period (or a hold, an erasure, an expiry) whose sequencing failed stayed without its event
in the log while the server served. Here the sequencing of a retention period's event is
made to fail once (the sequencer overloaded), the answer is 202 with ``"event": "pending"``
(503 before faith30), the record is kept; the
server then puts the event in the log by itself, and forgets the record."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tlog.scim import erasure, store
from tlog.sequencer import Overloaded

from .conftest import T1, Harness, open_harness


def _unlogged(h: Harness) -> int:
    with h.log.storage.read() as rv:
        return sum(1 for _ in rv.aux_range(store.unlogged_prefix()))


def test_an_event_whose_sequencing_failed_reaches_the_log_without_a_restart(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure, "RESEQUENCE_EVERY", 0.2)
    # the expiry off: nothing else would look for the record until a restart
    with open_harness(tmp_path, database=database, scim_expiry_interval=0.0) as h:
        seq = h.service.seq
        real = seq.submit
        failed: list[int] = []

        async def overloaded_once(leaves, *a, **k):  # type: ignore[no-untyped-def]
            if not failed:
                failed.append(len(leaves))
                raise Overloaded("the sequencer's queue is full")
            return await real(leaves, *a, **k)

        monkeypatch.setattr(seq, "submit", overloaded_once)
        size = h.log.latest.size
        r = h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))
        # done, its event pending (faith30; before: 503 for a period that was set)
        assert r.status_code == 202 and r.json()["event"] == "pending", r.text
        assert failed == [1]
        deadline = time.monotonic() + 30
        while _unlogged(h) or h.log.latest.size == size:
            assert time.monotonic() < deadline, "the event never reached the log"
            time.sleep(0.1)
        assert h.log.latest.size == size + 1  # the retention period's event, once


def test_an_expiry_run_goes_on_when_the_resequencing_fails(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_harness(tmp_path, database=database) as h:

        async def failing() -> int:
            raise Overloaded("the sequencer's queue is full")

        monkeypatch.setattr(h.service.erasures, "resequence", failing)
        r = h.client.post("/v1/scim/expire", json={"tenant": T1}, headers=h.h("po_a"))
        assert r.status_code == 200, r.text
