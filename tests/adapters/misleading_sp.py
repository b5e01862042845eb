"""An SP for the tests of an extension's resource type (faith30, faith31): scim2-server
whose Users carry an extension whose URN ends with another type's name."""

from __future__ import annotations

import json
from typing import Any

from .helpers import SCIM_TOKEN

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
# An extension of the SP's Users whose URN ends with another type's name.
MISLEADING = "urn:ietf:params:scim:schemas:extension:acme:2.0:Group"


def sp_with_misleading_extension(more: int = 0) -> Any:
    """scim2-server's ASGI app (bearer ``SCIM_TOKEN``) whose User resource type declares
    the ``MISLEADING`` extension (a ``team`` string, and ``more`` strings ``a0``, ``a1``,
    ...) in its ``/ResourceTypes`` and ``/Schemas``, and stores and answers it."""
    from scim2_models import Schema, ScimProvider, UnauthorizedException
    from scim2_server.applications.asgi import ASGIApplication
    from scim2_server.memory import AsyncInMemoryStorage, InMemoryStorage
    from scim2_server.service import ScimService
    from scim2_server.utils import (
        load_default_resource_types,
        load_default_schemas,
        load_default_service_provider_config,
    )

    schemas = load_default_schemas()
    schemas[MISLEADING] = Schema.model_validate(
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": MISLEADING,
            "name": "AcmeTeam",
            "attributes": [
                {
                    "name": name,
                    "type": "string",
                    "multiValued": False,
                    "required": False,
                    "caseExact": False,
                    "mutability": "readWrite",
                    "returned": "default",
                    "uniqueness": "none",
                }
                for name in ["team", *(f"a{i}" for i in range(more))]
            ],
        }
    )
    types = load_default_resource_types()
    user = types["User"]
    ext = type(user.schema_extensions[0])
    user.schema_extensions = [*user.schema_extensions, ext(schema_=MISLEADING, required=False)]

    class App(ASGIApplication):
        def check_auth(self, request: Any) -> None:
            if (request.header("Authorization") or "") != f"Bearer {SCIM_TOKEN}":
                raise UnauthorizedException

    provider = ScimProvider.from_discovery(
        schemas.values(), types.values(), config=load_default_service_provider_config()
    )
    return App(
        AsyncInMemoryStorage(InMemoryStorage()), provider, ScimService(provider, secret="x" * 32)
    )


async def no_meta_type(scope: dict[str, Any], raw: bytes) -> bytes:
    """The answer without its ``meta.resourceType`` (an SP that does not say it)."""
    doc = json.loads(raw)
    doc.get("meta", {}).pop("resourceType", None)
    return json.dumps(doc).encode()
