"""Red team 13: are the log's effects faithful to what a real SP did? A differential,
model-free check: random sequences of SCIM writes (PATCH add/replace/remove with and without
value filters, path-less replaces, string booleans, roles, entitlements, the enterprise
manager, group member lists, PUTs that restate some attributes and leave others out,
DELETE; bodies gzip-compressed, with a UTF-8 BOM, in UTF-16LE, with duplicate members) go
through the audit middleware to scim2-server. Around each write the SP's stored resource is
read directly (not through the adapter); the auditor reads the events back from the log
(search by resource, verified and decrypted) and every effect is compared with the SP's
before/after (``differential.disagreements``): a claimed activation, deactivation, member
or manager added or removed, role granted or revoked, or "nothing changed" must be what the
SP did, and what the SP changed must be named (or marked not known).

The SP is only the oracle of what happened; no model of it is involved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .differential import Driver, hunt, reading_sp
from .helpers import scim_asgi_app
from .rig import make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")


def test_effects_match_what_the_sp_did(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    sp = scim_asgi_app()
    with make_rig(harness, tmp_path, app=reading_sp(sp)) as rig:
        driver = Driver(rig, sp)

        hunt(driver, 150, "RT13_EXAMPLES")
        # each encoding reached the SP and was applied (not only refused) in some write
        assert set(driver.applied) == {"plain", "gzip", "bom", "utf16", "dup"}, driver.applied
