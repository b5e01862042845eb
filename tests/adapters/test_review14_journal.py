"""review14: hostile or damaged intent journals, and recovery that one bad intent must not
hold back. Each test failed before the fix it names."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from client.adapters import outbox as outbox_mod
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import IntentJournal, Outbox

from .journals import CFG, begin_until_killed, orphan_after_a_kill
from .journals import delete_intent as _doc
from .journals import die as _die


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise AssertionError


def _dead_journal(d: Path, lines: list[bytes]) -> str:
    """A journal left by a dead instance: a free lock and one file with ``lines``."""
    d.mkdir(mode=0o700, exist_ok=True)
    ident = uuid.uuid4().hex
    (d / f"{ident}.lock").write_bytes(b"")
    (d / f"{ident}.0.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    return ident


def test_a_glob_name_never_takes_a_live_adapters_journal(tmp_path: Path) -> None:
    # Before: "*.lock" gave the ident "*", whose glob "*.*.jsonl" matched the live
    # adapter's journal: its in-flight intents became "unknown" events and settle()
    # deleted its files.
    path = tmp_path / "o.sqlite"
    live, other = Outbox(path), Outbox(path)
    try:
        j = live.intents()
        j.begin(_doc("/Users/u1", "in-flight"))
        (other.intents_dir / "*.lock").write_bytes(b"")
        (other.intents_dir / "[0-9a-f]*.lock").write_bytes(b"")
        assert other.orphaned_intents() == []
        assert j.paths[0].exists() and j._lock_path.exists()
    finally:
        live.close()
        other.close()


def test_a_symlinked_journal_file_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite"
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(json.dumps(_doc("/Users/u9", "forged")).replace(" ", "").encode() + b"\n")
    d = tmp_path / "o.sqlite.intents"
    ident = _dead_journal(d, [])
    (d / f"{ident}.0.jsonl").unlink()
    (d / f"{ident}.0.jsonl").symlink_to(outside)
    ob = Outbox(path)
    try:
        with caplog.at_level(logging.ERROR):
            (orphan,) = ob.orphaned_intents()
        assert orphan.intents == []
        assert "skipped" in caplog.text
        orphan.release()
    finally:
        ob.close()


def test_a_fifo_in_place_of_a_journal_file_never_hangs_start_up(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    d = tmp_path / "o.sqlite.intents"
    ident = _dead_journal(d, [])
    fifo = d / f"{ident}.1.jsonl"
    os.mkfifo(fifo, 0o600)
    ob = Outbox(path)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(ob.orphaned_intents()), daemon=True)
    t.start()
    t.join(10)
    try:
        assert not t.is_alive(), "start-up waits for ever on a FIFO"
        (orphan,) = got[0]
        assert orphan.intents == []
        orphan.release()
    finally:
        if t.is_alive():  # unblock the reader of the old code
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            t.join(10)
        ob.close()


def test_a_huge_journal_file_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(outbox_mod, "_JOURNAL_READ_MAX", 4096, raising=False)
    path = tmp_path / "o.sqlite"
    line = json.dumps(_doc("/Users/u1", "r1"), separators=(",", ":")).encode()
    _dead_journal(tmp_path / "o.sqlite.intents", [line, b" " * 8192])
    ob = Outbox(path)
    try:
        with caplog.at_level(logging.ERROR):
            (orphan,) = ob.orphaned_intents()
        assert orphan.intents == [] and "bytes" in caplog.text
        orphan.release()
    finally:
        ob.close()


def test_one_damaged_intent_does_not_hold_back_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: unknown_outcome_records raised on the damaged intent, the whole journal was
    # released, and at every start-up again: the good intent was never recorded.
    path = tmp_path / "o.sqlite"
    good = _doc("/Users/u1", "good")
    good["i"] = 1
    bad = _doc("/Users/u2", "bad")
    bad["i"] = 2
    bad["dig"] = "not hex"
    worse = {"i": 3, "req": "worse", "t": 5, "m": "DELETE", "p": "/Users/u3", "actor": 7}
    d = tmp_path / "o.sqlite.intents"
    ident = _dead_journal(d, [json.dumps(x).encode() for x in (good, bad, worse)])
    ob = Outbox(path)
    try:
        with caplog.at_level(logging.ERROR):
            assert AuditMiddleware(_app, CFG, ob).recover_intents() == 1
        assert [r[0] for r in ob._read("SELECT req FROM events")] == ["good"]
        assert not (d / f"{ident}.lock").exists()  # settled: not tried again
        assert "damaged" in caplog.text
    finally:
        ob.close()


def test_a_new_journals_lock_is_never_seen_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the lock file was created, then locked; a peer's start-up in between took it
    # as a dead instance's and removed it: the new journal had no lock file, so after a
    # kill its intents were never recovered.
    path = tmp_path / "o.sqlite"
    peer, ob = Outbox(path), Outbox(path)
    peer.intents_dir.mkdir(mode=0o700)
    real = fcntl.flock
    busy = [False]

    def flock(fd: int, op: int) -> None:
        if not busy[0]:
            busy[0] = True
            try:
                for orphan in peer.orphaned_intents():
                    orphan.settle()
            finally:
                busy[0] = False
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        j = ob.intents()
        monkeypatch.setattr(fcntl, "flock", real)
        assert j._lock_path.exists()
        j.begin(_doc("/Users/u1", "r1"))
        _die(j)
        (orphan,) = peer.orphaned_intents()
        assert [d["req"] for d in orphan.intents] == ["r1"]
        orphan.release()
    finally:
        monkeypatch.setattr(fcntl, "flock", real)
        ob._journal = None
        ob.close()
        peer.close()


def test_the_journal_directory_is_owner_only_even_if_it_was_not(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    d = tmp_path / "o.sqlite.intents"
    d.mkdir()
    os.chmod(d, 0o777)
    ob = Outbox(path)
    try:
        j = ob.intents()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        for p in (j.paths[0], j._lock_path):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
    finally:
        ob.close()


def test_a_symlinked_journal_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "o.sqlite.intents").symlink_to(elsewhere)
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        with pytest.raises(outbox_mod.OutboxError):
            ob.intents()
        assert list(elsewhere.iterdir()) == []
    finally:
        ob.close()


class _Killed(Exception):
    pass


@pytest.mark.parametrize("stop", ["emptied", "half-copied", "copied"])
def test_a_kill_mid_switch_keeps_every_intent_in_flight_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """Many intents in flight, small files: killed while switching (the other file just
    emptied, the in-flight intents half copied into it, or all copied and the new line not
    yet): every intent in flight is recovered, none twice, and nothing done comes back."""
    monkeypatch.setattr(outbox_mod, "_INTENTS_SIZE", 4096)
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    j = ob.intents()
    real_map_empty = IntentJournal._map_empty

    def map_empty(self: IntentJournal, k: int, size: int) -> None:
        real_map_empty(self, k, size)
        if self._cur == k or not self._kept:
            return  # the first file, or a switch with nothing in flight
        m = self._maps[k]
        assert m is not None
        kept = b"".join(self._kept.values())  # what the switch copies
        if stop == "half-copied":
            m[: len(kept) // 2] = kept[: len(kept) // 2]
        elif stop == "copied":
            m[: len(kept)] = kept
        raise _Killed

    in_flight: list[int] = []
    done: list[int] = []
    monkeypatch.setattr(IntentJournal, "_map_empty", map_empty)
    with pytest.raises(_Killed):
        begin_until_killed(j, in_flight, done)
    with orphan_after_a_kill(ob, j, path) as orphan:
        got = [d["i"] for d in orphan.intents]
        # the begin whose append was killed was never acknowledged (nothing forwarded)
        assert got == in_flight or got == in_flight[:-1]
        assert not set(got) & set(done)
