"""The TLS context of :func:`client.net.core.http_client`'s clients.

A client not given a context shares one made once a process (:func:`default_tls`): httpx
made one per client, parsing the whole CA file again, ~20 ms of CPU a client. Shared, it
must still verify: certificates required and checked against the CA bundle, host names
checked; a context given is the one used.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.net.core import HTTPCore, Unreachable, default_tls, http_client
from tests.net.helpers import answering_tls


def _context(http: httpx.Client) -> ssl.SSLContext:
    transport: Any = http._transport  # http_client's retrying wrapper of the httpx transport
    ctx: ssl.SSLContext = transport._inner._pool._ssl_context
    return ctx


def test_clients_share_one_verifying_context() -> None:
    with http_client() as a, http_client(timeout=1.0) as b:
        ctx = _context(a)
        assert _context(b) is ctx
        assert ctx is default_tls()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded


def test_a_context_given_is_the_one_used() -> None:
    mine = ssl.create_default_context()
    with http_client(verify=mine) as http:
        assert _context(http) is mine
    with http_client(verify=False) as http:
        assert _context(http).verify_mode == ssl.CERT_NONE
    assert default_tls() is not mine


def test_the_shared_context_refuses_a_certificate_no_ca_signed(tmp_path: Path) -> None:
    with answering_tls(tmp_path) as (url, _):
        core = HTTPCore(url, timeout=5.0)
        try:
            with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
                core.send("GET", "checkpoint", limit=100)
        finally:
            core.close()
