"""Events as the adapter records them from one exchange (request, status, the SP's answer),
with deterministic pseudonyms: shared by the tests that judge what a PUT left out from the
SP's answer (``x.result``)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from client.adapters.exchange import AuditConfig, Builder, Exchange

__all__ = ["exchange_event", "pid", "pid_b64"]


def pid(rt: str, ref_id: str) -> bytes:
    return hashlib.sha256(f"{rt}/{ref_id}".encode()).digest()[:16]


def pid_b64(ref_id: str, rt: str = "User") -> str:
    return base64.b64encode(pid(rt, ref_id)).decode()


def exchange_event(
    method: str,
    path: str,
    body: Any,
    status: int,
    answer: Any,
    query: bytes = b"",
    location: str | None = None,
    **cfg: Any,
) -> dict[str, Any]:
    """The one event the adapter records of ``method path`` with ``body``, answered
    ``status`` with ``answer`` (None: no body) and ``location`` (a ``Location`` header);
    ``cfg``: more of :class:`AuditConfig`."""
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", **cfg)
    scope = {"headers": [(b"content-type", b"application/scim+json")], "query_string": query}
    x = Exchange(scope, method, path, "req-1", None, json.dumps(body).encode(), 0)
    x.status = status
    x.headers = [(b"content-type", b"application/scim+json")]
    if location is not None:
        x.headers.append((b"location", location.encode()))
    x.resp_body = b"" if answer is None else json.dumps(answer).encode()
    x.t1_ns = 1_800_000_000_000_000_000
    (ev,) = Builder(config, x, pid).single().events
    return dict(ev)
