"""tlog.errors: one table maps every exception to its status, for every route."""

from __future__ import annotations

import json

import pytest
from starlette.exceptions import HTTPException

from client.formats.note import FormatError
from client.scim.cbor import EventFormatError
from tlog.auth import AuthError, Forbidden
from tlog.backend import StorageError
from tlog.errors import (
    ERRORS,
    BadRequest,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
)
from tlog.log import NotFound
from tlog.sequencer import Overloaded


@pytest.mark.parametrize(
    "exc,status",
    [
        (BadRequest("bad query"), 400),
        (FormatError("bad note"), 400),
        (EventFormatError("bad event"), 400),
        (AuthError("no token"), 401),
        (Forbidden("wrong tenant"), 403),
        (NotFound("no such entry"), 404),
        (Conflict("the erasure is not approved yet"), 409),
        (PayloadTooLarge("entry too large"), 413),
        (UnsupportedMediaType("Content-Type must be application/json"), 415),
        (StorageError("store damaged"), 503),
    ],
)
def test_each_error_has_its_status_and_reason(exc: Exception, status: int) -> None:
    r = error_response(exc)
    assert r.status_code == status
    assert json.loads(bytes(r.body)) == {"error": str(exc)}
    assert ("www-authenticate" in r.headers) == (status == 401)
    assert ("retry-after" in r.headers) == (status == 503)


def test_overload_carries_its_retry_after() -> None:
    r = error_response(Overloaded(3))
    assert (r.status_code, r.headers["retry-after"]) == (503, "3")


def test_http_exceptions_keep_their_status_and_anything_else_is_500() -> None:
    r = error_response(HTTPException(405, headers={"Allow": "POST"}))
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    r = error_response(RuntimeError("secret detail"))
    assert (r.status_code, json.loads(bytes(r.body))) == (500, {"error": "internal error"})


def test_the_table_has_one_status_per_class() -> None:
    classes = [cls for cls, _ in ERRORS]
    assert len(classes) == len(set(classes))
