"""Bearer tokens with roles, stored hashed in the log's data directory.

A token is ``tlog_`` followed by 43 URL-safe base64 characters (256 random bits). Only its
SHA-256 is stored, with a JSON record: role, optional tenant, name, creation and expiry time,
and whether it was revoked.

A token found in the store is remembered in memory for at most ``cache_seconds`` (default
:data:`TOKEN_CACHE_SECONDS`, 1 s), so a busy submitter costs one store read a second instead
of one per request, and :meth:`TokenStore.cached` answers on the event loop without a
thread hop. That bound is the revocation delay: a token revoked by ``tlog token revoke``
(another process, or another frontend of a shared database) is refused at most
``cache_seconds`` later; one revoked through this ``TokenStore`` at once. Expiry is checked
on every request; unknown tokens are never cached (a token just created works at once).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import secrets
import time
import unicodedata
from dataclasses import asdict, dataclass

from tlog.backend import Backend

__all__ = ["ROLES", "AuthError", "Forbidden", "Principal", "TokenStore", "person_key"]

ROLES = ("submitter", "auditor", "privacy-officer", "admin")
TOKEN_PREFIX = "tlog_"
TOKEN_CACHE_SECONDS = 1.0  # the revocation delay across processes (module docstring)
TOKEN_CACHE_MAX = 4096  # tokens remembered at once (then the cache starts over)


class AuthError(Exception):
    """No, malformed, unknown, expired or revoked credentials (HTTP 401)."""


class Forbidden(Exception):
    """Valid credentials without the needed role or tenant (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    token_id: str  # first 16 hex digits of SHA-256(token): safe to log
    role: str
    tenant: str | None
    name: str
    created: int
    expires: int | None = None
    revoked: bool = False
    person: str = ""  # the human the token was issued to (dual control compares people)

    @property
    def person_id(self) -> str:
        """Who this token acts for, for dual control: the normalised person name, or (for a
        token issued without one) the token itself."""
        return person_key(self.person) if self.person else "token:" + self.token_id

    def require(self, *roles: str, tenant: str | None = None) -> None:
        if self.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}, not {self.role}")
        if tenant is not None and self.tenant is not None and self.tenant != tenant:
            raise Forbidden("this token is bound to another tenant")


def person_key(person: str) -> str:
    """The comparison form of a person's name: NFKC, casefolded, inner whitespace collapsed,
    so ``Alice  Smith`` and ``alice smith`` are one person."""
    return " ".join(unicodedata.normalize("NFKC", person).casefold().split())


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer tlog_...`` header (format checks only)."""
    if not authorization:
        raise AuthError("missing Authorization: Bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        raise AuthError("Authorization must be 'Bearer tlog_...'")
    if len(token) > 128:
        raise AuthError("malformed token")
    return token.strip()


def _usable(p: Principal) -> Principal:
    if p.revoked:
        raise AuthError("token revoked")
    if p.expires is not None and time.time() >= p.expires:
        raise AuthError("token expired")
    return p


class TokenStore:
    def __init__(self, storage: Backend, cache_seconds: float = TOKEN_CACHE_SECONDS) -> None:
        self.storage = storage
        self.cache_seconds = cache_seconds
        self.clock = time.monotonic  # the cache's clock (tests replace it)
        # SHA-256(token) -> (principal as stored, monotonic time it was read). Written by
        # whichever thread read the store, read on the event loop: single dict operations.
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        # Authorization header -> SHA-256 of its token (a pure function of the header,
        # remembered only for well-formed ones): a hot client sends the same header on
        # every request, and its parse and hash were ~4 µs of each single SCIM event.
        self._digests: dict[str, bytes] = {}

    def create(
        self,
        role: str,
        *,
        tenant: str | None = None,
        name: str = "",
        ttl: int | None = None,
        person: str | None = None,
    ) -> tuple[str, Principal]:
        """Make a new token; the token text is returned once and never stored.

        ``person`` names the human holding it (default: ``name``); dual control of erasures
        refuses an approval by the person who requested, whatever token they use.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        person = (person if person is not None else name).strip()
        if person and not person_key(person):
            raise ValueError("person must not be blank")
        if role in ("submitter", "auditor") and tenant is None:
            tenant = "default"
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(token)
        now = int(time.time())
        p = Principal(
            digest.hex()[:16],
            role,
            tenant,
            name,
            now,
            None if ttl is None else now + ttl,
            person=person,
        )
        self.storage.put_token(digest, json.dumps(asdict(p), sort_keys=True).encode())
        return token, p

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal of a token read from the store less than ``cache_seconds`` ago
        (no storage access: safe on the event loop), or None: call :meth:`authenticate`.
        Raises :class:`AuthError` for a malformed header, a revoked or expired token."""
        digest = self._digests.get(authorization) if authorization else None
        if digest is None:
            digest = token_digest(_bearer(authorization))  # raises for a malformed header
            if authorization is not None:  # (always, once _bearer accepted it)
                if len(self._digests) >= TOKEN_CACHE_MAX:
                    self._digests.clear()
                self._digests[authorization] = digest
        hit = self._cache.get(digest)
        if hit is None or self.clock() - hit[1] >= self.cache_seconds:
            return None
        return _usable(hit[0])

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a token, read from the store (then cached, see :meth:`cached`)."""
        digest = token_digest(_bearer(authorization))
        with self.storage.read() as rv:
            raw = rv.token(digest)
        if raw is None:
            self._cache.pop(digest, None)
            raise AuthError("unknown token")
        p = Principal(**json.loads(raw))
        if self.cache_seconds > 0:
            if len(self._cache) >= TOKEN_CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (p, self.clock())
        return _usable(p)

    def list(self) -> list[Principal]:
        with self.storage.read() as rv:
            return [Principal(**json.loads(v)) for _, v in rv.tokens()]

    def of_person(self, person: str, role: str | None = None) -> builtins.list[Principal]:
        """The live (not revoked) tokens issued to ``person`` (normalised), optionally of
        one role: ``tlog token create`` says so before it issues a second one."""
        key = person_key(person)
        return [
            p
            for p in self.list()
            if not p.revoked
            and p.person
            and person_key(p.person) == key
            and (role is None or p.role == role)
        ]

    def revoke(self, token_id: str) -> Principal:
        with self.storage.read() as rv:
            found = [
                (k, Principal(**json.loads(v)))
                for k, v in rv.tokens()
                if k.hex().startswith(token_id)
            ]
        if len(found) != 1:
            raise KeyError(f"{len(found)} tokens match {token_id!r}")
        digest, p = found[0]
        p = Principal(**{**asdict(p), "revoked": True})
        self.storage.put_token(digest, json.dumps(asdict(p), sort_keys=True).encode())
        self._cache.pop(digest, None)  # refused here at once, elsewhere within the bound
        return p
