"""faith25: a create's answer read by SCIM's case-insensitive attribute names.

RFC 7643 §2.1: attribute names (and schema URIs) are case insensitive. faith24's
``x.result.other`` of a create read the answer at the request's spelling only: an answer
spelling an asked attribute ``nickname`` for ``nickName``, or the enterprise extension's
key in capitals, was taken as not returned, and the log kept the request's digest for what
the SP stored otherwise. An answer naming one attribute twice in two spellings cannot say
which the SP stored: ``other`` is null (not known), never a guess.

Events as the adapter records them (``recorded.exchange_event``), judged by ``classify``.
"""

from __future__ import annotations

from typing import Any

from tlog.scim.effects import classify

from .helpers import effect_acts
from .recorded import exchange_event

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _body(**attrs: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": "ann", "active": True, **attrs}


def _create(body: dict[str, Any], *, twice: bool = False, **answer: Any) -> dict[str, Any]:
    """The create of ``body`` answered with ``answer`` in place of the body's attributes of
    the same names in any spelling (``twice``: beside them)."""
    lows = {k.lower() for k in answer}
    kept = {k: v for k, v in body.items() if twice or k.lower() not in lows}
    return exchange_event("POST", "/Users", body, 201, {**kept, "id": "A", **answer})


def _put(answer: dict[str, Any]) -> dict[str, Any]:
    body = _body()
    return exchange_event("PUT", "/Users/A", body, 200, {**body, "id": "A", **answer})


def _other(ev: dict[str, Any]) -> Any:
    return (ev.get("x") or {}).get("result", {}).get("other", "absent")


def test_an_attribute_stored_otherwise_under_another_spelling_is_recorded() -> None:
    """Found: ``nickName: "ann"`` answered ``nickname: "Ann"`` recorded nothing; the log
    kept the request's digest, and a PUT leaving it out, the SP keeping and showing
    ``"Ann"``, named it changed."""
    body = _body(nickName="ann")
    created = _create(body, nickname="Ann")
    assert list(_other(created)) == ["nickname"], created.get("x")
    _, state, _ = classify(None, created)
    effect, _, _ = classify(state, _put({"nickname": "Ann"}))
    assert effect_acts(effect) == ["user.noop"], effect


def test_an_extension_key_in_another_case_is_read() -> None:
    body = _body(**{ENTERPRISE: {"employeeNumber": "7"}})
    created = _create(body, **{ENTERPRISE.upper(): {"EMPLOYEENUMBER": "0007"}})
    other = _other(created)
    assert isinstance(other, dict) and len(other) == 1, created.get("x")
    (path,) = other
    assert path.lower() == f"{ENTERPRISE}:employeeNumber".lower()
    _, state, _ = classify(None, created)
    effect, _, _ = classify(state, _put({ENTERPRISE: {"employeeNumber": "0007"}}))
    assert effect_acts(effect) == ["user.noop"], effect


def test_an_attribute_named_twice_in_two_spellings_is_not_known() -> None:
    """Found: ``nickName`` answered both as asked and, differently, as ``nickname``: the
    spelling asked was read, nothing recorded, the request's digest kept as stored."""
    body = _body(nickName="ann")
    created = _create(body, twice=True, nickname="Ann")  # beside nickName: "ann"
    assert _other(created) is None, created.get("x")
    _, state, _ = classify(None, created)
    # what the SP holds is not known: a PUT stating the asked value is named, never a noop
    put = exchange_event(
        "PUT", "/Users/A", _body(nickName="ann"), 200, {**_body(nickName="ann"), "id": "A"}
    )
    effect, _, _ = classify(state, put)
    assert effect_acts(effect) == ["user.update"], effect
    # and an extension's sub-attribute named twice alike
    ext = _body(**{ENTERPRISE: {"employeeNumber": "7"}})
    created = _create(ext, **{ENTERPRISE: {"employeeNumber": "7", "EmployeeNumber": "8"}})
    assert _other(created) is None, created.get("x")
    # or the extension's key twice
    created = _create(ext, twice=True, **{ENTERPRISE.upper(): {"employeeNumber": "8"}})
    assert _other(created) is None, created.get("x")


def test_a_create_stored_as_asked_in_another_spelling_records_nothing() -> None:
    body = _body(nickName="ann", **{ENTERPRISE: {"employeeNumber": "7"}})
    for answer in (
        {},
        {"nickname": "ann"},
        {ENTERPRISE.upper(): {"employeenumber": "7"}},
    ):
        created = _create(body, **answer)
        assert _other(created) == "absent", (answer, created.get("x"))
