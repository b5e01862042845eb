"""Polling and gossip against a log with only the tlog-tiles read API (Tessera, Sunlight and
other c2sp.org/tlog-tiles logs have no ``/v1/proof/consistency``).

Before, the witness took the 404 for a refused proof: after ``missing_proof_rounds`` polls
of an honest, growing tiles-only log it recorded split-view *evidence* against it, froze the
origin (422 to every push, which the log's client takes for a split-view alarm) and made
``tlog-witness check`` fail. Now it computes the proof from the log's hash tiles (checked
against the two signed roots like any proof); a log with neither gets the old rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

from client.formats.merkle import leaf_hash, verify_consistency
from client.formats.note import FormatError
from client.formats.tiles import TILE_WIDTH, parse_tile_path
from client.witness.monitor import LogClient, Monitor
from tests.witness.helpers import FakeLog, FakeLogServer, _LogHandler, events, make_witness, serving


class TilesOnlyServer(FakeLogServer):
    """/checkpoint and /tile/<L>/<N>[.p/<W>] only. ``gc_partial``: partial tiles of a
    finished full tile are gone (tlog-tiles lets a log delete them)."""

    def __init__(self, log: FakeLog, *, gc_partial: bool = False) -> None:
        super().__init__(log)
        self.RequestHandlerClass = _TilesHandler
        self.gc_partial = gc_partial


class _TilesHandler(_LogHandler):
    def do_GET(self) -> None:
        srv = cast(TilesOnlyServer, self.server)
        log = srv.log
        path = urlsplit(self.path).path
        srv.requests.append(self.path)
        if path == "/checkpoint":
            self._send(200, log.checkpoint(log.size))
            return
        try:
            tile = parse_tile_path(path.lstrip("/"))
        except FormatError:
            self._send(404, "not found\n")
            return
        n = log.size >> (8 * tile.level)
        full = n // TILE_WIDTH
        have = TILE_WIDTH if tile.index < full else n % TILE_WIDTH
        if tile.level < 0 or tile.index > full or tile.width > have:
            self._send(404, "no such tile\n")
            return
        if srv.gc_partial and tile.width < TILE_WIDTH and tile.index < full:
            self._send(404, "partial tile deleted\n")
            return
        first = tile.index * TILE_WIDTH
        data = b"".join(log._node(8 * tile.level, first + i) for i in range(tile.width))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _grow(log: FakeLog, size: int, all_events: list[bytes]) -> None:
    log.leaves = [leaf_hash(e) for e in all_events[:size]]
    log.size = size
    log._roots.clear()


def _poll_growing(tmp_path: Path, **kw: Any) -> tuple[Any, TilesOnlyServer]:
    evs = events(700)
    log = FakeLog(evs[:5])
    with serving(TilesOnlyServer(log, **kw)) as srv:
        w = make_witness(tmp_path / "w.db", [log.witnessed_log(srv.url)])
        with httpx.Client(timeout=10) as http:
            mon = Monitor(w, http=http, missing_proof_rounds=2)
            for size in (5, 9, 300, 301, 513, 700):  # partial and full tiles, two levels
                _grow(log, size, evs)
                assert mon.poll_log(w.logs[log.origin]) == 0
                latest = w.latest(log.origin)
                assert latest is not None and latest.size == size
    return w, srv


def test_polling_a_tiles_only_log_cosigns_and_records_no_evidence(tmp_path: Path) -> None:
    w, srv = _poll_growing(tmp_path)
    assert w.evidence() == []
    assert w.store.suspicions() == []
    assert any(r.startswith("/tile/") for r in srv.requests)


def test_partial_tiles_deleted_after_their_full_tile_are_read_from_it() -> None:
    """Gossip compares older sizes: the partial tiles of tree 300 are gone at 700."""
    log = FakeLog(events(700))
    with serving(TilesOnlyServer(log, gc_partial=True)) as srv, httpx.Client() as http:
        got = LogClient(log.witnessed_log(srv.url), http).consistency(290, 300)
    verify_consistency(290, 300, log.root(290), log.root(300), got.proof)
    assert "/tile/0/001.p/44" in srv.requests and "/tile/0/001" in srv.requests


def test_a_log_with_neither_proofs_nor_tiles_still_runs_out_of_rounds(tmp_path: Path) -> None:
    evs = events(20)
    log = FakeLog(evs[:4])
    with serving(FakeLogServer(log)) as srv:  # /checkpoint; proofs refused; no tiles
        srv.proof_status = 404
        w = make_witness(tmp_path / "w.db", [log.witnessed_log(srv.url)])
        with httpx.Client(timeout=10) as http:
            mon = Monitor(w, http=http, missing_proof_rounds=2)
            assert mon.poll_log(w.logs[log.origin]) == 0  # first sight: cosigned from 0
            found = []
            for size in (8, 12):
                _grow(log, size, evs)
                found.append(mon.poll_log(w.logs[log.origin]))
    assert found == [0, 1]
    (e,) = w.evidence()
    assert "did not prove consistency" in e.reason


def test_a_redirected_proof_request_proves_nothing(tmp_path: Path) -> None:
    """A 3xx is neither a proof nor a refusal (the witness follows no redirects, as for the
    log's /checkpoint): counted as an outage, never as rounds towards evidence."""
    evs = events(20)
    log = FakeLog(evs[:4])
    with serving(FakeLogServer(log)) as srv:
        w = make_witness(tmp_path / "w.db", [log.witnessed_log(srv.url)])
        with httpx.Client(timeout=10) as http:
            mon = Monitor(w, http=http, missing_proof_rounds=2)
            assert mon.poll_log(w.logs[log.origin]) == 0
            for status in (301, 302, 307, 308):
                srv.proof_status = status
                _grow(log, log.size + 2, evs)
                assert mon.poll_log(w.logs[log.origin]) == 0
    assert w.evidence() == []
    assert w.store.suspicions() == []


def test_polls_that_succeed_in_between_reset_the_refusal_rounds(tmp_path: Path) -> None:
    """Rounds towards evidence are *consecutive* refusals: a poll that cosigned with the
    log's proof in between starts the count again (it did not, so occasional refusals of an
    honest log added up to split-view evidence)."""
    evs = events(30)
    log = FakeLog(evs[:4])
    with serving(FakeLogServer(log)) as srv:  # no tiles: a 404 for the proof is a refusal
        w = make_witness(tmp_path / "w.db", [log.witnessed_log(srv.url)])
        with httpx.Client(timeout=10) as http:
            mon = Monitor(w, http=http, missing_proof_rounds=2)
            assert mon.poll_log(w.logs[log.origin]) == 0
            for status in (404, 200, 404, 200, 404, 200):
                srv.proof_status = status
                _grow(log, log.size + 2, evs)
                assert mon.poll_log(w.logs[log.origin]) == 0
    assert w.evidence() == []
    latest = w.latest(log.origin)
    assert latest is not None and latest.size == log.size
