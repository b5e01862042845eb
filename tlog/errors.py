"""Every error a request can meet, and the one table that maps it to an HTTP status.

The server's exceptions, where each is defined, and its status (:data:`ERRORS`, in this
order; the first match wins)::

    Exception
    ├── BadRequest                  400  malformed request (this module)
    ├── client…FormatError          400  malformed data: notes, proofs, SCIM events
    │   └── client.scim.EventFormatError
    ├── tlog.bodies.MalformedBody   400  a body that is not what its route takes
    ├── tlog.bodies.BodyTooLarge    413
    ├── PayloadTooLarge             413  (this module)
    ├── tlog.auth.AuthError         401  missing, unknown, expired or revoked token
    ├── tlog.auth.Forbidden         403  wrong role or tenant
    ├── tlog.log.NotFound           404
    ├── Conflict                    409  conflicts with stored state (this module)
    ├── UnsupportedMediaType        415  (this module)
    ├── tlog.sequencer.Overloaded   503  backlog full, with its Retry-After
    ├── tlog.sequencer.SequencerStopped  503
    └── tlog.backend.StorageError   503  a damaged, full or stalled store, its database known
                                         down (StoreUnreachable), its operator lock not held
                                         (StoreNotHeld): a deliberate 503 with the reason,
                                         never a wrong answer

Starlette's ``HTTPException`` keeps its own status (405 with ``Allow``). Anything else is
a 500 ``internal error``, logged with its traceback; a raw store error met on a read is
first turned into the :class:`~tlog.backend.StorageError` it means. Every route, the log's
(:mod:`tlog.app`) and the SCIM service's (:mod:`tlog.scim.routes`), answers through
:func:`json_errors`, so the same exception is the same status everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from client.formats.note import FormatError
from tlog.auth import AuthError, Forbidden
from tlog.backend import StorageError, storage_fault
from tlog.bodies import BodyTooLarge, MalformedBody
from tlog.log import NotFound
from tlog.sequencer import Overloaded, SequencerStopped

__all__ = [
    "ERRORS",
    "BadRequest",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "error_response",
    "json_errors",
]

log = logging.getLogger("tlog.http")


class BadRequest(Exception):
    """Malformed request (query, path, headers)."""


class PayloadTooLarge(Exception):
    """A request or an entry beyond its limit."""


class Conflict(Exception):
    """The request conflicts with stored state (an expired or unapproved erasure, a hold)."""


class UnsupportedMediaType(Exception):
    """A body in a Content-Type the route does not take."""


# The one place where exceptions become status codes.
ERRORS: list[tuple[type[BaseException], int]] = [
    (BadRequest, 400),
    (FormatError, 400),
    (MalformedBody, 400),
    (BodyTooLarge, 413),
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (PayloadTooLarge, 413),
    (Conflict, 409),
    (UnsupportedMediaType, 415),
    (Overloaded, 503),
    (SequencerStopped, 503),
    (StorageError, 503),
]


def _json_error(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def error_response(exc: BaseException) -> Response:
    """The JSON ``{"error": reason}`` answer for ``exc``, by :data:`ERRORS`."""
    for cls, status in ERRORS:
        if isinstance(exc, cls):
            headers: dict[str, str] = {}
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="tlog"'
            if isinstance(exc, Overloaded):
                headers["Retry-After"] = str(exc.retry_after)
            elif status == 503:
                headers["Retry-After"] = "5"
            return _json_error(status, str(exc) or cls.__name__, headers)
    if isinstance(exc, HTTPException):
        return _json_error(exc.status_code, exc.detail, dict(exc.headers or {}))
    fault = storage_fault(exc)  # a raw store error from a read: the store is damaged
    if fault is not None:
        log.critical("STORE FAILURE while serving a request: %s", fault)
        return error_response(fault)
    log.exception("unhandled error", exc_info=exc)
    return _json_error(500, "internal error")


def json_errors(
    fn: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint that answers ``fn``'s exceptions with :func:`error_response`."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return error_response(exc)

    return endpoint
