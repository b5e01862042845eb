"""Red team 27: ``tlog scim-proxy --pseudonym-timeout`` and a pseudonym service that answers
badly.

Found: the start-up check took any finite number of seconds, but the lookup's sockets take
the timeout as a C ``timeval``: from ~1e10 s (an operator's "no limit") every lookup raised
``OverflowError``, so every group write naming members was forwarded, applied by the SP and
answered ``503 ... its audit event could not be recorded``, a traceback in the log. Now the
proxy refuses more than a day at start-up, and so does :class:`LogPseudonyms`.

Found too: the lookups ran on the loop's default executor (CPUs + 4 threads), shared with
the proxy's ``/.tlog`` endpoints and large bodies' builds: group writes waiting on a slow
log held ``readyz`` for as long as the lookups queued before it. They have a pool of their
own now.

Held (a guard, one real proxy process): a log answering the lookup with fewer or more
pseudonyms than asked, another resource type, a pid of the wrong length, a cut body, a
500, or its answer dripped slower than its deadline: the client gets the SP's answer, and
the group's event says the members are not known, naming none of them in clear."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from client.adapters.pseudonyms import MAX_TIMEOUT, LogPseudonyms
from client.scim.cbor import EventFormatError
from tests.support import start_proxy, stop_processes

from .helpers import (
    serve_http,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)
from .intent_kills import outbox_events

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def test_a_pseudonym_timeout_past_what_a_socket_takes_is_refused() -> None:
    # the proxy's start-up refusal: test_proxy_pseudonym_timeout.py's "1e10"
    with pytest.raises(ValueError, match="at most"):
        LogPseudonyms("http://127.0.0.1:9", "t", timeout=1e10)


def test_the_longest_pseudonym_timeout_taken_is_one_a_lookup_can_use() -> None:
    # nothing listens on port 9: refused at once, an EventFormatError (the event then says
    # the members are not known), never an OverflowError out of the socket
    p = LogPseudonyms("http://127.0.0.1:9", "t", timeout=MAX_TIMEOUT)
    try:
        with pytest.raises(EventFormatError, match="member pseudonym unavailable"):
            p("User", "u1")
    finally:
        p.close()


class _HostileLog(http.server.BaseHTTPRequestHandler):
    """A log answering ``POST /v1/scim/pseudonyms`` as ``mode`` says; nothing else (503)."""

    mode: ClassVar[str] = "fewer"
    asked: ClassVar[list[int]] = []

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(503, b"{}")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        refs = json.loads(self.rfile.read(n))["refs"] if n else []
        if self.path != "/v1/scim/pseudonyms":
            self._send(503, b"{}")
            return
        self.asked.append(len(refs))
        pid = base64.b64encode(b"\x01" * 16).decode()
        out = [{"rt": r["rt"], "pid": pid} for r in refs]
        mode = self.mode
        if mode == "fewer":
            out = out[:-1]
        elif mode == "more":
            out = [*out, out[0]]
        elif mode == "other-type":
            out = [{**o, "rt": "Group"} for o in out]
        elif mode == "short-pid":
            out = [{**o, "pid": base64.b64encode(b"\x01" * 15).decode()} for o in out]
        elif mode == "error":
            self._send(500, b'{"detail": "boom"}')
            return
        body = json.dumps({"refs": out}).encode()
        if mode == "cut":
            self._send(200, body[: len(body) // 2], length=len(body))
            self.close_connection = True
        elif mode == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for b in body:  # a byte every 0.2 s: past the lookup's deadline
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass  # the proxy gave up on it
        else:
            self._send(200, body)


@pytest.fixture
def hostile_log() -> Iterator[tuple[str, type[_HostileLog]]]:
    handler = type("Log", (_HostileLog,), {"asked": []})
    with serve_http(handler) as url:
        yield url, handler


def _proxy(
    tmp_path: Path, upstream: str, log_url: str, pseudonym_timeout: str
) -> tuple[subprocess.Popen[bytes], str]:
    return start_proxy(
        tmp_path,
        upstream,
        log_url,
        "t0k",
        "acme",
        "--log-key-tofu",
        "--pseudonym-timeout",
        pseudonym_timeout,
        outbox=tmp_path / "outbox.sqlite",
    )


@pytest.mark.slow
def test_a_pseudonym_service_answering_badly_leaves_the_members_unknown_not_named(
    tmp_path: Path,
    sp: tuple[str, list[tuple[str, str]]],
    hostile_log: tuple[str, type[_HostileLog]],
) -> None:
    upstream, seen = sp
    log_url, log = hostile_log
    outbox = tmp_path / "outbox.sqlite"
    proc, base = _proxy(tmp_path, upstream, log_url, "0.3")
    try:
        modes = ["fewer", "more", "other-type", "short-pid", "error", "cut", "drip"]
        for i, mode in enumerate(modes):
            log.mode = mode
            members = [f"member-{mode}-{k}" for k in range(3)]
            req = f"rt27-{mode}"
            body = {
                "schemas": [PATCH],
                "Operations": [
                    {"op": "add", "path": "members", "value": [{"value": m} for m in members]}
                ],
            }
            r = httpx.patch(
                f"{base}/Groups/g{i}",
                json=body,
                headers={"X-Request-Id": req, "Authorization": "Bearer sp-token"},
                timeout=60,
            )
            assert r.status_code == 200, (mode, r.status_code, r.text)
            assert len(log.asked) == i + 1 and log.asked[-1] == 3, (mode, log.asked)
            (row,) = outbox_events(outbox, req)
            event = json.loads(row["body"])
            text = json.dumps(event)
            assert "pseudonym" in event["x"]["uninterpretable"], (mode, event)
            assert [a["a"] for a in event["acts"]] == ["group.uninterpretable"], (mode, event)
            assert not any(m in text for m in members), (mode, event)
        assert [p for _, p in seen] == [f"/v2/Groups/g{i}" for i in range(len(modes))]
    finally:
        stop_processes([proc])


@pytest.mark.slow
def test_lookups_waiting_on_a_slow_log_do_not_hold_the_proxys_own_endpoints(
    tmp_path: Path,
    sp: tuple[str, list[tuple[str, str]]],
    hostile_log: tuple[str, type[_HostileLog]],
) -> None:
    """60 group writes whose lookups each wait their whole deadline (6 s) on a log dripping
    its answer: they ran on the loop's default executor (CPUs + 4 threads), which the
    proxy's ``/.tlog`` endpoints and large bodies' builds share, so ``readyz`` waited for
    ~50 s of lookups queued before it (17 s under 30 writes)."""
    upstream, _ = sp
    log_url, log = hostile_log
    log.mode = "drip"
    proc, base = _proxy(tmp_path, upstream, log_url, "2")
    answers: list[int] = []

    def write(i: int) -> None:
        body = {
            "schemas": [PATCH],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": f"m{i}"}]}],
        }
        r = httpx.patch(
            f"{base}/Groups/g{i}",
            json=body,
            headers={"Authorization": "Bearer sp-token"},
            timeout=300,
        )
        answers.append(r.status_code)

    writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(60)]
    try:
        for t in writers:
            t.start()
        deadline = time.monotonic() + 30
        while len(log.asked) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # lookups waiting (the default executor's threads all taken)
        ops = base.rsplit("/v2", 1)[0] + "/.tlog"
        assert httpx.get(f"{ops}/readyz", timeout=20).status_code == 200
        for t in writers:
            t.join(300)
        assert answers == [200] * 60
    finally:
        stop_processes([proc])
