"""tlog.http.JsonBody: the same answer as Starlette's Response with the JSON media type."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response

from tlog.http import JsonBody


def _sent(response: Response) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        out.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(response(scope, receive, send))
    return out


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=5000))
def test_json_body_sends_what_response_sends(body: bytes) -> None:
    want = Response(body, media_type="application/json")
    got = JsonBody(body)
    assert got.status_code == want.status_code == 200
    assert got.raw_headers == want.raw_headers
    assert dict(got.headers) == dict(want.headers)
    assert _sent(got) == _sent(want)
