"""scim2-server's application under a production WSGI server, for the proxy benchmark.

    python -m bench.scim_sp --port 9000 --bearer-token TOKEN [--threads 8]

The ``scim2-server`` command serves its application with the standard library's
``wsgiref`` (a thread per connection, HTTP/1.0: every connection is closed after one
answer, and a listen queue of 5). That is a test server, not what a service provider runs in
production, and it makes every client, the proxy included, pay a new TCP connection per
request. This module builds the same application the command builds (in-memory storage,
default schemas and resource types, a static bearer token, ``X-Forwarded-*`` trusted) and
serves it with waitress (HTTP/1.1 keep-alive, a fixed pool of worker threads), so the direct
and the proxied runs of ``bench.scim_proxy`` both talk to an SP that keeps connections open.
"""

from __future__ import annotations

import argparse
import secrets

from scim2_models import ScimProvider
from scim2_server.applications.wsgi import ForwardedHeaders
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)


def application(token: str) -> ForwardedHeaders:
    """The application of ``scim2-server --bearer-token TOKEN --reverse-proxy``."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    service = ScimService(provider, secret=secrets.token_urlsafe(32))
    app = BearerTokenApplication(
        InMemoryStorage(), provider, service=service, bearer_tokens=[token]
    )
    return ForwardedHeaders(app)


def main() -> None:
    import waitress

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bearer-token", required=True)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    waitress.serve(
        application(args.bearer_token),
        host="127.0.0.1",
        port=args.port,
        threads=args.threads,
        backlog=1024,
        connection_limit=1000,
        ident=None,
        _quiet=True,
    )


if __name__ == "__main__":
    main()
