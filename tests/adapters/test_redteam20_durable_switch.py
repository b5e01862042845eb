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
switched to."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from .helpers import run_traced

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
