"""Red team 20: durable intents across the switch of the journal's files.

When the file being written fills, the intents in flight (their writes forwarded: each
flushed before, ``IntentJournal.synced``) are copied into the other file, and the file
left is emptied (truncated, zero-written, flushed) by a thread. In durable mode the copy
must be on disk before the original goes: before, the file left was truncated beside the
flusher's flush of the new one, in either order, and with no forward waiting right then
(here: the forward after the switch waits a moment) first. A machine crash between the
two lost an intent whose write the SP may have applied from both files: no "unknown"
event would ever say so. Read from the system calls (``strace -f -y``) of a child: the
first truncation of the file left must come after a completed ``fdatasync`` of the file
switched to.

Held (a guard): the switch on a real full tmpfs fails the intents that need it with
ENOSPC, keeps the one in flight, and switches once space is back."""

from __future__ import annotations

import asyncio
import errno
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters.outbox import IntentJournal, _read_journal

from .helpers import run_traced, tmpfs

_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from client.adapters.outbox import IntentJournal

    j = IntentJournal(Path(sys.argv[1]), durable=True)

    async def main():
        first = j.begin({"p": "/Users/first"})
        await j.synced(first)  # on disk: its write is forwarded, its answer not yet in
        start = j.path
        sys.stderr.write("=====forwarded\\n")
        while True:
            iid = j.begin({"p": "/Users/x", "x": "b" * 2000})
            if j.path != start:
                break
            await j.synced(iid)
            j.done(iid)
        print(start.name, j.path.name)
        time.sleep(0.5)  # the switching write's forward not yet waiting for its flush
        await j.synced(iid)
        j.done(iid)
        j.done(first)

    asyncio.run(main())
    j.close(remove=False)
    """
)


def _order(trace: str, left: str, new: str) -> list[str]:
    """The trace's events after the marker: ``synced`` (a completed ``fdatasync`` of the
    file ``new``) and ``truncated`` (a truncation of the file ``left`` begins)."""
    pending: dict[str, str] = {}
    out: list[str] = []
    started = False
    for raw in trace.splitlines():
        m = re.match(r"(\d+)\s+(.*)", raw)
        if m is None:
            continue
        pid, call = m.groups()
        if "=====forwarded" in call:
            started = True
            continue
        if not started:
            continue
        if call.startswith("fdatasync(") and f"{new}>" in call:
            if "<unfinished" in call:
                pending[pid] = new
            elif call.rstrip().endswith("= 0"):
                out.append("synced")
        elif call.startswith("<... fdatasync resumed>") and pending.pop(pid, None) == new:
            if call.rstrip().endswith("= 0"):
                out.append("synced")
        elif call.startswith("ftruncate(") and f"{left}>, 0" in call:
            out.append("truncated")
    return out


def test_the_file_left_is_emptied_only_once_the_copy_is_on_disk(tmp_path: Path) -> None:
    journal = tmp_path / "intents"
    journal.mkdir()
    out = tmp_path / "trace.txt"
    left, new = run_traced(
        out, "fdatasync,ftruncate,write", _CHILD, str(journal), options=("-y",)
    ).split()
    order = _order(out.read_text(), left, new)
    assert "truncated" in order, order
    assert "synced" in order[: order.index("truncated")], order


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "disk")


def test_a_full_disk_at_the_switch_fails_the_new_intents_and_keeps_the_old(
    small_disk: Path,
) -> None:
    """Held (a guard): a durable journal on a real 1 MiB tmpfs left with ~300 KiB, so the
    next file cannot be prepared: the intents that need the switch fail with ENOSPC (a
    write then answered 503, nothing forwarded), the intent in flight stays on disk, and
    once space is back the journal switches and takes intents again."""
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * ((1 << 20) - 300 * 1024))
    journal = IntentJournal(small_disk, durable=True)
    errors: list[int | None] = []

    async def run() -> None:
        first = journal.begin({"p": "/Users/first"})
        await journal.synced(first)
        for _ in range(300):
            try:
                iid = journal.begin({"p": "/Users/x", "x": "b" * 2000})
                await journal.synced(iid)
                journal.done(iid)
            except OSError as exc:
                errors.append(exc.errno)
        filler.unlink()
        later = journal.begin({"p": "/Users/later"})
        await journal.synced(later)

    try:
        asyncio.run(run())
        assert errors and set(errors) == {errno.ENOSPC}
        assert [d["p"] for d in _read_journal(list(journal.paths))] == [
            "/Users/first",
            "/Users/later",
        ]
    finally:
        journal.close(remove=True)
