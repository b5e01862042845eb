"""The SCIM staging turn (``Backend.hold_stage_turn``) on several PostgreSQL frontends.

A frontend stages SCIM groups only while it holds the turn, keeps it while it has work and
gives it back (once its groups in flight are committed) when it is idle or, after
``STAGE_QUANTUM``, when another frontend waits for it. So the other frontend's claim of the
SCIM writer fence refuses nothing of it: under balanced load each submission is staged and
handed to the sequencer once. Before, every change of the fence's hands refused the old
holder's groups in flight (staged and sent to the database again: ~40% of the batches
under the balanced bench, most of the doubled CPU a request)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tlog.backend import StorageError, TurnTimeout
from tlog.pg import PgStorage
from tlog.scim import service as service_module

from .conftest import Harness, user_event
from .helpers import caught_up, check_receipt, frontends, readable


def test_one_frontend_holds_the_stage_turn_at_a_time(tmp_path: Path, pg_url: str) -> None:
    """The storage contract: one holder at a time (another waits, then gets
    :class:`TurnTimeout`), the holder sees that someone waits, and the next holder is told
    the fence the store holds (the last holder's claim)."""
    a = PgStorage(pg_url, replication="none")
    b = PgStorage(pg_url, replication="none")
    try:
        release, fence = a.hold_stage_turn()
        assert not a.stage_turn_wanted()
        claimed = a.claim_aux_writer()
        b.stage_timeout = 0.2
        with pytest.raises(TurnTimeout):
            b.hold_stage_turn()
        b.stage_timeout = 60.0
        got: list[bytes | None] = []
        waiter = threading.Thread(target=lambda: got.append(b.hold_stage_turn()[1]))
        waiter.start()
        for _ in range(600):
            if a.stage_turn_wanted():
                break
            waiter.join(0.05)
        assert a.stage_turn_wanted(), "the holder does not see the waiting frontend"
        assert not got
        release()
        release()  # once only: the second call does nothing
        waiter.join(60)
        assert not waiter.is_alive()
        assert got == [claimed], "the next holder was not told the store's fence"
        assert not b.stage_turn_wanted()
        with pytest.raises(TurnTimeout):
            a.stage_timeout = 0.2
            a.hold_stage_turn()
        assert fence != claimed
    finally:
        a.close()
        b.close()


def test_an_idle_frontend_gives_the_stage_turn_back(tmp_path: Path, pg_url: str) -> None:
    """Once its group writer has nothing to do, a frontend gives the turn back (it would
    otherwise keep the other frontends' SCIM writes waiting); a direct write (an erasure,
    an expiry) gives it back at once, also when its staging raised."""
    with frontends(tmp_path, pg_url) as (a, b):
        assert a.post_event(user_event("u-idle", req="req-idle")).status_code == 200
        other = b.log.storage
        assert isinstance(other, PgStorage)
        other.stage_timeout = 30.0
        release, fence = other.hold_stage_turn()  # A gave it back when idle
        release()
        assert fence is not None and fence == a.service._fence
        a.service.write(lambda tx: None)
        release, _ = other.hold_stage_turn()
        release()

        def broken(tx: Any) -> None:
            raise ValueError("this staging fails")

        with pytest.raises(ValueError):
            a.service.write(broken)  # a direct write whose staging raised: given back too
        other.stage_timeout = 5.0
        release, _ = other.hold_stage_turn()
        release()


@pytest.mark.slow
@pytest.mark.parametrize("quantum", [0.0, service_module.STAGE_QUANTUM])
def test_balanced_scim_writes_on_two_frontends_are_staged_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, quantum: float
) -> None:
    """Both frontends loaded at once (quantum 0: the turn changes hands before every group
    when the other waits): every answer is 200 with a receipt of the one log, every event
    is logged once and readable on both frontends, and no submission was refused by the
    fence and staged again (each was handed to its sequencer exactly once)."""
    monkeypatch.setattr(service_module, "STAGE_QUANTUM", quantum)
    with frontends(tmp_path, pg_url) as (a, b):
        handed: dict[str, int] = {"a": 0, "b": 0}
        lock = threading.Lock()
        for name, h in (("a", a), ("b", b)):
            storage = h.log.storage
            assert isinstance(storage, PgStorage)
            storage.stage_timeout = 60.0  # never the fallback (staging without the turn)
            real = h.service.seq.enqueue

            def enqueue(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> None:
                with lock:
                    handed[_name] += len(args[0])  # the group's leaves
                _real(*args, **kw)

            h.service.seq.enqueue = enqueue  # type: ignore[method-assign]
        answers: list[tuple[Harness, dict[str, Any], httpx.Response]] = []

        def post(h: Harness, who: str, k: int) -> None:
            for i in range(6):
                ev = user_event(f"u-{who}{k}-{i}", req=f"req-{who}{k}-{i}", xid=None)
                r = h.post_event(ev)
                with lock:
                    answers.append((h, ev, r))

        threads = [
            threading.Thread(target=post, args=(h, who, k))
            for k in range(6)
            for who, h in (("a", a), ("b", b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert len(answers) == 72
        bad = [r.text for _, _, r in answers if r.status_code != 200]
        assert not bad, bad
        indices = [check_receipt(h, r.json()) and r.json()["index"] for h, _, r in answers]
        assert len(set(indices)) == 72, "two events were given one index"
        assert handed == {"a": 36, "b": 36}, f"submissions staged again: {handed}"
        size = max(indices) + 1
        caught_up(a, size)
        caught_up(b, size)
        assert a.client.get("/checkpoint").text == b.client.get("/checkpoint").text
        for _, ev, _ in answers[::9]:
            assert readable(a, ev) and readable(b, ev)


def test_a_failed_claim_answers_the_whole_group_at_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group whose claim of the fence fails (before anything of it was staged) is answered
    with why at once: before, its submissions were dropped and waited for the commit bound
    ("has not answered a commit")."""
    with frontends(tmp_path, pg_url) as (a, _b):

        def claim() -> bytes | None:
            raise StorageError("the claim broke here")

        monkeypatch.setattr(a.log.storage, "claim_aux_writer", claim)
        r = a.post_event(user_event("u-claim", req="req-claim"))
        assert r.status_code == 503
        assert "the claim broke here" in r.text
        monkeypatch.undo()
        assert a.post_event(user_event("u-claim", req="req-claim")).status_code == 200
