"""The log's own events (``rt`` in the reserved ``tlog.`` namespace), and the access events.

:func:`system_event` builds the event the log appends when it does something auditable of
its own: an erasure, an expiry run, a legal hold, a retention change
(:mod:`tlog.scim.erasure`), or a read of event bodies (:meth:`AccessLog.record`: search,
receipts, exports). Such events belong to a per-tenant system subject and carry no personal
data: a query is present only as a keyed digest under the tenant's index key.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from client.scim.event import Event, new_event, uuid7
from tlog.auth import Principal
from tlog.log import Published
from tlog.scim.store import Overlay

if TYPE_CHECKING:
    from tlog.scim.service import ScimService, Submitted

__all__ = ["OCSF_CREATE", "OCSF_DELETE", "OCSF_READ", "OCSF_UPDATE", "AccessLog", "system_event"]

# OCSF API Activity (6003): 1 = create, 2 = read, 3 = update, 4 = delete.
OCSF_CREATE = [6003, 1]
OCSF_READ = [6003, 2]
OCSF_UPDATE = [6003, 3]
OCSF_DELETE = [6003, 4]


def system_event(
    clock: Callable[[], int],
    tenant: str,
    principal: Principal,
    *,
    rt: str,
    op: str,
    action: str,
    ocsf: list[int],
    method: str,
    path: str,
    dig: bytes,
    length: int,
    req_id: str,
    x: dict[str, Any],
    rid: str | None = None,
) -> Event:
    """An event of the log's own, timestamped by ``clock`` (ms), by ``principal``."""
    now = clock()
    eid = str(uuid7(now))
    return new_event(
        tenant=tenant,
        sp={"id": "tlog"},
        op=op,
        rt=rt,
        rid=rid or eid,
        eid=eid,
        ts=now,
        actor={"kind": "bearer", "id": principal.token_id, "name": principal.role},
        corr=req_id,
        req={"m": method, "p": path, "dig": dig, "len": length},
        res=200,
        outcome="success",
        acts=[{"a": action, "ocsf": ocsf}],
        x=x,
    )


class AccessLog:
    """Appends an access event for every read of event bodies, through the service's ingest."""

    def __init__(self, svc: ScimService) -> None:
        self.svc = svc

    async def record(
        self,
        tenant: str,
        principal: Principal,
        *,
        what: str,
        path: str,
        query: Sequence[tuple[str, str]],
        counts: Mapping[str, int],
        req_id: str,
    ) -> tuple[Submitted, Published]:
        """Append an access event: who read how many bodies with which query (keyed digest).

        No personal data: the query itself is only present as a digest only the log can
        recompute (:meth:`_tenant_digest` of :func:`query_text`): the operator can check it
        against a suspected query, and nobody else can.
        """
        qtext = query_text(query)
        dig = await self.svc.read_off_loop(
            lambda tx: self._tenant_digest(tx, tenant, qtext), "a tenant key read"
        )
        ev = system_event(
            self.svc.clock,
            tenant,
            principal,
            rt="tlog.access",
            op="create",
            action=f"tlog.access.{what}",
            ocsf=OCSF_READ,
            method="GET",
            path=path,
            dig=dig,
            length=len(qtext),
            req_id=req_id,
            x={"what": what, **counts},
        )
        done, pub = await self.svc.submit(tenant, [ev], system=True)
        return done[0], pub

    def _tenant_digest(self, tx: Overlay, tenant: str, data: bytes) -> bytes:
        keys = self.svc.keys
        tk = keys.tenant(tx, tenant)
        if tk is None:  # a tenant with no events yet: still one only the log can recompute
            return keys.unkeyed_tenant_digest(tenant, data)
        return tk.keyed_digest(data)


def query_text(query: Sequence[tuple[str, str]]) -> bytes:
    """The text an access event's query digest is over: the query's parameters sorted and
    percent-encoded as a query string (``application/x-www-form-urlencoded``), so that no
    two different queries give the same text (a value holding ``&`` or ``=`` is escaped)."""
    return urllib.parse.urlencode(sorted(query)).encode()
