"""The log's ASGI app, built from one routing table.

The table is a list of :class:`tlog.http.Endpoint` rows: the log API's
(:meth:`tlog.routes.Api.endpoints`) and any a caller adds (``extra_routes``: the SCIM
service, metrics, the console). From it are derived, so they cannot disagree:

* the fast dispatch (:class:`LogApp`): rows marked ``hot`` are answered straight from the
  ASGI scope, before Starlette's request object, router and middleware, which cost more
  than a tile read; exact paths by one dict lookup, a ``{name:path}`` tail by its prefix;
* Starlette's routes for everything (HEAD, over-long paths and every other row), one per
  path so that a 405 names every method of the path;
* the operations ``GET /openapi.json`` describes (:mod:`tlog.openapi`, kept to the routes
  the app has).

Every row has one handler, reached by both dispatches, and one error mapping
(:data:`tlog.errors.ERRORS`). :mod:`tlog.http` has the request helpers, :mod:`tlog.routes`
the handlers, :mod:`tlog.published` what is handed out.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from tlog.auth import TokenStore
from tlog.errors import error_response, json_errors
from tlog.http import Endpoint, Handler, Limits, Scoped
from tlog.log import Log
from tlog.published import PublishedState
from tlog.reads import ReadPool
from tlog.routes import Api
from tlog.sequencer import Sequencer

__all__ = ["LogApp", "create_app", "route_operations"]

MAX_FAST_PATH = 200  # longer paths take Starlette's route (same handler), e.g. a bad tile


def route_operations(routes: list[Any]) -> set[tuple[str, str]]:
    """(OpenAPI path, lower-case method) of every route, HEAD left out (it follows GET)."""
    ops: set[tuple[str, str]] = set()
    for r in routes:
        if isinstance(r, Route):
            path = r.path.replace(":path}", "}")
            ops.update((path, m.lower()) for m in (r.methods or ()) if m != "HEAD")
    return ops


def _one_route_per_path(routes: list[Any]) -> list[Any]:
    """Routes on one path with different methods, merged into one route per path.

    Starlette answers a wrong method with the ``Allow`` of the first route whose path
    matches; merged, a 405 names every method the path has (RFC 9110 §15.5.6).
    """
    by_path: dict[str, list[Route]] = {}
    for r in routes:
        if isinstance(r, Route):
            by_path.setdefault(r.path, []).append(r)
    out: list[Any] = []
    for r in routes:
        if not isinstance(r, Route):
            out.append(r)
            continue
        group = by_path.get(r.path)
        if group is None:
            continue  # already merged into the first route of its path
        del by_path[r.path]
        if len(group) == 1:
            out.append(r)
            continue
        handlers: dict[str, Callable[[Request], Any]] = {}
        for g in group:
            for m in g.methods or ():
                handlers.setdefault(m, g.endpoint)

        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            return await handlers[request.method](request)  # type: ignore[no-any-return]

        out.append(Route(r.path, dispatch, methods=sorted(handlers)))
    return out


def _openapi_endpoint(routes: list[Any]) -> Callable[[Request], Any]:
    """GET /openapi.json: the description of the routes this app has (tlog.openapi)."""
    from tlog.openapi import openapi

    doc = openapi()
    have = route_operations(routes) | {("/openapi.json", "get")}
    paths = {}
    for path, item in doc["paths"].items():
        kept = {m: op for m, op in item.items() if (path, m) in have}
        if kept:
            paths[path] = kept
    doc["paths"] = paths
    body = json.dumps(doc, separators=(",", ":")).encode()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return endpoint


def _route(e: Endpoint) -> Route:
    return Route(e.path, json_errors(e.handler), methods=[e.method])


class FastRoutes:
    """The hot rows of the routing table, matched without Starlette."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.exact: dict[tuple[str, str], Handler] = {}
        self.prefixed: list[tuple[str, str, str, Handler]] = []  # method, prefix, param
        for e in endpoints:
            if not e.hot:
                continue
            head, brace, rest = e.path.partition("{")
            if brace:
                self.prefixed.append((e.method, head, rest.split(":", 1)[0], e.handler))
            else:
                self.exact[(e.method, e.path)] = e.handler

    def match(self, scope: Scope) -> Handler | None:
        """The handler of a hot row for this request (path parameters set in the scope)."""
        method: str = scope["method"]
        path: str = scope["path"]
        h = self.exact.get((method, path))
        if h is not None:
            return h
        if len(path) < MAX_FAST_PATH:
            for m, prefix, name, handler in self.prefixed:
                if m == method and path.startswith(prefix):
                    scope["path_params"] = {name: path[len(prefix) :]}
                    return handler
        return None


class LogApp:
    """The ASGI app: hot rows answered before Starlette's router (module docstring), every
    other request (HEAD included) by Starlette, with the same handlers and error mapping."""

    def __init__(self, app: Starlette, api: Api, fast: FastRoutes) -> None:
        self.app = app
        self.api = api
        self.fast = fast
        self.state = app.state
        # (scope, status, seconds) after each HTTP request (tlog.metrics).
        self.observe: Callable[[Scope, int, float], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observe = self.observe
        t0 = time.perf_counter()
        handler = self.fast.match(scope)
        if handler is not None:
            try:
                response = await handler(Scoped(scope, receive))
            except Exception as exc:
                response = error_response(exc)
            # The fast paths know their status: no wrapper around send (hot path).
            try:
                await response(scope, receive, send)
            finally:
                if observe is not None:
                    observe(scope, response.status_code, time.perf_counter() - t0)
            return
        if observe is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            observe(scope, status, time.perf_counter() - t0)


def create_app(
    log_: Log,
    sequencer: Sequencer,
    tokens: TokenStore,
    limits: Limits | None = None,
    *,
    published: PublishedState | None = None,
    reads: ReadPool | None = None,
    extra_routes: Sequence[Endpoint | BaseRoute] | None = None,
    on_startup: list[Callable[[], Any]] | None = None,
    on_shutdown: list[Callable[[], Any]] | None = None,
    api: Api | None = None,
) -> LogApp:
    """The app of the log API plus ``extra_routes`` (table rows, ``hot`` ones dispatched
    fast too, or plain Starlette routes). ``published``: what is handed out (default:
    :class:`tlog.published.Solo`; a witnessed log passes its pusher's
    :class:`tlog.published.Witnessed`); it is started and stopped with the app, like the
    sequencer and the read pool."""
    # ``api``: built by the caller when its extra routes need it (they get it explicitly,
    # not through request.app.state); it must be over the same log, sequencer and tokens.
    if api is None:
        api = Api(log_, sequencer, tokens, limits or Limits(), published, reads)
    table: list[Endpoint] = api.endpoints()
    others: list[BaseRoute] = []
    for r in extra_routes or ():
        if isinstance(r, Endpoint):
            table.append(r)
        else:
            others.append(r)
    routes: list[BaseRoute] = [_route(e) for e in table] + others
    routes.append(Route("/openapi.json", _openapi_endpoint(routes), methods=["GET"]))
    routes = _one_route_per_path(routes)
    state = api.published

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sequencer.start()
        api.reads.start()
        state.start()
        for f in on_startup or []:
            f()
        try:
            yield
        finally:
            for f in on_shutdown or []:
                f()
            state.stop()
            sequencer.stop()
            api.reads.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    # A path one slash away from a route is a 404 like any unknown path: Starlette would
    # answer 307 to a Location built from the request's Host header (an open redirect that
    # a cache in front of the log would keep and serve to everyone).
    app.router.redirect_slashes = False
    app.state.api = api
    return LogApp(app, api, FastRoutes(table))
