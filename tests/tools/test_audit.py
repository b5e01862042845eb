"""Clean, incremental and resumed audits against the real server in process."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import root_of_range
from client.formats.note import b64encode, parse_note
from client.formats.tiles import TILE_WIDTH, Tile, entry_bundles_for_size, tiles_for_size
from client.tools.auditor import Auditor, TileFrontier

from .conftest import Server


def _cp(note: str) -> Checkpoint:
    return Checkpoint.parse(parse_note(note).text)


def _state(path: Path) -> dict:
    return json.loads(path.read_text())


class CountingFetch:
    """Wraps a fetch function; records the tiles asked for; can fail after N bundles."""

    def __init__(self, fetch, fail_after_bundles: int | None = None) -> None:
        self.fetch = fetch
        self.fail_after = fail_after_bundles
        self.tiles: list[Tile] = []
        self.lock = threading.Lock()

    def __call__(self, tile: Tile) -> bytes:
        with self.lock:
            self.tiles.append(tile)
            bundles = sum(t.is_entries for t in self.tiles)
        if self.fail_after is not None and tile.is_entries and bundles > self.fail_after:
            raise ConnectionError("simulated network failure")
        return self.fetch(tile)

    @property
    def bundles(self) -> list[int]:
        return sorted(t.index for t in self.tiles if t.is_entries)


def test_clean_audit(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.add(2500)  # 4 commits; 2500 = 9 full bundles + 196
    state = tmp_path / "audit.json"
    assert server.audit(state) == 0
    out = capsys.readouterr().out
    assert "verified audit.example/log at tree size 2500" in out
    assert "first audit" in out
    cp = _cp(server.note)
    doc = _state(state)
    assert doc["checkpoint"]["size"] == doc["size"] == 2500
    assert doc["checkpoint"]["root"] == b64encode(cp.root_hash)
    assert doc["checkpoint"]["note"] == server.note
    assert doc["progress"] is None
    assert len(doc["compact_range"]) == bin(2500).count("1")
    assert [len(x) for x in doc["frontier"]] == [2500 % 256, 2500 // 256]
    # Every tile of the tree was fetched, each once, and nothing else.
    served = [p for p in server.tamper.seen if p.startswith("/tile/")]
    want = ["/" + t.path() for t in tiles_for_size(2500) + entry_bundles_for_size(2500)]
    assert sorted(served) == sorted(want)


def test_audit_without_state_and_of_an_empty_log(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.audit(None) == 0
    server.add(1)
    assert server.audit(None) == 0
    out = capsys.readouterr().out  # a run without state says what it cannot tell
    assert "first audit" not in out and "without --state FILE nothing is remembered" in out


def test_incremental_run_fetches_only_new_bundles(server: Server, tmp_path: Path) -> None:
    server.add(1300)
    state = tmp_path / "audit.json"
    client = server.client()
    first = Auditor(client, state_path=state).run()
    assert (first.checkpoint.size, first.previous_size, first.entries) == (1300, None, 1300)

    server.add(1900, tag="more")
    calls: list[tuple[int, int]] = []
    real, cached = server.log.consistency_proof, server.log.cached_consistency_proof

    def counting(old: int, size: int) -> list[bytes]:
        calls.append((old, size))
        return real(old, size)

    def counting_cached(old: int, size: int) -> list[bytes] | None:
        proof = cached(old, size)
        if proof is not None:  # else the log falls back to consistency_proof
            calls.append((old, size))
        return proof

    server.log.consistency_proof = counting  # type: ignore[method-assign]
    server.log.cached_consistency_proof = counting_cached  # type: ignore[method-assign]
    fetch = CountingFetch(server.client().fetch_tile)
    second = Auditor(server.client(), state_path=state, fetch=fetch).run()
    assert (second.previous_size, second.checkpoint.size, second.entries) == (1300, 3200, 1900)
    # Bundle 5 was partial (20 entries) at 1300: it is fetched again, nothing before it.
    assert fetch.bundles == list(range(1300 // TILE_WIDTH, (3200 - 1) // TILE_WIDTH + 1))
    assert (1300, 3200) in calls  # the log's consistency proof was checked too
    assert _state(state)["checkpoint"]["size"] == 3200

    # A third run with nothing new fetches no tiles at all.
    fetch = CountingFetch(server.client().fetch_tile)
    third = Auditor(server.client(), state_path=state, fetch=fetch).run()
    assert (third.entries, fetch.tiles) == (0, [])


def _fresh_state(server: Server, tmp_path: Path) -> dict:
    ref = tmp_path / "reference.json"
    Auditor(server.client(), state_path=ref).run()
    return _state(ref)


def test_resume_after_interruption(server: Server, tmp_path: Path) -> None:
    server.add(3000)
    state = tmp_path / "audit.json"
    fetch = CountingFetch(server.client().fetch_tile, fail_after_bundles=8)
    with pytest.raises(ConnectionError):
        Auditor(server.client(), state_path=state, fetch=fetch, workers=1).run()
    doc = _state(state)
    assert doc["checkpoint"] is None
    done = doc["progress"]["size"]
    assert 0 < done < 3000 and done % TILE_WIDTH == 0
    assert [_cp(n).size for n in doc["progress"]["pending"]] == [3000]

    server.add(100, tag="late")  # the log grows while the audit is stopped
    fetch = CountingFetch(server.client().fetch_tile)
    result = Auditor(server.client(), state_path=state, fetch=fetch).run()
    assert result.resumed_from == done
    assert result.entries == 3100 - done
    assert fetch.bundles == list(range(done // TILE_WIDTH, 3100 // TILE_WIDTH + 1))
    final = _state(state)
    assert final["progress"] is None
    assert final["checkpoint"]["size"] == 3100
    ref = _fresh_state(server, tmp_path)
    assert (final["compact_range"], final["frontier"]) == (ref["compact_range"], ref["frontier"])


def test_periodic_progress_survives_a_kill(server: Server, tmp_path: Path) -> None:
    """The state saved during the run (not on the way out) is enough to resume."""
    server.add(2600)
    state = tmp_path / "audit.json"
    killed = tmp_path / "at-kill.json"

    def progress(done: int, total: int) -> None:
        if done >= 1024 and not killed.exists():
            shutil.copy(state, killed)  # what a SIGKILL right now would leave behind
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Auditor(server.client(), state_path=state, save_interval=0.0, progress=progress).run()
    assert _state(killed)["progress"]["size"] == 1024
    shutil.copy(killed, state)
    result = Auditor(server.client(), state_path=state).run()
    assert (result.resumed_from, result.checkpoint.size) == (1024, 2600)


def test_resume_checks_the_interrupted_target(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted run's checkpoint stays a milestone: the tree must match it on the way."""
    server.add(1000)
    state = tmp_path / "audit.json"
    fetch = CountingFetch(server.client().fetch_tile, fail_after_bundles=1)
    with pytest.raises(ConnectionError):
        Auditor(server.client(), state_path=state, fetch=fetch, workers=1).run()
    server.add(500, tag="x")
    calls: list[int] = []
    frontier_root = TileFrontier.root

    def spy(self: TileFrontier) -> bytes:
        calls.append(self.size)
        return frontier_root(self)

    monkeypatch.setattr(TileFrontier, "root", spy)
    Auditor(server.client(), state_path=state).run()
    assert 1000 in calls and 1500 in calls


