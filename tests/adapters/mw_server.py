"""scim2-server's ASGI app wrapped in the audit middleware, served by uvicorn (a test process).

python -m tests.adapters.mw_server --port P --log URL --token-file F --tenant T --outbox DB
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from client.adapters.relay import Relay
from tests.adapters.scim_app import SCIM_TOKEN, scim_asgi_app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--outbox", type=Path, required=True)
    p.add_argument("--receipt-timeout", type=float, default=0.0)
    a = p.parse_args()
    outbox = Outbox(a.outbox)
    relay = Relay(outbox, a.log, a.token_file.read_text().strip())
    config = AuditConfig(
        tenant=a.tenant, sp_id="scim2-server-asgi", receipt_timeout=a.receipt_timeout
    )
    app = AuditMiddleware(scim_asgi_app(SCIM_TOKEN), config, outbox, relay, own=True)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
