"""A witness restored from an old copy of its state is noticed by the log that pushes to it.

The witness can tell only where a log or a peer shows it its own later cosignature
(docs/witnesses.md, "A witness whose state was put back"; this one has neither), but a log
that holds its cosignature on a size can: when the witness later answers 409 with a smaller
size, it forgot what it cosigned, and could now be made to cosign a fork of it for someone
else. The log says so loudly (CRITICAL, and the push metric's
``witness_rolled_back``), then pushes on as before (its own history is intact).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from client.formats.policy import Policy
from client.witness.store import WitnessStore
from tlog.log import Log
from tlog.witnessing import WitnessPusher

from ..pgsupport import open_store
from ..support import ORIGIN
from ..witness.helpers import serving_witness_of
from .conftest import make_signer


def test_a_witness_that_forgot_what_it_cosigned_is_reported(
    tmp_path: Path, database: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    log_ = Log(open_store(database, tmp_path / "log"), make_signer())
    signer, witness, srv = serving_witness_of(
        ORIGIN, log_.vkey, tmp_path / "w.db", "w1", b"\x0a" * 32
    )
    results: list[tuple[str, str]] = []
    try:
        policy = Policy.parse(f"log {log_.vkey}\nwitness w1 {signer.vkey()} {srv.url}\nquorum w1\n")
        pusher = WitnessPusher(log_, policy, interval=0, max_backoff=5)
        pusher.on_push = lambda name, result: results.append((name, result))
        log_.integrate([b"e%d" % i for i in range(5)])
        pusher.push_once()
        with sqlite3.connect(tmp_path / "w.db") as src, sqlite3.connect(tmp_path / "old.db") as dst:
            src.backup(dst)  # the operator's backup, at size 5
        log_.integrate([b"f%d" % i for i in range(4)])
        pusher.push_once()
        assert pusher.state["w1"].cosigned_size == 9
        # The witness is restarted from the backup.
        old_store, witness.store = witness.store, WitnessStore(tmp_path / "old.db")
        old_store.close()
        log_.integrate([b"g0"])
        with caplog.at_level(logging.CRITICAL, logger="tlog.witness"):
            pusher.push_once()
        assert "WITNESS STATE ROLLED BACK" in caplog.text
        assert "w1 had cosigned tree size 9 of this log and now holds 5" in caplog.text
        assert ("w1", "witness_rolled_back") in results
        assert pusher.cosigned is not None and pusher.cosigned.size == 10  # pushes on
        assert log_.halted is None
    finally:
        srv.shutdown()
        srv.server_close()
        witness.store.close()
        log_.storage.close()
