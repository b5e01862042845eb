"""The request limits of the log API (:class:`Limits`) and of the SCIM endpoints
(:class:`ScimLimits`), alone.

They are settings tables of ``tlog serve`` (:mod:`tlog.config`), which every ``tlog``
command describes at each start: defined here, a command that serves nothing (``tlog
fsck``, ``tlog token``) does not load the web framework (:mod:`tlog.http`, which uses
:class:`Limits`) or the SCIM service (:mod:`tlog.scim.service`, which uses
:class:`ScimLimits`) to build its options. Both modules still export them.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.formats.tiles import MAX_ENTRY_SIZE
from client.scim.event import MAX_JSON_SIZE

__all__ = ["Limits", "ScimLimits"]


@dataclass(frozen=True)
class Limits:
    """Request limits. All are enforced before any work is queued."""

    max_entry_bytes: int = MAX_ENTRY_SIZE  # tlog-tiles entry bundles cap entries at 65,535
    max_batch_entries: int = 10_000  # per POST /v1/entries/batch
    max_batch_body_bytes: int = 16 << 20
    max_query_length: int = 2048


@dataclass(frozen=True)
class ScimLimits:
    """Explicit limits of the SCIM endpoints (documented in docs/api.md)."""

    max_event_body: int = MAX_JSON_SIZE  # bytes of one event's body, JSON or CBOR (413)
    max_batch_events: int = 1000  # events per batch request (413)
    max_batch_body: int = 8 << 20  # bytes of one batch body (413)
    max_batch_items: int = 1 << 18  # JSON elements / CBOR items in one batch body (413)
    max_search_limit: int = 100  # results per search page
    default_search_limit: int = 50
    max_scan: int = 10_000  # index records examined per search page
    max_receipts: int = 1000  # receipts per GET /v1/scim/receipts
    max_refs: int = 10_000  # ids per POST /v1/scim/pseudonyms (one request's members at once)
    erasure_ttl_ms: int = 7 * 24 * 3600 * 1000  # a pending erasure request expires
