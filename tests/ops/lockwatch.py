"""What the operator-lock tests share (red teams 10 and 11): waiting for a condition, a
``tlog serve``'s readiness checks, a raw write, and what is stored afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from client.formats.merkle import leaf_hash
from tests.pgsupport import reading
from tests.support import http_get


def until(what: str, ok: Callable[[], Any], bound: float = 60.0) -> Any:
    """``ok()``'s first true value, asked every 0.1 s; fails after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while True:
        got = ok()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {bound} s: {what}"
        time.sleep(0.1)


def ready(url: str) -> tuple[int, dict[str, Any]]:
    """``/readyz``'s status and checks."""
    r = http_get(url + "/readyz", timeout=30)
    return r.status_code, r.json()["checks"]


def lock_detail(url: str) -> str:
    """What ``/readyz`` says of the store's operator lock."""
    return str(ready(url)[1]["store_lock"]["detail"])


def post_raw(url: str, token: str, entry: bytes) -> httpx.Response:
    return httpx.post(
        url + "/v1/entries",
        content=entry,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def check_acked(
    database: str, reader: Path, acked: Sequence[tuple[int, bytes]], absent: Sequence[bytes] = ()
) -> None:
    """Every acknowledged ``(index, entry)`` is stored at its index, and no entry of
    ``absent`` (refused writes) is stored at all."""

    def where(rv: Any) -> tuple[list[int | None], list[int | None]]:
        return (
            [rv.index_of(leaf_hash(entry)) for _, entry in acked],
            [rv.index_of(leaf_hash(entry)) for entry in absent],
        )

    stored, refused = reading(database, reader, where)
    assert stored == [index for index, _ in acked], (stored, acked)
    assert refused == [None] * len(absent), refused
