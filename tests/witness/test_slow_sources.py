"""Sources the witness's monitor loop reads must not hold it: a log list served one byte at a
time (``log_lists`` are pulled by the same loop that polls and gossips) is cut off with a
clear error, and a normal list is still read, across a redirect as before."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from client.formats.note import FormatError
from client.witness.provision import fetch_log_list
from tests.net.helpers import DRIP_BODY, DRIP_HEAD, dripping, ends
from tests.witness.helpers import serving

LIST = b"logs/v0\nvkey example.com/log+01234567+AQ==\n"


def _fetch(url: str) -> BaseException | bytes:
    try:
        return fetch_log_list(url, timeout=0.3)
    except FormatError as exc:
        return exc


@pytest.mark.parametrize("drip", [DRIP_HEAD, DRIP_BODY], ids=["head", "body"])
def test_a_dripping_log_list_is_cut_off(drip: tuple[bytes, bytes]) -> None:
    with dripping(*drip) as url:
        got = ends(_fetch, url + "/logs.txt")
    assert isinstance(got, FormatError), got
    assert "logs.txt" in str(got)


class _Lists(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/old?x=1":
            self.send_response(302)
            self.send_header("Location", "/logs.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(LIST)))
        self.end_headers()
        self.wfile.write(LIST)


def test_a_normal_log_list_is_read_across_a_redirect() -> None:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Lists)) as srv:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        assert fetch_log_list(base + "/logs.txt") == LIST
        assert fetch_log_list(base + "/old?x=1") == LIST
