"""A real ``tlog serve`` (with the SCIM event service) as the adapters' log: :class:`Log`
(the ``log`` fixture, tests/adapters/conftest.py), its tokens, and :func:`audit_read`, every
event of a tenant read back and verified as an auditor."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import leaf_hash, verify_inclusion
from client.formats.note import Ed25519Verifier
from client.scim.event import event_from_json
from client.scim.leaf import verify_commitment
from tests.support import ServerProcess, start_server, token_for

__all__ = ["Log", "audit_read", "tlog_token"]


def tlog_token(data: Path, role: str, tenant: str, database: str | None = None) -> str:
    """A new ``role`` token bound to ``tenant`` in the log of ``data`` (``tlog token
    create``, in process)."""
    return token_for(data, database, "--role", role, "--tenant", tenant)


@dataclass
class Log:
    srv: ServerProcess
    vkey: str
    database: str | None

    @property
    def url(self) -> str:
        return self.srv.url

    def tokens(self, tenant: str) -> tuple[str, str]:
        """(submitter, auditor) tokens bound to ``tenant``."""
        return (
            tlog_token(self.srv.data, "submitter", tenant, self.database),
            tlog_token(self.srv.data, "auditor", tenant, self.database),
        )

    def restart(self) -> None:
        self.srv = start_server(self.srv.data, self.srv.port, database=self.database)


def audit_read(log: Log, auditor: str, **filters: str) -> list[dict[str, Any]]:
    """Every SCIM event of the auditor's tenant, each verified against the log:
    leaf hash, inclusion proof under a checkpoint signed by the log, commitment.
    ``filters`` are the search's (``req=...``): the log's own filter, for a poll that
    waits on a few events of a long log (each read verifies every result it gets)."""
    verifier = Ed25519Verifier.from_vkey(log.vkey)
    out: list[dict[str, Any]] = []
    cursor = None
    with httpx.Client(
        base_url=log.url, headers={"Authorization": f"Bearer {auditor}"}, timeout=30
    ) as c:
        while True:
            params = {**filters, "limit": "100", **({"cursor": cursor} if cursor else {})}
            r = c.get("/v1/scim/events", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            cp, _ = open_checkpoint(page["checkpoint"], [verifier])
            for res in page["results"]:
                leaf = base64.b64decode(res["leaf"])
                lh = base64.b64decode(res["leaf_hash"])
                assert leaf_hash(leaf) == lh
                assert res["tree_size"] == cp.size
                verify_inclusion(
                    res["index"],
                    cp.size,
                    lh,
                    [base64.b64decode(h) for h in res["inclusion_proof"]],
                    cp.root_hash,
                )
                ev = event_from_json(json.dumps(res["event"]))
                verify_commitment(leaf, ev, base64.b64decode(res["nonce"]))
                if not ev["rt"].startswith("tlog."):  # the log's own access events
                    out.append({**ev, "_index": res["index"]})
            cursor = page.get("next")
            if not cursor:
                return out
