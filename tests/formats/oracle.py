"""A naive recursive RFC 6962 Merkle tree: the test oracle.

Written straight from the definitions in SPECS.md §c.1 (RFC 6962 §2.1, §2.1.1, §2.1.2), with
hashlib only and nothing from ``client``, so that the real code is checked against an
independent, obviously-correct transcription. Slow on purpose: no caching, no iteration.

``d`` is always the list of leaf *data* (not leaf hashes), as in the RFC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["leaf_hash", "mth", "node_hash", "path", "proof", "split_point"]


def leaf_hash(data: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """k = the largest power of two strictly smaller than n (n >= 2)."""
    if n < 2:
        raise ValueError("split point needs n >= 2")
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n])."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hash(d[0])
    k = split_point(n)
    return node_hash(mth(d[:k]), mth(d[k:]))


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the inclusion proof of leaf m, leaf sibling first."""
    n = len(d)
    if not 0 <= m < n:
        raise ValueError("PATH needs 0 <= m < n")
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for 0 < m <= n."""
    if not 0 < m <= len(d):
        raise ValueError("PROOF needs 0 < m <= n")
    return _subproof(m, d, True)


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = split_point(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), mth(d[:k])]
