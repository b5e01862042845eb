"""Junk pushes must not tie up the witness while it asks the log to settle them.

A push whose consistency proof fails is settled with the log's own proof, fetched from the
log *inside the request's worker thread*. Anyone can replay the log's public checkpoint with
a junk proof: before, each such push held one of the event loop's few worker threads for as
long as the log took to answer (a slow or unreachable log: the whole HTTP timeout), so a few
dozen concurrent junk pushes left no thread for anything else and every request of every log
waited, ``GET /<hash>/checkpoint`` included; each also cost the log one more proof request.
Now one settlement per log runs at a time; pushes that fail meanwhile get their 422 at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from client.net.witness_client import origin_hash
from client.witness.monitor import Monitor
from client.witness.server import start_server
from tests.witness.helpers import FakeLog, FakeLogServer, _LogHandler, events, make_witness, serving

JUNK_PUSHES = 40  # more than asyncio's default executor has threads on any machine
WAIT = 15.0  # bound on every wait here; never a pass/fail threshold on speed


class SlowProofServer(FakeLogServer):
    """Answers consistency requests only once ``release`` is set."""

    def __init__(self, log: FakeLog) -> None:
        super().__init__(log)
        self.RequestHandlerClass = _SlowProofHandler
        self.release = threading.Event()
        self.waiting = 0
        self.lock = threading.Lock()


class _SlowProofHandler(_LogHandler):
    def do_GET(self) -> None:
        srv = self.server
        assert isinstance(srv, SlowProofServer)
        if self.path.startswith("/v1/proof/consistency"):
            with srv.lock:
                srv.waiting += 1
            srv.release.wait(60)
        super().do_GET()


def test_junk_pushes_do_not_starve_the_witness(tmp_path: Path) -> None:
    honest, honest16 = FakeLog(events(10)), FakeLog(events(16))
    with serving(SlowProofServer(honest16)) as log_srv:
        w = make_witness(tmp_path / "w.db", [honest.witnessed_log(log_srv.url)])
        mon = Monitor(w, timeout=60)
        srv, _ = start_server(w)
        junk = [bytes(32)] * len(honest16.consistency_proof(10, 16))
        body = honest16.body(10, proof=junk)
        answered: list[int] = []
        pool = ThreadPoolExecutor(JUNK_PUSHES)
        try:
            with httpx.Client(timeout=WAIT) as http:
                assert http.post(srv.url + "/add-checkpoint", content=honest.body(0)).is_success

            def push() -> None:
                with httpx.Client(timeout=90) as c:
                    r = c.post(srv.url + "/add-checkpoint", content=body)
                answered.append(r.status_code)

            for _ in range(JUNK_PUSHES):
                pool.submit(push)
            # Every push either answered or waits on the log (not asserted: a bounded wait).
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and len(answered) + log_srv.waiting < JUNK_PUSHES:
                time.sleep(0.05)
            with httpx.Client(timeout=WAIT) as http:
                try:
                    r = http.get(f"{srv.url}/{origin_hash(honest.origin)}/checkpoint")
                except httpx.TimeoutException:
                    r = None
            assert r is not None, "the witness did not answer while junk pushes were settled"
            assert r.status_code == 200 and r.text.startswith(honest.checkpoint_text(10))
            assert log_srv.waiting == 1  # one settlement asked the log; the rest did not wait
        finally:
            log_srv.release.set()
            pool.shutdown(wait=True)
            srv.shutdown()
            srv.server_close()
            mon.close()
    assert answered == [422] * JUNK_PUSHES
    assert w.evidence() == []
