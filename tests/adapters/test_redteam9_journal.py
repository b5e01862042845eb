"""redteam9: the intent journal's file switch off the event loop, and a check on every line.

Before, switching files emptied and allocated the next 256 KiB file on the event loop (a
slow disk stalled every request meanwhile), and a journal line damaged into another valid
intent (a digit flipped in its time, number or path) was recovered as if it were real.
Each test failed before the change it names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from client.adapters import outbox as outbox_mod
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import IntentJournal, Outbox

from .journals import CFG, begin_until_killed, orphan_after_a_kill
from .journals import call as _call
from .journals import delete_intent as _doc
from .journals import die as _die

ROOT = Path(__file__).resolve().parents[2]


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    status = 200 if scope["method"] == "GET" else 204
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


# --- the switch -----------------------------------------------------------------------------


def test_requests_get_through_while_the_next_file_is_prepared_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file system call that allocates a journal file is held (a slow disk) from the
    first switch on: the switch, and then reads and writes through the middleware, all
    finish while it is still held. Before, the switch itself made that call on the event
    loop: nothing got through until it returned."""
    monkeypatch.setattr(outbox_mod, "_INTENTS_SIZE", 4096)
    ob = Outbox(tmp_path / "o.sqlite")
    mw = AuditMiddleware(_app, CFG, ob)
    mw.intent_recovery_interval = 0
    mw.start()
    j = mw._journal
    assert j is not None
    j._spare_map(1, 4096)  # (the first preparation done: what a running adapter has)
    j._spare = None
    held, entered, through = threading.Event(), threading.Event(), threading.Event()
    armed = [True]
    real = os.posix_fallocate

    def slow(fd: int, offset: int, size: int) -> None:
        if armed[0]:
            entered.set()
            held.wait(60)  # a disk that takes its time
        real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", slow)
    results: list[int] = []

    async def drive() -> None:
        first = j._cur
        n = 0
        while j._cur == first:  # writes until one switches files
            results.append(await _call(mw, "DELETE", f"/Users/fill-{n}"))
            n += 1
        # the file left is being allocated now, held (its thread may not have got there
        # when the switch's request returned: proxy29's faster requests were often first)
        assert await asyncio.to_thread(entered.wait, 30)
        # unrelated requests, and writes that fit in the current file
        results.extend(await asyncio.gather(*(_call(mw, "GET", "/Users") for _ in range(20))))
        results.append(await _call(mw, "DELETE", "/Users/after-1"))
        results.append(await _call(mw, "DELETE", "/Users/after-2"))
        through.set()

    loop = threading.Thread(target=lambda: asyncio.run(drive()))
    loop.start()
    try:
        got_through = through.wait(30) and entered.is_set() and not held.is_set()
    finally:
        armed[0] = False
        held.set()
        loop.join(60)
    assert not loop.is_alive()
    assert got_through, (entered.is_set(), len(results))
    assert set(results) <= {200, 204}, results
    assert j.in_flight() == 0
    mw.own = True
    mw.close()


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("stop", ["preparing", "prepared", "half-handed-over", "handed-over"])
def test_a_kill_at_the_hand_off_keeps_every_intent_in_flight_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """Killed while the thread empties the file just left (nothing there is needed any
    more), once it has prepared it, or while the next switch copies the intents in flight
    into the prepared file: each intent in flight is recovered once, nothing done comes
    back, and nothing is damaged."""
    monkeypatch.setattr(outbox_mod, "_INTENTS_SIZE", 4096)
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    j = ob.intents()
    switches = [0]
    real_hand_over = IntentJournal._hand_over
    real_map_empty = IntentJournal._map_empty

    def hand_over(self: IntentJournal, m: Any, kept: bytes, line: bytes) -> None:
        switches[0] += 1
        if switches[0] == 3 and stop == "half-handed-over":
            at = len(outbox_mod._HEADER)
            m[at : at + len(kept) // 2] = kept[: len(kept) // 2]
            raise _Killed
        real_hand_over(self, m, kept, line)
        if switches[0] == 3 and stop == "handed-over":
            raise _Killed  # copied, the journal not yet moved to it

    def map_empty(self: IntentJournal, k: int, size: int) -> None:
        if switches[0] == 2 and stop == "preparing" and self._cur != k:
            fd = self._fds[k]
            assert fd is not None
            os.ftruncate(fd, 0)  # the file just left emptied, nothing more: killed here
            raise _Killed
        real_map_empty(self, k, size)

    monkeypatch.setattr(IntentJournal, "_hand_over", hand_over)
    monkeypatch.setattr(IntentJournal, "_map_empty", map_empty)

    def prepared() -> None:
        if stop in ("preparing", "prepared") and switches[0] == 2 and j._spare is not None:
            j._spare.join()  # the preparation ended (or was killed)
            raise _Killed

    in_flight: list[int] = []
    done: list[int] = []
    with contextlib.suppress(_Killed):
        begin_until_killed(j, in_flight, done, prepared)
    # a begin killed on its way was never acknowledged (nothing forwarded): its line may be
    # there or not (an unknown outcome for a write never sent is what a kill allows)
    unanswered = [j._n] if j._n not in (*in_flight, *done) else []
    with orphan_after_a_kill(ob, j, path) as orphan:
        got = [d["i"] for d in orphan.intents]
        assert got in (in_flight, in_flight + unanswered), (got, in_flight, unanswered)
        assert not set(got) & set(done)
        assert orphan.damaged == 0


KILLER = r"""
import os, random, signal, sys, time
from client.adapters import outbox as o

o._INTENTS_SIZE = 4096
seed, kill_at = int(sys.argv[1]), int(sys.argv[2])
rnd = random.Random(seed)
real = o.IntentJournal._map_empty
def slow(self, k, size):  # the preparation takes a while: the kill lands anywhere in it
    time.sleep(rnd.random() * 0.002)
    real(self, k, size)
o.IntentJournal._map_empty = slow
ob = o.Outbox(sys.argv[3])
j = ob.intents()
for n in range(kill_at):
    iid = j.begin({"req": f"r{n}", "t": 1, "pad": "y" * rnd.randrange(60)})
    print("B", iid, flush=True)
    if rnd.random() < 0.7:
        j.done(iid)
        print("D", iid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("seed", range(6))
def test_a_real_kill_with_the_preparation_in_flight_keeps_each_intent_once(
    tmp_path: Path, seed: int
) -> None:
    """A real ``kill -9`` of a process writing intents into small files while their
    preparations run in their thread (slowed a little at random): the acknowledged begins
    not done are exactly what recovery finds."""
    path = tmp_path / "o.sqlite"
    p = subprocess.run(
        [sys.executable, "-c", KILLER, str(seed), str(150 + 37 * seed), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    begun = [int(x.split()[1]) for x in p.stdout.splitlines() if x.startswith("B ")]
    done = {int(x.split()[1]) for x in p.stdout.splitlines() if x.startswith("D ")}
    ob = Outbox(path)
    try:
        (orphan,) = ob.orphaned_intents()
        assert [d["i"] for d in orphan.intents] == [i for i in begun if i not in done]
        assert orphan.damaged == 0
        orphan.release()
    finally:
        ob.close()


# --- the check on every line ------------------------------------------------------------------


def _journal_with(tmp_path: Path) -> tuple[Path, bytes]:
    """A dead adapter's journal: three intents begun (the second done); its file, and the
    third intent's line, the one damaged below."""
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    j = ob.intents()
    docs = [_doc(f"/Users/u{k}", f"req-{k}") for k in range(3)]
    ids = [j.begin(d) for d in docs]
    j.done(ids[1])
    _die(j)
    ob._journal = None
    ob.close()
    f = path.with_name("o.sqlite.intents") / f"{j.id}.0.jsonl"
    target = next(x for x in f.read_bytes().split(b"\n") if b'"req":"req-2"' in x)
    return f, target


def test_a_bit_flipped_anywhere_in_a_line_is_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each bit of each byte of one intent's line flipped in turn (its number, request id,
    time, method, path, digest, tenant, its check): never recovered as an intent (real or
    another), counted and logged as damaged; the other intent in flight is still
    recovered. Before, a flipped digit in the time or the number made another valid intent,
    recovered as if it were real."""
    f, target = _journal_with(tmp_path)
    pristine = f.read_bytes()
    fields = json.loads(target[: target.rindex(b',"c":')] + b"}")
    assert {"i", "req", "t", "m", "p"} <= set(fields), fields
    at = pristine.index(target)
    tried = 0
    for pos in range(len(target)):
        for bit in range(8):
            b = target[pos] ^ (1 << bit)
            if b == 0x0A:
                continue  # a newline: two lines, both damaged (below)
            data = bytearray(pristine)
            data[at + pos] = b
            f.write_bytes(bytes(data))
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                got, damaged = outbox_mod._read_journal_checked([f])
            assert [d["req"] for d in got] == ["req-0"], (pos, bit, got)
            assert damaged == 1, (pos, bit)
            assert "damaged" in caplog.text
            tried += 1
    assert tried > 8 * len(target) - 10
    # a newline put in the line: both halves are damaged, nothing else recovered
    data = bytearray(pristine)
    data[at + len(target) // 2] = 0x0A
    f.write_bytes(bytes(data))
    got, damaged = outbox_mod._read_journal_checked([f])
    assert [d["req"] for d in got] == ["req-0"] and damaged == 2


def test_a_damaged_line_is_counted_by_the_adapter_that_recovers_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f, target = _journal_with(tmp_path)
    data = f.read_bytes()
    at = data.index(target) + target.index(b'"t":') + 5
    f.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])  # a digit of its time
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        mw = AuditMiddleware(_app, CFG, ob)
        with caplog.at_level(logging.ERROR):
            assert mw.recover_intents() == 1
        assert [r[0] for r in ob._read("SELECT req FROM events")] == ["req-0"]
        assert mw.backlog()["intents_damaged"] == 1
        assert "damaged write-ahead intent line" in caplog.text
    finally:
        ob.close()


def test_the_damaged_count_is_a_proxy_metric() -> None:
    from client.adapters.proxy import _ProxyCollector

    got = {
        s.name: s.value
        for fam in _ProxyCollector(lambda: {"intents_damaged": 3}).collect()
        for s in fam.samples
    }
    assert got["tlog_proxy_intent_lines_damaged_total"] == 3


def test_a_journal_of_the_previous_version_is_still_read(tmp_path: Path) -> None:
    """Format 1 (no header, no check on its lines), as a version before wrote it: read as
    before, nothing counted damaged; a line cut short by a kill is still skipped quietly."""
    d = tmp_path / "o.sqlite.intents"
    d.mkdir(mode=0o700)
    ident = uuid.uuid4().hex
    (d / f"{ident}.lock").write_bytes(b"")
    a, b = _doc("/Users/a", "req-a"), _doc("/Users/b", "req-b")
    a["i"], b["i"] = 1, 2
    lines = [json.dumps(a).encode(), json.dumps(b).encode(), b'{"d":1}']
    (d / f"{ident}.0.jsonl").write_bytes(
        b"".join(x + b"\n" for x in lines) + b'{"i":3,"req' + bytes(200)
    )
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        (orphan,) = ob.orphaned_intents()
        assert [x["req"] for x in orphan.intents] == ["req-b"]
        assert orphan.damaged == 0
        orphan.release()
        mw = AuditMiddleware(_app, CFG, ob)
        assert mw.recover_intents() == 1
        assert mw.backlog()["intents_damaged"] == 0
    finally:
        ob.close()


def test_a_new_journal_is_of_format_2() -> None:
    """The header and the checks (what the reader keys on); the check is the CRC-32 of the
    line as it was without it."""
    line = outbox_mod._checked(b'{"i":1,"req":"x"}')
    assert line.startswith(b'{"i":1,"req":"x","c":"') and line.endswith(b'"}\n')
    assert outbox_mod._HEADER == b'{"v":2}\n'
