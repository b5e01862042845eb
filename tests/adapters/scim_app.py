"""What ``scim2-server`` serves, as an ASGI app: for the tests, and for the middleware
process they start (``tests/adapters/mw_server.py``), which imports this module alone: the
tests' helpers import pytest and the proxy, a tenth of a second of CPU at every start."""

from __future__ import annotations

from typing import Any

__all__ = ["SCIM_TOKEN", "scim_asgi_app"]

SCIM_TOKEN = "s3cret-scim-token"


def scim_asgi_app(token: str = SCIM_TOKEN) -> Any:
    """What ``scim2-server --bearer-token TOKEN`` serves, as an ASGI app (in-memory storage):
    scim2-server's ``ASGIApplication`` with the static bearer tokens of its test server."""
    from scim2_models import ScimProvider, UnauthorizedException
    from scim2_server.applications.asgi import ASGIApplication
    from scim2_server.memory import AsyncInMemoryStorage, InMemoryStorage
    from scim2_server.service import ScimService
    from scim2_server.testserver.application import BEARER_TOKEN_SCHEME
    from scim2_server.utils import (
        load_default_resource_types,
        load_default_schemas,
        load_default_service_provider_config,
    )

    class BearerASGIApplication(ASGIApplication):
        def __init__(self, storage: Any, provider: Any, service: Any, tokens: set[str]) -> None:
            super().__init__(storage, provider, service)
            self.tokens = tokens

        def check_auth(self, request: Any) -> None:
            scheme, _, tok = (request.header("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or tok not in self.tokens:
                raise UnauthorizedException

    config = load_default_service_provider_config()
    config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    return BearerASGIApplication(
        AsyncInMemoryStorage(InMemoryStorage()),
        provider,
        ScimService(provider, secret="x" * 32),
        {token},
    )
