"""Request bodies under abuse: bounded shape checks before decoding, decoding off the loop.

Two rules keep one hostile body from freezing the server for every tenant:

* **Limits apply while decoding, not after.** :func:`check_json_shape` walks a JSON text
  (strings skipped by one C-level regex each) counting containers and elements and stops at
  the first element past ``max_items`` or the first bracket past ``max_depth``, before
  ``json.loads`` builds anything. CBOR bodies get the same from
  :func:`client.scim.cbor.loads_det` (``max_items``: container headers announce their
  counts). The work spent on a refused body is bounded by the limit, not by its size.
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

# A JSON string (escapes included) or one structural character. For valid JSON this
# tokenises exactly; for invalid JSON it may over-count, which only refuses sooner.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')
_QUOTE, _COMMA = ord('"'), ord(",")
_OPEN = frozenset(b"[{")


class BodyTooLarge(Exception):
    """A body with more items than a limit allows (HTTP 413)."""


class MalformedBody(ValueError):
    """A body that cannot be what the endpoint takes (HTTP 400)."""


def check_json_shape(body: bytes, *, max_items: int, max_depth: int) -> None:
    """Refuse a JSON text with more than ``max_items`` elements or deeper than ``max_depth``.

    Elements are counted over the whole document: every container and every element after
    the first in a container (a ``,``), so an array of n scalars counts n. Raises
    :class:`BodyTooLarge` or :class:`MalformedBody` at the first token past a limit.
    """
    depth = 0
    items = 0
    for m in _TOKENS.finditer(body):
        c = body[m.start()]
        if c == _QUOTE:
            continue
        if c == _COMMA:
            items += 1
        elif c in _OPEN:
            depth += 1
            items += 1
            if depth > max_depth:
                raise MalformedBody(f"body is nested deeper than {max_depth} levels")
        else:
            depth -= 1
        if items > max_items:
            raise BodyTooLarge(f"body has more than {max_items} JSON elements")


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
