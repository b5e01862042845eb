"""Red team 6: one cosignature line per witness key in the checkpoints the log serves.

A witness cosigns the same checkpoint again whenever it is pushed to it again (a restarted
log relearning the witness's size, its start-up check, two frontends of one database), with
a new timestamp: another valid line from the same key. The log kept every distinct line, so
after a restart its checkpoint carried two signatures from one witness key, which every
verifier refuses (signed-note: a known key signs once), and after enough restarts more than
the 100 signature lines a note may have: the log's own checkpoints no longer verified.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from client.formats.note import Ed25519Verifier, parse_note
from client.formats.policy import Policy
from client.net.logclient import LogClient
from client.witness.core import AddCheckpointError, Witness, WitnessedLog
from tests.witness.helpers import FakeClock, make_witness
from tlog.log import Log
from tlog.witnessing import WitnessPusher

from ..pgsupport import open_store
from ..support import ORIGIN
from .conftest import make_signer


def _route(witnesses: dict[str, Witness]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        w = witnesses[request.url.host.split(".")[0]]
        try:
            return httpx.Response(200, text=w.add_checkpoint(request.content))
        except AddCheckpointError as exc:
            return httpx.Response(
                exc.status, text=exc.body(), headers={"Content-Type": exc.content_type}
            )

    return httpx.MockTransport(handle)


def test_restarts_leave_one_cosignature_per_witness(tmp_path: Path, database: str | None) -> None:
    log_ = Log(open_store(database, tmp_path), make_signer())
    clock = FakeClock()
    try:
        watched = [WitnessedLog(ORIGIN, (Ed25519Verifier.from_vkey(log_.vkey),))]
        witnesses = {
            n: make_witness(
                tmp_path / f"{n[-1]}.db", watched, seed=bytes([i + 1]) * 32, name=n, clock=clock
            )
            for i, n in enumerate(["witness.test/a", "witness.test/b"])
        }
        by_host = {n.split("/")[1]: w for n, w in witnesses.items()}
        policy = Policy.parse(
            f"log {log_.vkey}\n"
            + "".join(f"witness {h} {w.vkey()} http://{h}.test\n" for h, w in by_host.items())
            + "group both all a b\nquorum both\n"
        )
        log_.integrate([b"e%d" % i for i in range(10)])
        http = httpx.Client(transport=_route(by_host))
        for restart in range(3):  # each a restarted log: a new pusher, a later clock
            clock.now += 60
            pusher = WitnessPusher(log_, policy, interval=0, http=http)
            if restart:
                pusher.check_at_startup()
            pusher.push_once()
        for note in (pusher.checkpoint(), pusher.note_for(log_.latest)):
            assert len(parse_note(note).signatures) == 3, note  # the log's, one per witness
            policy.verify_checkpoint(note, ORIGIN)
            client = LogClient("http://log.test", log_.vkey, policy=policy)
            assert client.verify_note(note).quorum is True
    finally:
        log_.storage.close()
