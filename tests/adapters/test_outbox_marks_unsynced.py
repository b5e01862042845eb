"""The outbox's marks of delivery commit without an ``fsync``; its adds keep theirs.

A mark is the one write of the outbox whose loss is harmless: its events are sent again and
the log answers them as duplicates (docs/design.md, "The outbox's durability"). Shown here:

* the system calls (``strace``): a run of ``mark_delivered`` makes no ``fsync`` nor
  ``fdatasync``, and an add after it is fsynced again (the switch back to ``FULL``);
* against a real ``tlog serve``: the outbox opened from what a machine crash may leave (its
  WAL cut where the last fsynced commit ended, the marks after it gone) sends those events
  again; the log answers each as a duplicate at its first index, every receipt verifies,
  every event is delivered, and the log holds each once.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

from client.adapters.outbox import Outbox
from harness.scim import event_record

from .helpers import strace_syncs
from .logserver import Log, audit_read
from .receipt_front import Front, drain, relay_behind

# Adds (fsynced), marks alone, then an add again; the system calls of each stretch are told
# apart by the markers written to stderr between them.
_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from client.adapters.outbox import Outbox, Receipt
    from harness.scim import event_record

    o = Outbox(Path(sys.argv[1]))
    recs = [event_record(i) for i in range(12)]
    for r in recs[:6]:
        o.put([r])
    os.write(2, b"=====marks\\n")
    for i, r in enumerate(recs[:6]):
        o.mark_delivered([Receipt(r.eid, i, "AA==", i + 1, "cp")]).result()
    os.write(2, b"=====adds\\n")
    for r in recs[6:]:
        o.put([r])
    os.write(2, b"=====end\\n")
    assert o.counts() == {"pending": 6, "delivered": 6, "rejected": 0}, o.counts()
    o.close()
    """
)


def test_marks_alone_make_no_fsync_and_adds_still_do(tmp_path: Path) -> None:
    syncs = strace_syncs(tmp_path, _SCRIPT, str(tmp_path / "o.sqlite"))
    assert syncs.get("start", 0) >= 6, syncs  # each put its own commit and fsync
    assert syncs.get("marks", 0) == 0, syncs
    assert syncs.get("adds", 0) >= 6, syncs  # back to FULL for the adds


def _copy_cut(src: Path, dst: Path, wal_bytes: int) -> None:
    """The outbox ``src`` as a machine crash may leave it: the database file, and its WAL
    only up to ``wal_bytes`` (the end of the last fsynced commit)."""
    shutil.copyfile(src, dst)
    with open(f"{src}-wal", "rb") as f:
        wal = f.read()
    assert len(wal) > wal_bytes, "the marks were not written after the adds' commit"
    with open(f"{dst}-wal", "wb") as f:
        f.write(wal[:wal_bytes])


def test_marks_lost_to_a_crash_send_the_events_again_as_duplicates(
    tmp_path: Path, log: Log
) -> None:
    sub, auditor = log.tokens("t1")
    recs = [event_record(i) for i in range(40)]
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path)
    relay = relay_behind(outbox, log, sub, Front(), batch_size=15)
    try:
        outbox.put(recs)  # one FULL commit: what the crash keeps ends here
        synced = os.path.getsize(f"{path}-wal")
        relay.start()
        drain(outbox, relay, "the events delivered")
        relay.stop()
        first = {r.eid: outbox.receipt(r.eid) for r in recs}
        # Copied while the outbox is open and idle: a checkpoint would have moved the
        # marks into the database file (then the cut below would not take them back).
        _copy_cut(path, tmp_path / "cut.sqlite", synced)
        shutil.copyfile(path, tmp_path / "whole.sqlite")
        shutil.copyfile(f"{path}-wal", tmp_path / "whole.sqlite-wal")
    finally:
        relay.stop()
        outbox.close()
    assert relay.unverified == 0 and relay.delivered == 40
    assert all(r is not None and not r.duplicate for r in first.values())

    with Outbox(tmp_path / "whole.sqlite") as whole:  # the marks were committed...
        assert whole.counts() == {"pending": 0, "delivered": 40, "rejected": 0}
    again = Outbox(tmp_path / "cut.sqlite")  # ...after the last fsync: a crash loses them
    assert again.counts() == {"pending": 40, "delivered": 0, "rejected": 0}
    relay2 = relay_behind(again, log, sub, Front(), batch_size=15)
    relay2.start()
    try:
        drain(again, relay2, "the events sent again")
    finally:
        relay2.stop()
    try:
        assert relay2.unverified == 0 and relay2.delivered == 40
        assert again.counts() == {"pending": 0, "delivered": 40, "rejected": 0}
        for r in recs:
            got = again.receipt(r.eid)
            was = first[r.eid]
            assert got is not None and was is not None
            assert got.duplicate and got.index == was.index and got.leaf_hash == was.leaf_hash
    finally:
        again.close()
    logged = audit_read(log, auditor)  # each event once, every proof checked
    assert sorted(e["eid"] for e in logged) == sorted(r.eid for r in recs)
