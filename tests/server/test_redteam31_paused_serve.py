"""Red team 31, attack 3 (``tlog serve`` on LMDB): the process paused (SIGSTOP) for longer
than its clients wait, with a SCIM event on its way in, then continued (SIGCONT).

Expected: the waiting client times out (nothing is acknowledged while paused); after the
resume the event the client sent may or may not have been logged, and a retry with the same
eid answers with the same leaf, so it is in the log once: the log grows by exactly one
entry, whatever the retry met."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.scim import event_to_json
from tests.server.redteam8_load import make_token, scim_event
from tests.support import start_server, stop_processes

pytestmark = pytest.mark.slow


def _size(url: str) -> int:
    text = httpx.get(url + "/checkpoint", timeout=30).text
    return int(text.splitlines()[1])


def test_a_paused_serve_times_its_client_out_and_the_retry_is_logged_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start_server(data)
    try:
        tok = make_token(data, None, "--role", "submitter", "--tenant", "acme")
        headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
        url = srv.url + "/v1/scim/events"
        first = httpx.post(
            url, content=event_to_json(scim_event("a")).encode(), headers=headers, timeout=60
        )
        assert first.status_code in (200, 201), first.text
        before = _size(srv.url)
        body = event_to_json(scim_event("paused")).encode()
        got: dict[str, Any] = {}
        sent = threading.Event()

        def client() -> None:
            try:
                sent.set()
                got["r"] = httpx.post(url, content=body, headers=headers, timeout=3)
            except httpx.HTTPError as exc:
                got["exc"] = exc

        t = threading.Thread(target=client)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            t.start()
            sent.wait(10)
            t.join(30)
            assert not t.is_alive()
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        # Nothing can be acknowledged by a stopped process: the client timed out.
        assert isinstance(got.get("exc"), httpx.TimeoutException), got
        answers = []
        for _ in range(2):  # the retry, and a second retry: the same leaf each time
            r = httpx.post(url, content=body, headers=headers, timeout=60)
            assert r.status_code in (200, 201), (r.status_code, r.text)
            answers.append(r.json())
        # The same leaf each time; the second retry at least is a duplicate (the first is one
        # when the paused request was logged after the resume).
        same = [{k: v for k, v in a.items() if k != "duplicate"} for a in answers]
        assert same[0] == same[1] and answers[0].get("leaf"), answers
        assert answers[1]["duplicate"] is True, answers
        after = _size(srv.url)
        assert after == before + 1, (before, after, answers)
    finally:
        stop_processes([srv.proc])