def test_bad_state_file_is_a_usage_error(server: Server, tmp_path: Path) -> None:
    server.add(300)
    state = tmp_path / "audit.json"
    assert server.audit(state) == 0
    doc = _state(state)
    doc["compact_range"][0] = b64encode(bytes(32))
    state.write_text(json.dumps(doc))
    assert server.audit(state) == 1
    state.write_text("{not json")
    assert server.audit(state) == 1


def test_state_of_another_log_is_refused(
    server: Server, tmp_path: Path, new_database: Callable[[], str | None]
) -> None:
    from .conftest import OTHER_SEED, serve

    server.add(10)
    state = tmp_path / "audit.json"
    with serve(tmp_path / "other", seed=OTHER_SEED, database=new_database()) as other:
        other.add(10)
        assert other.audit(state) == 0
    assert server.audit(state) == 1


def test_frontier_matches_the_oracle() -> None:
    from tests.formats.oracle import leaf_hash, mth

    data = [b"%d" % i for i in range(1100)]
    leaves = [leaf_hash(d) for d in data]
    f = TileFrontier()
    for step in (1, 255, 2, 256, 300, 17, 269):
        pos = f.size
        f.append(leaves[pos : pos + step], lambda lv, ix, hs: None)
        assert f.root() == mth(data[: f.size])
        again = TileFrontier.from_json(json.loads(json.dumps(f.to_json())))
        assert again.root() == f.root() and again.levels == f.levels
    # Deeper: level-1 tiles fill and are reported before they are folded up.
    big = TileFrontier()
    seen: list[tuple[int, int, bytes]] = []
    hs = [bytes([i % 251]) * 32 for i in range(256 * 256 + 5)]
    big.append(hs, lambda lv, ix, t: seen.append((lv, ix, b"".join(t))))
    tile_roots = [root_of_range(hs[i : i + 256]) for i in range(0, 256 * 256, 256)]
    assert seen == [(1, 0, b"".join(tile_roots))]
    assert [len(x) for x in big.levels] == [5, 0, 1]
    assert big.root() == root_of_range(hs)
    assert big.compact_range() == [
        root_of_range(hs[:65536]),
        root_of_range(hs[65536:65540]),
        hs[65540],
    ]
