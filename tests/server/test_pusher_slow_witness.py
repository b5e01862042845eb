"""A witness that drips its answer must not hold the log's push rounds.

Every round waits for all its pushes; before the whole-answer deadline of
:func:`client.net.core.http_client`, one witness sending a byte every 50 ms (never long
enough apart to trip the read timeout) kept the round, and so every other witness's
cosignature and ``GET /checkpoint``'s quorum, waiting for as long as it liked.
"""

from __future__ import annotations

from pathlib import Path

from client.formats.cosignature import CosignatureSigner
from client.formats.policy import Policy
from client.net.core import http_client
from tests.net.helpers import DRIP_BODY, dripping, ends
from tlog.log import Log
from tlog.witnessing import WitnessPusher

from ..pgsupport import open_store
from ..support import ORIGIN
from ..witness.helpers import serving_witness_of
from .conftest import make_signer


def test_a_dripping_witness_does_not_hold_the_round(tmp_path: Path, database: str | None) -> None:
    log_ = Log(open_store(database, tmp_path), make_signer())
    signer, good, srv = serving_witness_of(
        ORIGIN, log_.vkey, tmp_path / "w.db", "w-good", b"\x07" * 32
    )
    slow_key = CosignatureSigner("w-slow", b"\x08" * 32).vkey()
    try:
        with dripping(*DRIP_BODY) as slow_url, http_client(timeout=0.3) as http:
            policy = Policy.parse(
                f"log {log_.vkey}\n"
                f"witness slow {slow_key} {slow_url}\n"
                f"witness good {signer.vkey()} {srv.url}\n"
                "group one 1 slow good\nquorum one\n"
            )
            pusher = WitnessPusher(log_, policy, interval=0, http=http, max_backoff=5)
            log_.integrate([b"e%d" % i for i in range(3)])
            ends(pusher.push_once)
        assert pusher.cosigned is not None and pusher.cosigned.size == 3
        policy.verify_checkpoint(pusher.checkpoint(), ORIGIN)
        assert pusher.state["slow"].last_error
    finally:
        srv.shutdown()
        srv.server_close()
        good.store.close()
        log_.storage.close()
