"""What a write's intent and its event both name is made once per exchange (proxy12), and
equals what each made alone before: the request body's SHA-256
(:meth:`Exchange.body_digest`) and the credential's actor (:meth:`Exchange.credential`,
which :class:`Builder` uses when the actor hook is :func:`default_actor`). Held equal on
random bodies and ``Authorization`` headers (hypothesis), with a ``tlog_actor`` in the
scope's state, and after the scope's headers are replaced."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client.adapters.exchange import (
    AuditConfig,
    Builder,
    Exchange,
    credential_actor,
    default_actor,
)
from client.adapters.middleware import intent_doc

CFG = AuditConfig(tenant="t", sp_id="sp", base_path="/v2")


def _exchange(body: bytes, headers: list[tuple[bytes, bytes]], state: Any = None) -> Exchange:
    scope: dict[str, Any] = {"type": "http", "headers": headers, "client": ("10.0.0.1", 1)}
    if state is not None:
        scope["state"] = state
    x = Exchange(scope, "POST", "/Users", "req-1", None, body, 1_000_000_000)
    x.status, x.t1_ns = 201, 2_000_000_000
    return x


_auth = st.one_of(
    st.none(),
    st.text(max_size=30).map(lambda t: "Bearer " + t),
    st.text(max_size=30).map(lambda t: "bearer  " + t + " "),
    st.text(max_size=20).map(lambda t: "Basic " + base64.b64encode(t.encode()).decode()),
    st.text(max_size=20).map(lambda t: "Basic " + t),
    st.text(max_size=30),
)


def _headers(auth: str | None) -> list[tuple[bytes, bytes]]:
    h = [(b"content-type", b"application/scim+json")]
    if auth is not None:
        h.append((b"authorization", auth.encode("utf-8")))
    return h


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), _auth)
def test_digest_and_actor_made_once_equal_the_direct_ones(body: bytes, auth: str | None) -> None:
    x = _exchange(body, _headers(auth))
    want_actor = credential_actor(x.scope)
    doc = intent_doc(CFG, x)
    assert doc is not None
    assert doc["dig"] == hashlib.sha256(body).hexdigest()
    want_doc_actor = dict(want_actor)
    if "tok_d" in want_doc_actor:
        want_doc_actor["tok_d"] = want_doc_actor["tok_d"].hex()
    assert doc["actor"] == want_doc_actor
    b = Builder(CFG, x)
    assert b.dig == hashlib.sha256(body).digest()
    assert b.actor() == default_actor(x.scope) == want_actor
    # a fresh dict each time: a caller changing one changes nothing else
    first = x.credential()
    first["kind"] = "changed"
    assert x.credential() == want_actor


@settings(max_examples=100, deadline=None)
@given(_auth, _auth)
def test_replaced_headers_are_read_again(a: str | None, b: str | None) -> None:
    x = _exchange(b"{}", _headers(a))
    assert x.credential() == credential_actor(x.scope)
    x.scope["headers"] = _headers(b)
    assert x.credential() == credential_actor(x.scope)
    x.body = b"other"
    assert x.body_digest() == hashlib.sha256(b"other").digest()


def test_state_actor_wins_as_before() -> None:
    headers = _headers("Bearer tok")
    given_actor = {"kind": "user", "id": "alice"}
    x = _exchange(b"{}", headers, {"tlog_actor": given_actor})
    assert Builder(CFG, x).actor() == default_actor(x.scope) == given_actor
    # an empty principal: default_actor gives it back, the builder the credential (as before)
    x = _exchange(b"{}", headers, {"tlog_actor": {}})
    assert default_actor(x.scope) == {}
    assert Builder(CFG, x).actor() == credential_actor(x.scope)
    # a hook of the application's own is still called
    cfg = AuditConfig(tenant="t", sp_id="sp", actor=lambda scope: {"kind": "svc", "id": "s"})
    assert Builder(cfg, _exchange(b"{}", headers)).actor() == {"kind": "svc", "id": "s"}


def test_basic_credentials_not_ascii_are_anonymous_not_an_exception() -> None:
    # (before proxy12 base64 raised ValueError on them: the write's intent, then the
    # request, failed with a 500 instead of being recorded)
    x = _exchange(b"{}", [(b"authorization", "Basic é€".encode())])
    assert credential_actor(x.scope) == {"kind": "anonymous"}
    assert Builder(CFG, x).actor() == {"kind": "anonymous"}
    doc = intent_doc(CFG, x)
    assert doc is not None and doc["actor"] == {"kind": "anonymous"}
