"""An SP behind the audit middleware, relaying to an in-process log with a SCIM service
(tests/scim_service's ``harness``): :func:`make_rig`. Its default SP, :func:`sp_app`, applies
whatever it gets; :class:`Via` carries the adapter's requests to the log's TestClient."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from client.adapters.proxy import STATUS_PATH, ProxySettings, build_proxy
from client.adapters.pseudonyms import LogPseudonyms
from client.adapters.relay import Relay
from client.net.scim_audit import ScimAuditClient
from tests.scim_service.conftest import T1, URL, Harness
from tests.support import start_proxy, stop_processes, wait_for

from .helpers import BULK, SCIM_TOKEN, answer_lifespan, read_body
from .logserver import Log

__all__ = [
    "ProcessRig",
    "Rig",
    "Via",
    "bulk_events",
    "make_rig",
    "process_rig",
    "proxy_rig",
    "sp_app",
]


async def sp_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A SCIM SP stand-in that applies whatever it gets: 201 with an id for creates, 200
    with a BulkResponse for /Bulk, 204 otherwise."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    body = await read_body(receive)
    path, method = scope["path"], scope["method"]
    if path.endswith("/Bulk"):
        ops = json.loads(body)["Operations"]
        res = []
        for i, op in enumerate(ops):
            r = {"method": op["method"], "status": "201" if op["method"] == "POST" else "200"}
            if op.get("bulkId"):
                r["bulkId"] = op["bulkId"]
            if op["method"] == "POST":
                # under the POST's own endpoint, on the server asked (the rig's client asks
                # scim.test; a location naming another resource type or server gives no
                # created id: test_faith20_bulk_location, test_faith23_create_answer)
                r["location"] = f"https://scim.test/v2{op['path']}/created-{i}"
            else:
                r["location"] = "https://scim.test/v2" + op["path"]
            res.append(r)
        out = json.dumps(
            {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkResponse"], "Operations": res}
        ).encode()
        status = 200
    elif method == "POST":
        out, status = json.dumps({"id": "new-1"}).encode(), 201
    else:
        out, status = b"", 204
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/scim+json")],
        }
    )
    await send({"type": "http.response.body", "body": out})


class Via(httpx.BaseTransport):
    """Requests to the in-process log app (its TestClient), optionally held at a gate."""

    def __init__(
        self,
        client: TestClient,
        gate: threading.Event | None = None,
        entered: threading.Event | None = None,
    ) -> None:
        self.client, self.gate, self.entered = client, gate, entered
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None and request.url.path == "/v1/scim/pseudonyms":
            if self.entered is not None:
                self.entered.set()
            assert self.gate.wait(30)
        with self.lock:
            r = self.client.request(
                request.method,
                request.url.path + ("?" + request.url.query.decode() if request.url.query else ""),
                headers=dict(request.headers),
                content=request.read(),
            )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


@dataclass
class Rig:
    client: TestClient
    relay: Relay
    harness: Harness
    pids: LogPseudonyms

    def auditor(self) -> ScimAuditClient:
        assert self.relay.flush(30)
        return self.harness.auditor()


@contextmanager
def make_rig(h: Harness, tmp_path: Path, app: Any = sp_app, **cfg: Any) -> Iterator[Rig]:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = Relay(outbox, URL, h.tok["sub1"], transport=Via(h.client), idle=0.02)
    pids = LogPseudonyms(URL, h.tok["sub1"], http=httpx.Client(transport=Via(h.client)))
    config = AuditConfig(tenant=T1, sp_id="sp1", ref_pid=pids, on_access=None, **cfg)
    mw = AuditMiddleware(app, config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:
        yield Rig(client, relay, h, pids)


def bulk_events(rig: Rig, ops: list[dict[str, Any]], req: str) -> dict[int, dict[str, Any]]:
    """``ops`` sent as one ``/Bulk`` request through ``rig`` (request id ``req``; it must
    be answered 200), and the audited events of its operations by their ``corr.seq``."""
    r = rig.client.post(
        "/v2/Bulk",
        content=json.dumps({"schemas": [BULK], "Operations": ops}),
        headers={
            "Authorization": f"Bearer {SCIM_TOKEN}",
            "Content-Type": "application/scim+json",
            "X-Request-Id": req,
        },
    )
    assert r.status_code == 200, r.text
    return {
        f.event["corr"]["seq"]: f.event
        for f in rig.auditor().search_all(req=req)
        if f.event is not None
    }


def proxy_app(h: Harness, tmp_path: Path, upstream: str, sp_id: str) -> Any:
    """The app ``tlog scim-proxy`` serves, in front of ``upstream``, relaying to the
    in-process log with the first tenant's submitter token."""
    return build_proxy(
        ProxySettings(
            upstream=upstream,
            log_url=URL,
            token=h.tok["sub1"],
            tenant=T1,
            sp_id=sp_id,
            outbox=tmp_path / "proxy.sqlite",
        ),
        log_transport=Via(h.client),
    )


@contextmanager
def proxy_rig(h: Harness, tmp_path: Path, upstream: str) -> Iterator[Rig]:
    """The app ``tlog scim-proxy`` serves (``build_proxy``: the audit middleware around the
    HTTP forwarder) in front of the SP at ``upstream`` (a real HTTP server), relaying to the
    in-process log."""
    app = proxy_app(h, tmp_path, upstream, "sp1")
    pids = LogPseudonyms(URL, h.tok["sub1"], http=httpx.Client(transport=Via(h.client)))
    with TestClient(app, base_url="http://proxy.test") as client:
        assert app.relay is not None
        yield Rig(client, app.relay, h, pids)


@dataclass
class ProcessRig:
    """``tlog scim-proxy`` as a real process (``client``: a line to it) recording to a real
    ``tlog serve`` (``log``), read back as an auditor of its tenant would: with the log's
    own key (``log.vkey``) and an auditor token of the tenant, over HTTP."""

    client: httpx.Client
    pids: LogPseudonyms
    log: Log
    audit_token: str

    def auditor(self) -> ScimAuditClient:
        """Once the proxy's outbox holds nothing undelivered: an auditor of the log."""

        def delivered() -> bool:
            r = self.client.get(STATUS_PATH)
            return r.status_code == 200 and r.json().get("pending") == 0

        wait_for(delivered, 30, "the proxy's outbox delivered", step=0.05)
        return ScimAuditClient(self.log.url, self.audit_token, self.log.vkey)


@contextmanager
def process_rig(
    log: Log, tmp_path: Path, upstream: str, tenant: str = "acme-proxy-process"
) -> Iterator[ProcessRig]:
    """``tlog scim-proxy`` started as a process in front of ``upstream``, with a submitter
    token of ``tenant`` made by ``tlog token create`` (and an auditor's for the read-back),
    verifying the log's receipts under the key the log names (``start_proxy``)."""
    sub, aud = log.tokens(tenant)
    proc, base = start_proxy(tmp_path, upstream, log.url, sub, tenant)
    root = str(httpx.URL(base).copy_with(path="/"))
    try:
        with httpx.Client(base_url=root.rstrip("/"), timeout=60) as client:
            yield ProcessRig(client, LogPseudonyms(log.url, sub, timeout=30), log, aud)
    finally:
        stop_processes([proc])
