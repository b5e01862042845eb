"""``tlog serve --bucket`` when the bucket cannot be read at start: a clear refusal.

The bucket's checkpoint is compared with the database before the log signs anything, so the
bucket must answer at start. An unreachable endpoint, or a store answering errors, made
``serve`` die with a Python traceback (``BucketError`` was not one of the errors the command
line reports); now it exits 1 with one ``tlog: ...`` line saying which object could not be
read and why the bucket is needed.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.tlog import tlog_cli


class _Broken(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        body = b"<Error><Code>InternalError</Code><Message>disk on fire</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = _answer


@contextmanager
def broken_s3() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["unreachable", "errors"])
def test_serve_refuses_clearly_when_the_bucket_cannot_be_read(tmp_path: Path, kind: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLOG_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_MAX_ATTEMPTS="1")

    def serve(endpoint: str) -> tuple[int, str]:
        args = ["serve", "--data", str(tmp_path / "data"), "--port", "1"]
        args += ["--bucket", "s3://public/log", "--bucket-endpoint", endpoint]
        r = tlog_cli(*args, env=env, timeout=120)
        return r.returncode, r.stderr

    if kind == "unreachable":
        rc, err = serve(_closed_port())
    else:
        with broken_s3() as url:
            rc, err = serve(url)
    assert rc == 1, err
    assert "Traceback" not in err, err
    assert "tlog: reading s3://public/log/checkpoint failed" in err, err
    assert "the bucket must answer at start" in err, err


class _Enormous(BaseHTTPRequestHandler):
    """Answers every GET with a 512 MiB body of zeros, counting what it managed to send."""

    protocol_version = "HTTP/1.1"
    sent = 0
    SIZE = 512 << 20

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(self.SIZE))
        self.send_header("ETag", '"e"')
        self.end_headers()
        chunk = bytes(1 << 16)
        try:
            for _ in range(self.SIZE // len(chunk)):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:  # the reader hung up: what we want
            pass


def test_serve_refuses_an_enormous_bucket_checkpoint_without_reading_it(tmp_path: Path) -> None:
    """A bucket (or whatever answers at its endpoint) serving an enormous ``checkpoint``:
    ``serve`` read the whole object into memory before looking at it. Now it reads at most
    one note's worth (1 MiB) and refuses in one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLOG_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_MAX_ATTEMPTS="1")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Enormous)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        args = ["serve", "--data", str(tmp_path / "data"), "--port", "1"]
        args += ["--bucket", "s3://public/log"]
        args += ["--bucket-endpoint", f"http://127.0.0.1:{srv.server_address[1]}"]
        r = tlog_cli(*args, env=env, timeout=120)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "larger than a note can be" in r.stderr, r.stderr
    # What the refusing process took off the socket is bounded by the note limit plus the
    # socket buffers, far below the object's size.
    assert _Enormous.sent < 64 << 20, _Enormous.sent
