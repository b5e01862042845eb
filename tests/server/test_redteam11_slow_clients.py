"""Red team 11, part 3: slow clients (slowloris) against ``tlog scim-proxy``'s listener,
the relay's entry point for SCIM traffic. ``tlog serve``'s are covered by
``tests/server/test_abuse.py`` (a dribbled head: 408; a silent connection; a slow body),
and the proxy's silent half-head there too; here the proxy's remaining case: a SCIM write
whose body is dribbled a byte at a time, never completed. Promise: the proxy cuts it after
``--body-timeout`` (bounded, no hang), the SP behind it never receives a complete request,
and nothing is recorded in the log."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.net import stop_processes
from tests.net.helpers import serving

from ..support import start_proxy, start_server

WAIT = 30.0


@pytest.mark.slow
def test_scim_proxy_cuts_a_dribbled_body_and_forwards_nothing_whole(tmp_path: Path) -> None:
    got: list[bytes] = []
    answered = threading.Event()

    def sp(conn: socket.socket, stop: threading.Event) -> None:
        """The SP: records what it receives; answers only a request whose body is whole."""
        buf = b""
        with conn:
            conn.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                got.append(data)
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep and b"content-length: 100000" in head.lower() and len(body) >= 100000:
                    answered.set()
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                elif sep and b"content-length" not in head.lower():
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    log_srv = start_server(tmp_path / "data")
    try:
        token = (tmp_path / "data" / "demo-submitter.token").read_text().strip()
        size = httpx.get(log_srv.url + "/checkpoint", timeout=WAIT).text.split("\n")[1]
        with serving(sp) as upstream:
            proc, base = start_proxy(
                tmp_path, upstream, log_srv.url, token, "default", "--body-timeout", "1", sp_id="sp"
            )
            try:
                url = httpx.URL(base)
                with socket.create_connection((url.host, url.port or 80), timeout=WAIT) as s:
                    s.sendall(
                        b"POST " + url.raw_path.rstrip(b"/") + b"/Users HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/scim+json\r\nContent-Length: 100000\r\n\r\n{"
                    )
                    closed = False
                    started = time.monotonic()
                    for _ in range(int(WAIT / 0.2)):  # a byte every 0.2 s, never the 100,000th
                        try:
                            s.sendall(b" ")
                        except (BrokenPipeError, ConnectionResetError):
                            closed = True
                            break
                        s.settimeout(0.2)
                        try:
                            if s.recv(65536) == b"":
                                closed = True
                                break
                        except TimeoutError:
                            continue
                        except ConnectionResetError:
                            closed = True
                            break
                    assert closed, f"still open after {time.monotonic() - started:.0f} s"
            finally:
                stop_processes([proc])
        assert not answered.is_set(), b"".join(got)[:300]
        assert httpx.get(log_srv.url + "/checkpoint", timeout=WAIT).text.split("\n")[1] == size
    finally:
        log_srv.stop()
