"""Compressed bodies are small on the wire and large to read: the audit middleware must not
judge the cost of reading one by its wire size. A gzip body of a few KiB that inflates to
megabytes (any client can send one: it is decoded even when the SP answers 401) is read
and built in a worker thread, never on the event loop every other request shares; and the
number of stacked content codings is bounded, so that a tiny body cannot make the adapter
inflate megabytes hundreds of times over."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.adapters.body import MAX_CODINGS, decode_body
from client.adapters.middleware import INLINE_BUILD_BYTES, AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from client.adapters.relay import Relay

from .helpers import SCIM_TOKEN, FakeLog, scim_asgi_app, user, where_records_are_built

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


@pytest.fixture
def mw(tmp_path: Path) -> Iterator[tuple[TestClient, AuditMiddleware]]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = Relay(outbox, "http://log.test", "tok", transport=log.transport(), idle=0.05)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=lambda _: None)
    app = AuditMiddleware(scim_asgi_app(), config, outbox, relay, own=True)
    with TestClient(app, base_url="http://scim.test") as client:
        yield client, app


def test_a_compressed_write_is_read_off_the_event_loop(
    mw: tuple[TestClient, AuditMiddleware], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = mw
    on_loop = where_records_are_built(monkeypatch, app)
    doc = user("zoe", title="t" * (64 * INLINE_BUILD_BYTES))
    body = gzip.compress(json.dumps(doc).encode(), 9)
    assert len(body) <= INLINE_BUILD_BYTES  # small on the wire
    headers = {**AUTH, "Content-Type": "application/scim+json", "Content-Encoding": "gzip"}
    client.post("/v2/Users", content=body, headers=headers)
    assert on_loop == [False]


def _stored_gzip(data: bytes) -> bytes:
    c = zlib.compressobj(0, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # stored blocks: no gain
    return c.compress(data) + c.flush()


def test_stacked_codings_are_bounded() -> None:
    inner = b'{"userName": "x"}'
    ok = inner
    for _ in range(MAX_CODINGS):
        ok = _stored_gzip(ok)
    got = decode_body(ok, content_encoding=", ".join(["gzip"] * MAX_CODINGS))
    assert got.ok and got.value == {"userName": "x"}
    too_many = _stored_gzip(ok)
    got = decode_body(too_many, content_encoding=", ".join(["gzip"] * (MAX_CODINGS + 1)))
    assert not got.ok and "content codings" in (got.error or "")
    # identity is no coding: any number of them is still read
    got = decode_body(inner, content_encoding=", ".join(["identity"] * 50))
    assert got.ok and got.value == {"userName": "x"}
