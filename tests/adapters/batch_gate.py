"""A gate before a real log for the split-request kill test (test_split19_kill): an HTTP
server that forwards every request to the log, but lets only as many event batches through
as it was told to (the others answered 503, as a log that is down), and counts the ones it
let through, so that a test can kill the adapter between two of its batches."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from client.adapters.relay import BATCH_PATH


class Gate:
    def __init__(self, log_url: str) -> None:
        self.log_url = log_url
        self.lock = threading.Lock()
        self.allow: int | None = 0  # batches still let through (None: all)
        self.passed = 0  # batches the log answered 200 through the gate
        self.url = ""

    def open(self, batches: int | None) -> None:
        with self.lock:
            self.allow = batches

    def take(self) -> bool:
        with self.lock:
            if self.allow is None:
                return True
            if self.allow <= 0:
                return False
            self.allow -= 1
            return True


def _handler(gate: Gate, client: httpx.Client) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def _forward(self, method: str) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            batch = method == "POST" and self.path.split("?")[0] == BATCH_PATH
            if batch and not gate.take():
                self._reply(503, {"retry-after": "1", "content-type": "application/json"}, b"{}")
                return
            skip = {"host", "content-length", "connection", "transfer-encoding"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            r = client.request(method, gate.log_url + self.path, headers=headers, content=body)
            if batch and r.status_code == 200:
                with gate.lock:
                    gate.passed += 1
            drop = {"content-length", "connection", "transfer-encoding", "content-encoding"}
            self._reply(
                r.status_code,
                {k: v for k, v in r.headers.items() if k.lower() not in drop},
                r.content,
            )

        def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_POST(self) -> None:
            self._forward("POST")

    return Handler


@contextmanager
def gate_before(log_url: str) -> Iterator[Gate]:
    """A :class:`Gate` before the log at ``log_url`` (its ``url`` the one to give the
    adapter), letting no batch through until opened."""
    gate = Gate(log_url)
    client = httpx.Client(timeout=60)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(gate, client))
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    gate.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield gate
    finally:
        srv.shutdown()
        srv.server_close()
        client.close()
