"""The adapters' own log lines carry no identifiers: a resource id in a request path (often a
user name or an e-mail address) is written as ``{id}``, as the log server and the access
log lines of uvicorn already do (:func:`client.runtime.logredact.redact_target`). The
redacting filter on the handlers scrubs credentials and query values from free text, but
cannot tell an identifier in a path from a word, so the lines must not carry one."""

from __future__ import annotations

import logging

import pytest

from client.adapters.exchange import log_access
from client.adapters.forwarder import Forwarder
from tests.support import free_port

from .hostile import call_asgi

SECRET = "alice.liddell@example.org"


def test_forwarder_warnings_carry_no_resource_id(caplog: pytest.LogCaptureFixture) -> None:
    fwd = Forwarder(f"http://127.0.0.1:{free_port()}/v2", timeout=1.0, connect_timeout=1.0)
    with caplog.at_level(logging.WARNING, logger="client.adapters.forwarder"):
        sent = call_asgi(fwd, "PATCH", f"/v2/Users/{SECRET}", body=b"{}")
    assert sent[0]["status"] == 502
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(SECRET not in line for line in lines), lines
    assert any("/v2/Users/{id}" in line for line in lines), lines


def test_default_access_hook_line_carries_no_resource_id(caplog: pytest.LogCaptureFixture) -> None:
    record = {
        "ts": 1,
        "req": "r-1",
        "m": "PATCH",
        "p": f"/Users/{SECRET}",
        "st": 401,
        "reason": "auth",
        "tenant": "t1",
        "sp": "sp1",
    }
    with caplog.at_level(logging.INFO, logger="client.scim.access"):
        log_access(record)
    (line,) = [r.getMessage() for r in caplog.records]
    assert SECRET not in line and "/Users/{id}" in line
    assert record["p"] == f"/Users/{SECRET}"  # the hook's record itself is not changed
