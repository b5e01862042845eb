"""Strict JSON for events and SCIM bodies: duplicate keys, NaN/Infinity, floats refused."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["no_duplicate_keys", "strict_json"]


def _no_json_float(s: str) -> object:
    raise ValueError(f"JSON number {s} is not an integer")


def _no_json_constant(s: str) -> object:
    raise ValueError(f"JSON constant {s} is not allowed")


def _json_int(s: str) -> int:
    # Bounded before int(): huge digit strings are slow and are out of range anyway.
    if len(s.lstrip("-")) > 20:
        raise ValueError("JSON integer too large")
    return int(s)


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses duplicate JSON keys (RFC 8259 leaves them open)."""
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find the first repeated key for the message
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate JSON key {k!r}")
            seen.add(k)
    return out


def strict_json(text: str, *, floats: bool = False) -> Any:
    """json.loads with duplicate keys, NaN/Infinity and (unless ``floats``) floats rejected.

    Raises ValueError (or RecursionError for absurd nesting).
    """
    if floats:
        return json.loads(
            text, object_pairs_hook=no_duplicate_keys, parse_constant=_no_json_constant
        )
    return json.loads(
        text,
        object_pairs_hook=no_duplicate_keys,
        parse_float=_no_json_float,
        parse_int=_json_int,
        parse_constant=_no_json_constant,
    )
