"""Receipt headers: what a recorded SCIM write's answer says about its events.

:data:`RECEIPT_HEADERS` (``Tlog-Status``, ``Tlog-Event-Count``, ``Tlog-Event-Id``,
``Tlog-Index``, ``Tlog-Leaf-Hash``, ``Tlog-Tree-Size``, ``Tlog-Checkpoint``) from the events'
eids and whatever receipts the relay delivered in time (:func:`wait_receipts`). Used by
:mod:`client.adapters.middleware`; inclusion proofs are never put in headers (SCIM.md §2.5).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

from client.adapters.outbox import Receipt

__all__ = ["MAX_HEADER_EVENTS", "RECEIPT_HEADERS", "receipt_headers", "wait_receipts"]

RECEIPT_HEADERS = (
    "Tlog-Status",  # logged | queued | unrecorded
    "Tlog-Event-Count",  # events recorded for this request (bulk: one per operation)
    "Tlog-Event-Id",  # their eids, comma-separated (omitted above MAX_HEADER_EVENTS)
    "Tlog-Index",  # leaf indices, same order (only when logged)
    "Tlog-Leaf-Hash",  # base64 leaf hashes, same order (only when logged)
    "Tlog-Tree-Size",  # the tree size of the checkpoint covering them (only when logged)
    "Tlog-Checkpoint",  # that signed checkpoint note, base64 (only when logged)
)
MAX_HEADER_EVENTS = 32


async def wait_receipts(futs: Sequence[Future[Receipt]], timeout: float) -> dict[str, Receipt]:
    wrapped = [asyncio.wrap_future(f) for f in futs]
    done, pending = await asyncio.wait(wrapped, timeout=timeout)
    for p in pending:
        p.cancel()
    out: dict[str, Receipt] = {}
    for d in done:
        if not d.cancelled() and d.exception() is None:
            r = d.result()
            out[r.eid] = r
    return out


def receipt_headers(
    eids: Sequence[str], receipts: Mapping[str, Receipt]
) -> list[tuple[bytes, bytes]]:
    logged = bool(eids) and all(e in receipts for e in eids)
    h = [
        (b"tlog-status", b"logged" if logged else b"queued"),
        (b"tlog-event-count", str(len(eids)).encode()),
    ]
    if len(eids) <= MAX_HEADER_EVENTS:
        h.append((b"tlog-event-id", ", ".join(eids).encode("ascii")))
        if logged:
            rs = [receipts[e] for e in eids]
            h.append((b"tlog-index", ", ".join(str(r.index) for r in rs).encode("ascii")))
            h.append((b"tlog-leaf-hash", ", ".join(r.leaf_hash for r in rs).encode("ascii")))
    if logged:
        last = max((receipts[e] for e in eids), key=lambda r: r.tree_size)
        h.append((b"tlog-tree-size", str(last.tree_size).encode()))
        h.append((b"tlog-checkpoint", base64.b64encode(last.checkpoint.encode("utf-8"))))
    return h
