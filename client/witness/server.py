"""The witness's HTTP front end, on the standard library's ThreadingHTTPServer.

Endpoints (c2sp.org/tlog-witness, submission and monitoring prefix = the server root):

* ``POST /add-checkpoint``: body as in the spec, at most 128 KiB (413 beyond, 411 without a
  Content-Length). 200 with the cosignature line, ``text/plain; charset=utf-8``; errors as
  mapped by :mod:`client.witness.core` (409 carries ``<size>\\n`` as ``text/x.tlog.size``).
* ``GET /<lowercase hex SHA-256(origin)>/checkpoint``: the latest cosigned checkpoint (log
  signature + our cosignature), 404 if we never cosigned that origin.
* ``GET /evidence``: recorded split-view evidence, JSON ``{"evidence": [...]}``.

HTTP/1.1 with keep-alive, as the spec recommends; every response has a Content-Length.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

from client.witness.core import AddCheckpointError, Witness
from client.witness_client import MAX_BODY_SIZE

__all__ = ["WitnessHTTPServer", "start_server"]

logger = logging.getLogger("client.witness.server")

_TEXT = "text/plain; charset=utf-8"
_CHECKPOINT_PATH = re.compile(r"/([0-9a-f]{64})/checkpoint")


class WitnessHTTPServer(ThreadingHTTPServer):
    """Serves one :class:`Witness`. ``url`` is ``http://host:port`` once bound."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], witness: Witness) -> None:
        self.witness = witness
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        host_s = host.decode() if isinstance(host, bytes) else host
        if ":" in host_s:
            host_s = f"[{host_s}]"
        return f"http://{host_s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, a keep-alive client's
    # delayed ACK stalls every answer by ~40 ms.
    disable_nagle_algorithm = True
    server_version = "tlog-witness"
    sys_version = ""
    timeout = 30  # seconds of socket inactivity before a connection is dropped

    @property
    def witness(self) -> Witness:
        return cast(WitnessHTTPServer, self.server).witness

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(
        self,
        status: int,
        body: str | bytes,
        content_type: str = _TEXT,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 4xx (and closing the connection)."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            self._send(411, "chunked bodies are not supported; send Content-Length\n")
            return None
        length_s = self.headers.get("Content-Length")
        if length_s is None or not length_s.isascii() or not length_s.isdigit():
            self.close_connection = True
            self._send(411, "Content-Length required\n")
            return None
        length = int(length_s)
        if length > MAX_BODY_SIZE:
            self.close_connection = True
            self._send(413, f"body larger than {MAX_BODY_SIZE} bytes\n")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            self._send(400, "truncated body\n")
            return None
        return body

    def do_POST(self) -> None:
        try:
            if self.path != "/add-checkpoint":
                self.close_connection = True
                self._send(404 if self.path.startswith("/") else 400, "not found\n")
                return
            body = self._read_body()
            if body is None:
                return
            try:
                cosigs = self.witness.add_checkpoint(body)
            except AddCheckpointError as exc:
                logger.info("add-checkpoint: %d %s", exc.status, exc)
                self._send(exc.status, exc.body(), exc.content_type)
                return
            self._send(200, cosigs)
        except Exception:
            logger.exception("add-checkpoint: internal error")
            self.close_connection = True
            self._send(500, "internal error\n")

    def do_GET(self) -> None:
        try:
            m = _CHECKPOINT_PATH.fullmatch(self.path)
            if m is not None:
                note = self.witness.checkpoint_by_hash(m.group(1))
                if note is None:
                    self._send(404, "no cosigned checkpoint for this origin\n")
                else:
                    self._send(200, note, headers={"Cache-Control": "no-cache"})
                return
            if self.path == "/evidence":
                doc = {"evidence": [e.to_json() for e in self.witness.evidence()]}
                self._send(200, json.dumps(doc, indent=1) + "\n", "application/json")
                return
            if self.path == "/add-checkpoint":
                self._send(405, "use POST\n", headers={"Allow": "POST"})
                return
            self._send(404, "not found\n")
        except Exception:
            logger.exception("GET %s: internal error", self.path)
            self.close_connection = True
            self._send(500, "internal error\n")

    do_HEAD = do_GET

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._send(405, "method not allowed\n", headers={"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed


def start_server(
    witness: Witness, host: str = "127.0.0.1", port: int = 0
) -> tuple[WitnessHTTPServer, threading.Thread]:
    """Bind and serve in a daemon thread. Stop with ``server.shutdown(); server.server_close()``."""
    server = WitnessHTTPServer((host, port), witness)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="witness-http", daemon=True
    )
    thread.start()
    return server, thread
