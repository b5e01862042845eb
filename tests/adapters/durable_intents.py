"""Support for the durable intent tests (test_intent19_durable): one PATCH through the
middleware, and a child process forwarding writes with durable intents, to trace."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from client.adapters.middleware import AuditMiddleware

PATCH = json.dumps(
    {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
).encode()


async def patch(mw: AuditMiddleware, path: str) -> int:
    """One PATCH of ``path`` through ``mw``: the answer's status."""
    msgs = [{"type": "http.request", "body": PATCH, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return msgs.pop() if msgs else {"type": "http.disconnect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {
        "type": "http",
        "method": "PATCH",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"authorization", b"Bearer t"),
            (b"content-type", b"application/scim+json"),
            (b"host", b"proxy"),
        ],
        "client": ("10.0.0.7", 1),
        "scheme": "http",
        "http_version": "1.1",
    }
    await mw(scope, receive, send)
    return int(sent[0]["status"])


# argv: outbox, upstream, durable ("1" or "0"), writes. Each write forwarded one after the
# other (PATCH /v2/Users/u<i>), its status printed.
CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from client.adapters.exchange import AuditConfig
    from client.adapters.forwarder import Forwarder
    from client.adapters.middleware import AuditMiddleware
    from client.adapters.outbox import Outbox
    from tests.adapters.durable_intents import patch

    async def main() -> None:
        ob = Outbox(Path(sys.argv[1]))
        cfg = AuditConfig(tenant="acme", sp_id="sp1", durable_intents=sys.argv[3] == "1")
        fwd = Forwarder(sys.argv[2])
        mw = AuditMiddleware(fwd, cfg, ob)
        mw.intent_recovery_interval = 0
        mw.start()
        os.write(2, b"=====writes\\n")
        for i in range(int(sys.argv[4])):
            print(await patch(mw, f"/v2/Users/u{i}"), flush=True)
        await fwd.aclose()
        ob.close()

    asyncio.run(main())
    """
)
