"""Bearer tokens with roles, stored hashed in the log's data directory.

A token is ``tlog_`` followed by 43 URL-safe base64 characters (256 random bits). Only its
SHA-256 is stored, with a JSON record: role, optional tenant, name, creation and expiry time,
and whether it was revoked. Lookups go to the store on every request, so a revocation or a
new token made by ``tlog token`` while the server runs takes effect at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass

from tlog.storage import Storage

__all__ = ["ROLES", "AuthError", "Forbidden", "Principal", "TokenStore"]

ROLES = ("submitter", "auditor", "privacy-officer", "admin")
TOKEN_PREFIX = "tlog_"


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

    def require(self, *roles: str, tenant: str | None = None) -> None:
        if self.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}, not {self.role}")
        if tenant is not None and self.tenant is not None and self.tenant != tenant:
            raise Forbidden("this token is bound to another tenant")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def create(
        self,
        role: str,
        *,
        tenant: str | None = None,
        name: str = "",
        ttl: int | None = None,
    ) -> tuple[str, Principal]:
        """Make a new token; the token text is returned once and never stored."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if role in ("submitter", "auditor") and tenant is None:
            tenant = "default"
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(token)
        now = int(time.time())
        p = Principal(
            digest.hex()[:16], role, tenant, name, now, None if ttl is None else now + ttl
        )
        self.storage.put_token(digest, json.dumps(asdict(p), sort_keys=True).encode())
        return token, p

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing Authorization: Bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
            raise AuthError("Authorization must be 'Bearer tlog_...'")
        if len(token) > 128:
            raise AuthError("malformed token")
        with self.storage.read() as rv:
            raw = rv.token(token_digest(token.strip()))
        if raw is None:
            raise AuthError("unknown token")
        p = Principal(**json.loads(raw))
        if p.revoked:
            raise AuthError("token revoked")
        if p.expires is not None and time.time() >= p.expires:
            raise AuthError("token expired")
        return p

    def list(self) -> list[Principal]:
        with self.storage.read() as rv:
            return [Principal(**json.loads(v)) for _, v in rv.tokens()]

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
        return p
