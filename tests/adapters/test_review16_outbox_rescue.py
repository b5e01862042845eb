"""review16: the outbox rescue when the file at the path is another's and a copy goes
beside it (``<name>.rescued-<unix time>``).

Two adapters sharing one outbox, whose file was replaced by another (not holding their
events), both rescued within the same second: the second one's link to the same
``.rescued-<time>`` name failed (``FileExistsError``), it logged that writing back failed
and dropped its copy, whatever that copy held that the first one's lacked; a second apart,
both wrote a copy. Now a copy beside the path is named so that it never collides, and is
not written at all when a copy already there holds every event as this one has it."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxRecord

from .outbox_files import pending as _pending
from .outbox_files import remove as _remove


def _replace_with_one_holding(path: Path, eids: list[str]) -> None:
    """The outbox files at ``path`` removed and another outbox, queuing ``eids``, put
    there."""
    other = path.with_name("other.sqlite")
    with Outbox(other) as early:
        early.put([OutboxRecord(e, "r-" + e, "{}") for e in eids])
    _remove(path)
    os.rename(other, path)


def _rescued(tmp_path: Path) -> list[Path]:
    """The copies beside the path (not the -wal and -shm files SQLite puts beside them)."""
    return sorted(
        p for p in tmp_path.glob("outbox.sqlite.rescued-*") if not p.name.endswith(("-wal", "-shm"))
    )


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.ERROR, logger="client.adapters.outbox"):
        yield caplog


def _said(errors: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in errors.records)


def test_two_adapters_rescuing_beside_another_file_leave_one_copy(
    tmp_path: Path, errors: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    a, b = Outbox(path), Outbox(path)
    try:
        a.put([OutboxRecord(f"eid-a-{i}", f"r-a-{i}", "{}") for i in range(3)])
        b.put([OutboxRecord(f"eid-b-{i}", f"r-b-{i}", "{}") for i in range(3)])
        _replace_with_one_holding(path, ["eid-a-0"])
    finally:
        a.close()  # each notices at its stop and writes back what it holds
        b.close()
    saved = _rescued(tmp_path)
    assert len(saved) == 1, [p.name for p in tmp_path.iterdir()]
    assert _pending(saved[0]) == sorted(f"eid-{n}-{i}" for n in "ab" for i in range(3))
    assert _pending(path) == ["eid-a-0"]  # the file put at the path is left as it was
    said = _said(errors)
    assert "failed" not in said, said
    assert f"{saved[0]} already holds" in said, said


def test_a_copy_beside_the_path_that_lacks_an_event_is_not_taken_as_ours(
    tmp_path: Path, errors: pytest.LogCaptureFixture
) -> None:
    # Copies another adapter sharing the outbox wrote beside the path at about this time,
    # each lacking eid-2 (it held less): this adapter's copy is still written, under a name
    # of its own, with eid-2 in it.
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    try:
        ob.put([OutboxRecord("eid-1", "r1", "{}"), OutboxRecord("eid-2", "r2", "{}")])
        _replace_with_one_holding(path, [])
        now = int(time.time())
        for t in range(now - 1, now + 10):
            with Outbox(path.with_name(f"{path.name}.rescued-{t}")) as theirs:
                theirs.put([OutboxRecord("eid-1", "r1", "{}")])
    finally:
        ob.close()
    said = _said(errors)
    assert "failed" not in said, said
    holding = [p for p in _rescued(tmp_path) if _pending(p) == ["eid-1", "eid-2"]]
    assert len(holding) == 1, [p.name for p in tmp_path.iterdir()]
    assert f"was written to {holding[0]}" in said, said


def test_a_fifo_put_at_the_path_does_not_hang_the_stop(tmp_path: Path) -> None:
    # Whether the file at the path already holds the events was read by opening it with
    # SQLite: a FIFO there (or beside, as a .rescued- name) blocked that open until someone
    # wrote to it, and the adapter's stop with it. Only a regular file is compared now; the
    # copy goes beside the FIFO.
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ob.put([OutboxRecord("eid-1", "r1", "{}")])
    _remove(path)
    os.mkfifo(path)
    stopping = threading.Thread(target=ob.close, daemon=True)
    stopping.start()
    stopping.join(30)
    hung = stopping.is_alive()
    if hung:  # let the blocked open go on (a writer that closes at once), then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        stopping.join(60)
    assert not hung, "the stop hung opening the FIFO at the outbox path"
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    saved = _rescued(tmp_path)
    assert len(saved) == 1, [p.name for p in tmp_path.iterdir()]
    assert _pending(saved[0]) == ["eid-1"]
