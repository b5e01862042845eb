"""Red team 13: what the differential check (``test_redteam13_differential.py``) found, each
as a small fixed sequence against scim2-server through the audit middleware, judged by the
same model-free oracle (the SP's resource read before and after each write).

* A PUT leaves out ``active`` or the enterprise manager: the SP clears them (RFC 7644
  §3.5.1 lets it clear or default them), the effect said ``user.noop`` and kept the old
  values; a later PATCH setting the same manager again also "changed nothing".
* ``[remove active, replace active true]`` on a deactivated user: the activation was
  claimed but its step was missing from ``changes`` (they ended at ``null``).
* A PUT setting ``active`` on a user whose ``active`` the SP had cleared: ``user.noop``.
* ``emails[type eq "work"].value`` replaced: the state kept the old ``emails``, so a PUT
  restoring them was judged unchanged (and the PATCH named no ``emails`` change); a
  PATCH ``add`` to ``emails`` (the SP appends) made the state the added values alone, so
  a PUT stating only those was judged unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .differential import ENT, USER, Driver
from .helpers import scim_asgi_app
from .rig import make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")
pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def _patch(*ops: dict[str, Any]) -> tuple[str, str, Any]:
    return ("PATCH", "T", {"schemas": [PATCH], "Operations": list(ops)})


def _put(**attrs: Any) -> tuple[str, str, Any]:
    return ("PUT", "T", {"schemas": [USER, ENT], "userName": "{T_NAME}", **attrs})


MANAGER = {"manager": {"value": "{P1}"}}
GROUP = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "{G_NAME}"}

CASES = {
    "put-without-manager-then-same-manager": (
        {"schemas": [USER, ENT], "userName": "{T_NAME}", "active": True, ENT: MANAGER},
        [
            _put(active=True),
            _patch({"op": "add", "path": f"{ENT}:manager", "value": {"value": "{P1}"}}),
        ],
    ),
    "put-without-active-on-deactivated": (
        {"schemas": [USER], "userName": "{T_NAME}", "active": False},
        [_put(), _put(active=True)],
    ),
    "email-by-filter-then-put-back": (
        {
            "schemas": [USER],
            "userName": "{T_NAME}",
            "emails": [{"type": "work", "value": "w0@x.test"}],
        },
        [
            _patch({"op": "replace", "path": 'emails[type eq "work"].value', "value": "w1@x.test"}),
            _put(emails=[{"type": "work", "value": "w0@x.test"}]),
        ],
    ),
    "email-added-then-put-alone": (
        {
            "schemas": [USER],
            "userName": "{T_NAME}",
            "emails": [{"type": "work", "value": "w0@x.test"}],
        },
        [
            _patch(
                {"op": "add", "path": "emails", "value": [{"type": "home", "value": "h@x.test"}]}
            ),
            _put(emails=[{"type": "home", "value": "h@x.test"}]),
        ],
    ),
    "remove-active-then-activate": (
        {"schemas": [USER], "userName": "{T_NAME}", "active": False},
        [
            _patch(
                {"op": "remove", "path": "active"},
                {"op": "replace", "path": "active", "value": True},
            )
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_effects_of_what_a_put_leaves_out(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    case: str,
) -> None:
    user, writes = CASES[case]
    sp = scim_asgi_app()
    with make_rig(harness, tmp_path, app=sp) as rig:
        driver = Driver(rig, sp, pool=2)
        bad = driver.run({"user": user, "group": GROUP, "writes": [(w, "plain") for w in writes]})
        assert not bad, "\n".join(bad)
