"""Support for the outbox file tests (test_outbox_watch, test_review15_outbox_rescue,
test_mend13_shared_outbox_rescue, test_review16_outbox_rescue): what an outbox file holds
queued, and an outbox's files removed from under it."""

from __future__ import annotations

import os
from pathlib import Path

from client.adapters.outbox import Outbox


def pending(path: Path) -> list[str]:
    """The event ids queued in the outbox file at ``path``, sorted (opened, then closed)."""
    with Outbox(path) as again:
        return sorted(p.eid for p in again.pending())


def remove(path: Path) -> None:
    """The outbox files at ``path`` (the database, its -wal and -shm) removed."""
    for side in ("", "-wal", "-shm"):
        os.unlink(str(path) + side)
