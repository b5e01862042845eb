"""Stall29: the real ``tlog scim-proxy`` whose outbox (and so its intent journal) is on a
file system that stalls (``fsfreeze`` on a loop-mounted ext4), the gaps stall28 left:

* ``/.tlog/status`` (and readyz and metrics, which read the outbox too) hung on the frozen
  disk when no write had found the stall yet: SQLite writes its shared-memory map even to
  read, and that page waits for the thaw. Now each answers within ``--intent-wait`` and
  says the disk stalls (status: ``disk_stalled``; healthz: 200, alive, with the reason;
  readyz: 503 with the reason;
  metrics: ``tlog_proxy_disk_stalled 1``). The clients' timeouts are bounds: a hang fails.
* SIGTERM on the frozen disk waited for the thaw. Now the shutdown gives up after its
  bound, says in the log what it left unflushed and that the next start recovers it, and
  the process exits (the kernel keeps its last thread, waiting in the frozen file system,
  until the thaw: the process is a zombie until then, nothing of it runs). After the thaw a
  restart finds every acknowledged write's event exactly once, and a refused write never
  reached the SP.
* ``--intent-wait`` is a setting, validated (``INTENT_WAIT`` was a constant).
* A journal that cannot be opened was only logged: readiness said ready while every write
  was refused. Now readyz is 503 with the reason, writes are refused with a 503 saying the
  journal is unavailable, and the proxy is ready again once the journal opens.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.adapters.exchange import INTENT_WAIT, MAX_INTENT_WAIT, AuditConfig
from client.adapters.proxy_config import ProxyConfig
from tests.support import frozen_ext4, run_tool, start_proxy, stop_processes, tlog_argv

from .helpers import (
    outbox_events,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

pytestmark = pytest.mark.slow

LOG_DOWN = "http://127.0.0.1:9"  # the log down: the outbox keeps every event
BOUND = 60  # seconds a client or the test waits at most: reached, it is a hang (a failure)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    yield from frozen_ext4(tmp_path)


def _delete(base: str, i: int) -> httpx.Response:
    headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
    return httpx.delete(f"{base}/Users/u{i}", headers=headers, timeout=BOUND)


def _ops(base: str) -> str:
    return base.rsplit("/v2", 1)[0] + "/.tlog"


@pytest.mark.parametrize("read_since_commit", [False, True], ids=["commit-last", "read-last"])
def test_the_ops_endpoints_answer_on_a_frozen_disk_before_any_write(
    tmp_path: Path, ext4: Path, sp: tuple[str, list[tuple[str, str]]], read_since_commit: bool
) -> None:
    """``read-last``: the outbox was read after its last commit, so the read after the
    freeze needs no write (its read mark is there) and is answered from memory: the write
    the ops reads make beside the outbox finds the stall (CI saw ``commit-last`` answered
    so, a read of the relay's having come between the commit and the freeze)."""
    upstream, seen = sp
    outbox = ext4 / "outbox.sqlite"
    proc, base = start_proxy(
        tmp_path, upstream, LOG_DOWN, "t0k", "acme", "--intent-wait", "1", outbox=outbox
    )
    ops = _ops(base)
    frozen = False
    try:
        s = httpx.get(f"{ops}/status", timeout=BOUND)
        assert s.status_code == 200 and s.json()["disk_stalled"] is False, s.text
        assert s.json()["pending"] == 0
        # a commit since the endpoints' last read: their next read of the outbox writes
        # its read mark into the WAL's shared memory, which the freeze holds
        assert _delete(base, 0).status_code == 204
        if read_since_commit:
            s = httpx.get(f"{ops}/status", timeout=BOUND)
            assert s.json()["pending"] == 1 and s.json()["disk_writable"] is True, s.text
        assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
        frozen = True
        # no write since the freeze: the first read of the outbox finds the stall
        for _ in range(2):  # the read held since, and a second one
            s = httpx.get(f"{ops}/status", timeout=BOUND)
            assert s.status_code == 200, s.text
            doc = s.json()
            assert doc["disk_stalled"] is True and "stalled" in doc["error"], doc
            assert "pending" not in doc  # no figure the disk would have to give
        h = httpx.get(f"{ops}/healthz", timeout=BOUND)  # alive, saying the disk stalls
        assert h.status_code == 200 and "stalled" in h.json()["error"], h.text
        assert h.json()["intent_journal"] == "stalled", h.text
        r = httpx.get(f"{ops}/readyz", timeout=BOUND)
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["disk"]["ok"] is False and "stalled" in r.text
        m = httpx.get(f"{ops}/metrics", timeout=BOUND)
        assert m.status_code == 200 and "tlog_proxy_disk_stalled 1.0" in m.text, m.text
        assert run_tool("fsfreeze", "-u", str(ext4)).returncode == 0
        frozen = False
        # thawed: the held read ends, and the endpoints read the outbox again
        deadline = time.monotonic() + BOUND
        while True:  # (the read the freeze held may first be answered slow: ops30)
            s = httpx.get(f"{ops}/status", timeout=BOUND)
            fresh = s.json().get("disk_stalled") is False and "disk_slow" not in s.json()
            if fresh or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert s.json()["disk_stalled"] is False and s.json()["pending"] == 1, s.text
        assert "disk_slow" not in s.json(), s.text
        assert httpx.get(f"{ops}/readyz", timeout=BOUND).status_code == 200
        assert httpx.get(f"{ops}/healthz", timeout=BOUND).status_code == 200
        assert "tlog_proxy_disk_stalled 0.0" in httpx.get(f"{ops}/metrics", timeout=BOUND).text
    finally:
        if frozen:
            run_tool("fsfreeze", "-u", str(ext4))
        stop_processes([proc])
    assert seen == [("DELETE", "/v2/Users/u0")]


def _state(pid: int) -> str | None:
    """The process's state letter (``/proc/<pid>/stat``), None once it is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_sigterm_on_a_frozen_disk_exits_and_loses_nothing_acknowledged(
    tmp_path: Path, ext4: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp
    outbox = ext4 / "outbox.sqlite"
    flags = ("--intent-wait", "1")
    proc, base = start_proxy(tmp_path, upstream, LOG_DOWN, "t0k", "acme", *flags, outbox=outbox)
    port = base.split(":")[2].split("/")[0]
    log = tmp_path / f"proxy-{port}.log"
    answers: dict[str, int] = {}
    frozen = False
    try:
        for i in range(3):
            answers[f"r{i}"] = _delete(base, i).status_code
        assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
        frozen = True
        # a write on the frozen disk: refused, not applied, after the 1 s intent wait
        r = _delete(base, 3)
        answers["r3"] = r.status_code
        assert r.status_code == 503 and "not applied" in r.text, r.text
        assert "not written within 1 s" in log.read_text()  # --intent-wait taken
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and _state(proc.pid) not in (None, "Z", "X"):
            time.sleep(0.1)
        # the process ended its shutdown and exited without waiting for the thaw
        assert _state(proc.pid) in (None, "Z", "X"), (_state(proc.pid), log.read_text())
        text = log.read_text()
        assert "shutdown: the audit outbox's disk did not answer" in text, text
        assert "Left unflushed:" in text and "Nothing acknowledged is lost" in text, text
        assert "The next start on this outbox" in text, text
        assert run_tool("fsfreeze", "-u", str(ext4)).returncode == 0
        frozen = False
        # reaped once the thaw frees its last thread: SIGTERM's own status (uvicorn raises
        # the signal again after its shutdown) or 1 (a shutdown left unfinished)
        assert proc.wait(BOUND) in (1, -signal.SIGTERM)
    finally:
        if frozen:
            run_tool("fsfreeze", "-u", str(ext4))
        stop_processes([proc])
    assert answers == {"r0": 204, "r1": 204, "r2": 204, "r3": 503}, answers
    # restart after the thaw: it recovers what the stalled shutdown left
    proc, _ = start_proxy(tmp_path, upstream, LOG_DOWN, "t0k", "acme", *flags, outbox=outbox)
    stop_processes([proc])
    events = outbox_events(outbox)
    applied = [p for m, p in seen if m == "DELETE"]
    assert applied == [f"/v2/Users/u{i}" for i in range(3)], seen  # r3 never reached the SP
    for req in ("r0", "r1", "r2"):  # acknowledged: its event, exactly once
        got = events.get(req, [])
        assert len(got) == 1 and got[0]["outcome"] == "success", (req, events)
    # the refused write: no event, or one saying its outcome is unknown (its intent line
    # reached the file, its "done" did not); never a success
    for ev in events.get("r3", []):
        assert ev["outcome"] == "warning" and ev["err"]["code"] == "unknown", ev
    assert len(events.get("r3", [])) <= 1, events


def test_intent_wait_is_a_validated_setting(tmp_path: Path) -> None:
    assert ProxyConfig().intent_wait == INTENT_WAIT == AuditConfig("t", "sp").intent_wait
    assert AuditConfig("t", "sp", intent_wait=0.5).intent_wait == 0.5
    for bad in (0, -1, math.nan, math.inf, MAX_INTENT_WAIT + 1, True, "5"):
        with pytest.raises(ValueError, match="intent_wait"):
            AuditConfig("t", "sp", intent_wait=bad)  # type: ignore[arg-type]
    token = tmp_path / "token"
    token.write_text("t0k")
    token.chmod(0o600)
    for bad in ("0", "nan", "301", "1e9"):  # (a negative one: refused by the flag's parser)
        p = subprocess.run(
            tlog_argv(
                "scim-proxy",
                "--upstream",
                "http://127.0.0.1:9/v2",
                "--log",
                LOG_DOWN,
                "--log-key-tofu",
                "--token-file",
                str(token),
                "--tenant",
                "acme",
                "--sp-id",
                "sp",
                "--outbox",
                str(tmp_path / "outbox.sqlite"),
                "--intent-wait",
                bad,
            ),
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert p.returncode == 2, (bad, p.returncode, p.stderr)
        assert "--intent-wait must be a number of seconds above 0 and at most 300" in p.stderr
        assert not (tmp_path / "outbox.sqlite").exists()  # refused before anything was made


def test_a_journal_that_cannot_be_opened_is_not_ready_and_refuses_writes(
    tmp_path: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp
    outbox = tmp_path / "outbox.sqlite"
    blocker = tmp_path / "outbox.sqlite.intents"
    blocker.write_text("not a directory")  # where the journal's directory goes
    proc, base = start_proxy(tmp_path, upstream, LOG_DOWN, "t0k", "acme", outbox=outbox)
    ops = _ops(base)
    try:
        r = httpx.get(f"{ops}/readyz", timeout=BOUND)
        assert r.status_code == 503, r.text
        check = r.json()["checks"]["intent_journal"]
        assert check["ok"] is False and "cannot be opened" in check["error"], check
        assert "is not a directory" in check["error"], check
        s = httpx.get(f"{ops}/status", timeout=BOUND).json()
        assert "is not a directory" in s["intent_journal_error"], s
        m = httpx.get(f"{ops}/metrics", timeout=BOUND).text
        assert "tlog_proxy_intent_journal_open 0.0" in m, m
        w = _delete(base, 0)
        assert w.status_code == 503 and "intent journal unavailable" in w.text, w.text
        assert "not applied" in w.text
        assert seen == []  # never forwarded
        blocker.unlink()
        # ready again before any write (readiness opens the journal)
        r = httpx.get(f"{ops}/readyz", timeout=BOUND)
        assert r.status_code == 200, r.text
        assert "tlog_proxy_intent_journal_open 1.0" in httpx.get(f"{ops}/metrics").text
        assert _delete(base, 1).status_code == 204
    finally:
        stop_processes([proc])
    assert seen == [("DELETE", "/v2/Users/u1")]
    assert {k: len(v) for k, v in outbox_events(outbox).items()} == {"r1": 1}
