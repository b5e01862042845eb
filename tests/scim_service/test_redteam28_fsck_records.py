"""Red team 28: ``tlog fsck`` on a healthy store where officers set a retention period and
placed legal holds (on a tenant and on a subject). Before, fsck knew neither record type
(``Y``, ``H``): "SCIM record Y/...: unknown record type", exit 2, for a store with nothing
wrong, so an operator running it after an incident was sent after damage that is not
there (or learnt to ignore its exit code). Both backends, a real ``tlog serve``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import start_server, store_args, tlog_in_process, token_for

from .conftest import T1

pytestmark = pytest.mark.slow  # a real server


def test_redteam28_fsck_knows_the_officers_records(tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "data"
    start_server(data, database=database).stop()
    po = token_for(data, database, "--role", "privacy-officer", "--person", "A")
    hdr = {"Authorization": f"Bearer {po}"}
    srv = start_server(data, database=database)
    try:
        r = httpx.put(srv.url + "/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=hdr)
        assert r.status_code == 200, r.text
        for body in (
            {"tenant": T1, "reason": "litigation"},
            {"tenant": T1, "reason": "litigation", "rt": "User", "rid": "u-held"},
        ):
            r = httpx.post(srv.url + "/v1/scim/holds", json=body, headers=hdr)
            assert r.status_code == 201, r.text
    finally:
        srv.stop()
    r = tlog_in_process("fsck", "--data", str(data), *store_args(database))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR" not in r.stderr
