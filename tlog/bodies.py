"""Request bodies under abuse: bounded shape checks before decoding, decoding off the loop.

Two rules keep one hostile body from freezing the server for every tenant:

* **Limits apply while decoding, not after.** :func:`check_json_shape` walks a JSON text
  (strings removed by one C-level regex substitution) counting containers and elements
  and the nesting depth, before ``json.loads`` builds anything. CBOR bodies get the same from
  :func:`client.scim.cbor.loads_det` (``max_items``: container headers announce their
  counts). The work spent on a refused body is a few C-level passes over at most the
  capped body size.
* **Large decodes run off the event loop.** :func:`off_loop` runs a decode of a body larger
  than :data:`OFFLOAD_BYTES` on a small dedicated thread pool (so hostile decodes cannot
  starve the pool the storage reads use), and small ones inline, where a thread hop would
  cost more than the decode.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from typing import TypeVar

__all__ = [
    "OFFLOAD_BYTES",
    "BodyTooLarge",
    "MalformedBody",
    "check_json_shape",
    "off_loop",
]

T = TypeVar("T")

OFFLOAD_BYTES = 64 * 1024
DECODE_THREADS = 2

_pool: ThreadPoolExecutor | None = None

# A JSON string, escapes included. For valid JSON this tokenises exactly; for invalid JSON
# (an unterminated string) the rest is counted as structure, which only refuses sooner.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class BodyTooLarge(Exception):
    """A body with more items than a limit allows (HTTP 413)."""


class MalformedBody(ValueError):
    """A body that cannot be what the endpoint takes (HTTP 400)."""


def check_json_shape(body: bytes, *, max_items: int, max_depth: int) -> None:
    """Refuse a JSON text with more than ``max_items`` elements or deeper than ``max_depth``.

    Elements are counted over the whole document: every container and every element after
    the first in a container (a ``,``), so an array of n scalars counts n. Raises
    :class:`BodyTooLarge` or :class:`MalformedBody`. The cost is a few C-level passes over
    the body (whose size ``read_body`` caps), nothing per element at Python level.
    """
    # Strings out first (one C-level substitution), then everything is a count or a
    # running sum over the brackets: no Python step per token (this runs on every batch).
    bare = _STRING.sub(b"", body)
    items = bare.count(b",") + bare.count(b"[") + bare.count(b"{")
    if items > max_items:
        raise BodyTooLarge(f"body has more than {max_items} JSON elements")
    depth = max(accumulate(map(_STEP.__getitem__, bare.translate(None, _NOT_BRACKETS))), default=0)
    if depth > max_depth:
        raise MalformedBody(f"body is nested deeper than {max_depth} levels")


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="tlog-decode")
    return _pool


async def off_loop(size: int, fn: Callable[[], T]) -> T:
    """``fn()``, on the decode pool when ``size`` (the body's length) is over the threshold."""
    if size <= OFFLOAD_BYTES:
        return fn()
    return await asyncio.get_running_loop().run_in_executor(_executor(), fn)
