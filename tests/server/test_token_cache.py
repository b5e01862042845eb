"""The token cache (tlog.auth): tokens answered from memory for a bounded time, and a
revocation made elsewhere (the CLI, another frontend) refused once that bound has passed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.auth import TOKEN_CACHE_MAX, AuthError, TokenStore, _bearer, token_digest
from tlog.backend import open_backend

from .conftest import Harness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Stores = tuple[TokenStore, TokenStore, Clock]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    storage = open_backend(None, tmp_path)
    server = TokenStore(storage)  # the serving process's store
    server.clock = clock = Clock()
    cli = TokenStore(storage)  # what `tlog token` in another process does: no shared cache
    yield server, cli, clock
    storage.close()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_cached_answer_needs_no_store_read(stores) -> None:  # type: ignore[no-untyped-def]
    server, cli, clock = stores
    token, p = cli.create("submitter", tenant="t1")
    assert server.cached(bearer(token)) is None  # never read: the caller reads the store
    assert server.authenticate(bearer(token)).token_id == p.token_id
    got = server.cached(bearer(token))
    assert got is not None and got.token_id == p.token_id and got.role == "submitter"
    clock.now += server.cache_seconds
    assert server.cached(bearer(token)) is None  # the bound has passed: read again


def test_revocation_elsewhere_is_refused_after_the_bound(stores) -> None:  # type: ignore[no-untyped-def]
    server, cli, clock = stores
    token, p = cli.create("submitter", tenant="t1")
    server.authenticate(bearer(token))
    cli.revoke(p.token_id)
    # Within the bound the cached principal may still answer (the documented delay) ...
    clock.now += server.cache_seconds / 2
    assert server.cached(bearer(token)) is not None
    # ... and once it has passed, the store is read again and the token refused.
    clock.now += server.cache_seconds / 2
    assert server.cached(bearer(token)) is None
    with pytest.raises(AuthError, match="revoked"):
        server.authenticate(bearer(token))
    # Now remembered as revoked: refused from memory too.
    with pytest.raises(AuthError, match="revoked"):
        server.cached(bearer(token))


def test_revocation_through_the_same_store_is_immediate(stores) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = stores
    token, p = server.create("submitter", tenant="t1")
    server.authenticate(bearer(token))
    server.revoke(p.token_id)
    assert server.cached(bearer(token)) is None
    with pytest.raises(AuthError, match="revoked"):
        server.authenticate(bearer(token))


def test_expiry_is_checked_on_every_request(stores) -> None:  # type: ignore[no-untyped-def]
    server, cli, _ = stores
    token, _ = cli.create("submitter", tenant="t1", ttl=-1)
    with pytest.raises(AuthError, match="expired"):
        server.authenticate(bearer(token))
    with pytest.raises(AuthError, match="expired"):
        server.cached(bearer(token))  # remembered as read, refused as expired


def test_unknown_and_malformed_tokens(stores) -> None:  # type: ignore[no-untyped-def]
    server, cli, _ = stores
    unknown = "tlog_" + "A" * 43
    with pytest.raises(AuthError, match="unknown"):
        server.authenticate(bearer(unknown))
    assert server.cached(bearer(unknown)) is None
    # A token created after a failed lookup works at once (unknown answers are not cached).
    token, _ = cli.create("submitter", tenant="t1")
    assert server.cached(bearer(token)) is None
    server.authenticate(bearer(token))
    for bad in (None, "", "Basic eA==", "Bearer nope", "Bearer tlog_" + "A" * 200):
        with pytest.raises(AuthError):
            server.cached(bad)


def test_cache_is_bounded(stores, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    server, cli, _ = stores
    monkeypatch.setattr("tlog.auth.TOKEN_CACHE_MAX", 3)
    tokens = [cli.create("submitter", tenant="t1")[0] for _ in range(5)]
    for t in tokens:
        server.authenticate(bearer(t))
    assert len(server._cache) <= 3 < TOKEN_CACHE_MAX


def test_http_revocation_by_another_store_takes_effect(harness: Harness) -> None:
    """Over HTTP: a token cached by the server, revoked by a second TokenStore on the same
    store (as `tlog token revoke` does), gets 401 once the bound has passed."""
    clock = Clock()
    harness.tokens.clock = clock
    c = harness.client
    cli = TokenStore(harness.log.storage)
    token, p = cli.create("submitter", tenant="t1")
    assert c.post("/v1/entries", content=b"a", headers=harness.auth(token)).status_code == 200
    assert harness.tokens.cached(bearer(token)) is not None  # answered from memory next
    cli.revoke(p.token_id)
    clock.now += harness.tokens.cache_seconds
    r = c.post("/v1/entries", content=b"b", headers=harness.auth(token))
    assert r.status_code == 401
    assert harness.log.latest.size == 1


_headers = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.builds(
        lambda scheme, sp, tok, tail: f"{scheme}{sp}{tok}{tail}",
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer:"]),
        st.sampled_from([" ", "  ", ""]),
        st.one_of(
            st.builds(lambda t: "tlog_" + t, st.text(max_size=140)),
            st.text(max_size=20),
        ),
        st.sampled_from(["", " ", "\t"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(headers=st.lists(_headers, min_size=1, max_size=6))
def test_remembered_header_digests_equal_the_parse_and_hash(
    tmp_path_factory: pytest.TempPathFactory, headers: list[str | None]
) -> None:
    """``cached`` remembers each well-formed header's token digest: a header (seen before or
    not) is refused exactly when ``_bearer`` refuses it, and looks up the digest that
    parsing and hashing it give, whatever came before it."""
    storage = open_backend(None, tmp_path_factory.mktemp("tok"))
    try:
        ts = TokenStore(storage)
        looked: list[bytes] = []

        class Spy(dict):  # type: ignore[type-arg]
            def get(self, key: object, default: object = None) -> object:
                looked.append(key)  # type: ignore[arg-type]
                return None

        ts._cache = Spy()
        for h in headers * 2:  # each header again once remembered
            try:
                want: bytes | Exception = token_digest(_bearer(h))
            except AuthError as exc:
                want = exc
            looked.clear()
            try:
                assert ts.cached(h) is None
                got: bytes | Exception = looked[0]
            except AuthError as exc:
                got = exc
            if isinstance(want, Exception):
                assert isinstance(got, AuthError) and str(got) == str(want)
            else:
                assert got == want
    finally:
        storage.close()


def test_remembered_digests_are_bounded(stores) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = stores
    for i in range(TOKEN_CACHE_MAX + 10):
        assert server.cached(bearer(f"tlog_x{i}")) is None
    assert len(server._digests) <= TOKEN_CACHE_MAX
