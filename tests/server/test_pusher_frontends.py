"""Two frontends on one PostgreSQL database push to the same witness.

Each frontend's checkpoint may lag the other's by a batch (docs/operations.md, "Several
frontends"). The witness then holds a size this frontend has not loaded yet, answers its push
409 with that size, and the pusher took it for "the store lost published entries" and
stopped signing for good: one witness round in the normal course of an HA deployment halted
a healthy frontend. Now the pusher reads the database's tree size first: a witness at a size
the database has is a frontend behind (it catches up and pushes later), and only a witness
ahead of the *database* halts the log (the real rollback, checked too).
"""

from __future__ import annotations

from pathlib import Path

from client.formats.cosignature import CosignatureSigner
from client.formats.note import Ed25519Verifier
from client.formats.policy import Policy
from client.witness.core import Witness, WitnessedLog
from client.witness.server import start_server
from client.witness.store import WitnessStore
from tlog.log import Log
from tlog.witnessing import WitnessPusher

from ..pgsupport import open_store
from ..support import ORIGIN
from .conftest import make_signer


def test_a_frontend_behind_another_is_not_a_rollback(tmp_path: Path, pg_url: str) -> None:
    a = Log(open_store(pg_url, tmp_path / "a"), make_signer())
    b = Log(open_store(pg_url, tmp_path / "b"), make_signer())
    signer = CosignatureSigner("w1", b"\x09" * 32)
    verifier = Ed25519Verifier.from_vkey(a.vkey)
    w = Witness(signer, [WitnessedLog(ORIGIN, (verifier,))], WitnessStore(tmp_path / "w.db"))
    srv, _ = start_server(w)
    try:
        policy = Policy.parse(f"log {a.vkey}\nwitness w1 {signer.vkey()} {srv.url}\nquorum w1\n")
        pa = WitnessPusher(a, policy, interval=0, max_backoff=5)
        pb = WitnessPusher(b, policy, interval=0, max_backoff=5)
        a.integrate([b"a%d" % i for i in range(5)])
        pa.push_once()
        assert pa.cosigned is not None and pa.cosigned.size == 5
        assert b.catch_up()  # as the sequencer does before a batch: B loads A's 5
        b.integrate([b"b%d" % i for i in range(3)])
        assert b.latest.size == 8  # B's round has not run yet
        assert a.catch_up()
        a.integrate([b"a5"])  # A loads B's 8 and commits 9, and its round runs first
        assert a.latest.size == 9
        pa.push_once()
        assert pa.cosigned is not None and pa.cosigned.size == 9
        pb.push_once()  # B, at 8, is told the witness holds 9
        assert b.halted is None, b.halted
        assert a.halted is None, a.halted
        assert "behind" in (pb.state["w1"].last_error or ""), pb.state["w1"]
        b.catch_up()
        b.integrate([b"b3"])
        pb.push_once()
        assert pb.cosigned is not None and pb.cosigned.size == 10
    finally:
        srv.shutdown()
        srv.server_close()
        w.store.close()
        a.storage.close()
        b.storage.close()
