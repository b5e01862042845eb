"""Durable write-ahead intents (``durable_intents``, ``tlog scim-proxy --durable-intents``):
an intent is on disk before its write is forwarded, so that it survives a machine crash or
power loss, not only a kill of the adapter (docs/scim-adapter.md, "Crash of the adapter").

* the system calls (``strace``) of a process forwarding writes through the middleware: each
  write's ``fdatasync`` of the journal comes before the forward's ``connect`` and the send
  of its request to the SP; without the option there is none;
* the flushes are shared: intents begun together are settled by one flush;
* an intent is in the file, read back through a fresh open, once its flush returned;
* a flush that fails (the journal's descriptor made a pipe: ``fdatasync`` refuses it) fails
  the write closed: 503, nothing forwarded, the intent done (nothing to recover).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from client.adapters.exchange import AuditConfig
from client.adapters.forwarder import Forwarder
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import IntentJournal, Outbox, _read_journal

from .durable_intents import CHILD, patch
from .helpers import (
    run_traced,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

ROOT = Path(__file__).resolve().parents[2]


def _trace(tmp_path: Path, upstream: str, durable: bool, writes: int) -> list[str]:
    """The child's traced system calls after its start-up (``fdatasync``, ``connect``,
    ``sendto``, ``write``), one a line, file descriptors named (``-y``)."""
    out = tmp_path / f"trace-{int(durable)}.txt"
    got = run_traced(
        out,
        "fdatasync,fsync,connect,sendto,write",
        CHILD,
        str(tmp_path / f"o{int(durable)}.sqlite"),
        upstream,
        "1" if durable else "0",
        str(writes),
        options=("-y", "-s", "40"),
    )
    assert got.split() == ["200"] * writes, got
    lines = out.read_text().splitlines()
    (start,) = [i for i, line in enumerate(lines) if "=====writes" in line]
    return lines[start + 1 :]


# A flush of the journal file written (``.0.jsonl``: three writes never switch to ``.1``,
# which the journal's preparing thread flushes on its own), whole on one line or, when
# another thread's call came between, begun on one ("<unfinished ...>") and ended on another.
_FLUSH = re.compile(r"^(\d+) +fdatasync\(\d+<[^>]*\.intents/[0-9a-f]{32}\.0\.jsonl>(\) = 0| <unf)")


def _journal_flushes(lines: list[str]) -> list[bool]:
    """For each line: whether a flush of the journal ended there."""
    begun: set[str] = set()
    out = []
    for line in lines:
        m = _FLUSH.match(line)
        pid = line.split(" ", 1)[0]
        if m is not None and m[2] != ") = 0":
            begun.add(pid)
            out.append(False)
        elif m is not None:
            out.append(True)
        elif pid in begun and "<... fdatasync resumed>" in line:
            begun.discard(pid)
            out.append(line.rstrip().endswith("= 0"))
        else:
            out.append(False)
    return out


def test_each_intent_is_flushed_before_its_write_is_forwarded(
    tmp_path: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp
    port = upstream.split(":")[2].split("/")[0]
    lines = _trace(tmp_path, upstream, True, 3)
    flushed = False
    sends = connects = 0
    for line, flush in zip(lines, _journal_flushes(lines), strict=True):
        if flush:
            flushed = True
        elif "connect(" in line and f"htons({port})" in line:
            assert flushed, "connected to the SP before the intent was flushed"
            connects += 1
        elif re.search(r'(sendto|write)\(\d+<socket:\[\d+\]>, "PATCH /v2/Users/u\d', line):
            assert flushed, f"forwarded before its intent was flushed: {line}"
            flushed = False  # the next write needs a flush of its own
            sends += 1
    assert connects >= 1 and sends == 3
    assert seen == [("PATCH", f"/v2/Users/u{i}") for i in range(3)]
    # Without the option: the same writes, no flush of the journal at all.
    assert not any(_journal_flushes(_trace(tmp_path, upstream, False, 3)))


def test_intents_begun_together_share_one_flush(tmp_path: Path) -> None:
    j = IntentJournal(tmp_path, durable=True)
    try:
        iids = [j.begin({"req": f"r{n}", "t": 1}) for n in range(10)]

        async def all_synced() -> None:
            await asyncio.gather(*(j.synced(i) for i in iids))

        asyncio.run(all_synced())
        assert j.flushes == 1
        # Read back through a fresh open of the file, after the flush returned.
        assert [d["req"] for d in _read_journal(j.paths)] == [f"r{n}" for n in range(10)]
        asyncio.run(all_synced())  # flushed already: no flush more
        assert j.flushes == 1
    finally:
        j.close(remove=True)


def test_a_journal_that_is_not_durable_never_flushes(tmp_path: Path) -> None:
    j = IntentJournal(tmp_path)
    try:
        asyncio.run(j.synced(j.begin({"req": "r", "t": 1})))
        assert j.flushes == 0
    finally:
        j.close(remove=True)


def test_a_failed_flush_answers_503_and_forwards_nothing(
    tmp_path: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp
    ob = Outbox(tmp_path / "o.sqlite")
    mw = AuditMiddleware(
        Forwarder(upstream), AuditConfig(tenant="acme", sp_id="sp1", durable_intents=True), ob
    )
    mw.intent_recovery_interval = 0
    mw.start()
    j = ob.intents()
    assert j.durable
    try:
        assert asyncio.run(patch(mw, "/v2/Users/u0")) == 200
        assert seen == [("PATCH", "/v2/Users/u0")]
        # A real fault: the journal's file descriptor now names a pipe, which fdatasync
        # refuses (EINVAL); the map still writes into the file.
        r, w = os.pipe()
        fd = j._fds[j._cur]
        assert fd is not None
        os.dup2(r, fd)
        os.close(r)
        os.close(w)
        assert asyncio.run(patch(mw, "/v2/Users/u1")) == 503
        assert seen == [("PATCH", "/v2/Users/u0")]  # nothing forwarded
        assert j.in_flight() == 0  # the intent done: nothing to recover as unknown
        assert mw.stats["refused"] == 1
    finally:
        ob.close()
