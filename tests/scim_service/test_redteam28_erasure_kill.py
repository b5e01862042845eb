"""Red team 28: an erasure's approval killed with SIGKILL in a real ``tlog serve``, at each
point of its rotation (docs/design.md "Erasure"): before the store's commit (the key file
holds both master keys), after it (the store is under the new key, the file still holds
both), and after the file's second write (only the leaf is not sequenced yet).

After the restart, on both backends: the server starts with one key in the file; a
committed approval's event reaches the log at the start, before any retry (its certificate
answers); the approval retried answers 200 with the erasure event's index in the log; the subject's
events are erased and nobody else's; no key material of the subject is left in the store
(no subject record of its kid, no DEK, listing or state record of a kid without a subject
record); and the whole log audits (every tile recomputed, the checkpoint's signature)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.net.logclient import LogClient
from client.net.scim_audit import ScimAuditClient
from client.scim import event_to_json
from client.tools.auditor import Auditor
from tests.ops.paused import command_script
from tests.support import start_server, store_args, tlog_in_process, token_for
from tlog.backend import open_backend
from tlog.scim import store
from tlog.scim.keys import MASTER_KEY_FILE, read_key_file

from .conftest import T1, user_event

pytestmark = pytest.mark.slow  # servers started, killed and started again

ALICE, BOB = "u-alice-rt28", "u-bob-rt28"

_DIE = """
import os, signal
from tlog.scim import keys as _keys

def _die():
    os.kill(os.getpid(), signal.SIGKILL)
"""

# Where the approving process dies (each a patch of tlog.scim.keys.KeyRing).
POINTS = {
    "before-commit": """
        _rotate = _keys.KeyRing.commit_rotation
        def _commit_rotation(self, new, commit):
            def dying():
                _die()
            return _rotate(self, new, dying)
        _keys.KeyRing.commit_rotation = _commit_rotation
    """,
    "after-commit": """
        _rotate = _keys.KeyRing.commit_rotation
        def _commit_rotation(self, new, commit):
            def dying():
                commit()
                _die()
            return _rotate(self, new, dying)
        _keys.KeyRing.commit_rotation = _commit_rotation
    """,
    "after-switch": """
        _switch = _keys.KeyRing._switch
        def _switch_and_die(self, new):
            _switch(self, new)
            _die()
        _keys.KeyRing._switch = _switch_and_die
    """,
}


def _hdr(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post_event(url: str, token: str, rid: str, req: str) -> str:
    ev = json.loads(event_to_json(user_event(rid, req=req, xid=f"{rid}@example.org")))
    r = httpx.post(
        url + "/v1/scim/events",
        content=json.dumps(ev),
        headers={**_hdr(token), "Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    eid: str = r.json()["eid"]
    return eid


def _orphans(data: Path, database: str | None, kid_hash: bytes) -> list[str]:
    """What of the erased subject's keys the store still holds (nothing, when whole)."""
    st = open_backend(database, data)
    try:
        with st.read() as rv:
            kids = set()
            left = []
            for _, raw in rv.aux_range(store.PREFIX + b"S"):
                kid = store.decode_record(raw, "subject")["kid"]
                kids.add(kid)
                if hashlib.sha256(kid).digest() == kid_hash:
                    left.append("the subject record of the erased kid")
            for tag in (b"D", b"L", b"F"):
                p = store.PREFIX + tag
                for key, _ in rv.aux_range(p):
                    if key[len(p) : len(p) + 16] not in kids:
                        left.append(f"a {tag.decode()} record of a kid without subject")
            return left
    finally:
        st.close()


@pytest.mark.parametrize("point", list(POINTS))
def test_redteam28_an_approval_killed_mid_rotation_is_whole_after_a_retry(
    tmp_path: Path, database: str | None, point: str
) -> None:
    data = tmp_path / "data"
    start_server(data, database=database).stop()
    sub = token_for(data, database, "--role", "submitter", "--tenant", T1)
    po_a = token_for(data, database, "--role", "privacy-officer", "--person", "A")
    po_b = token_for(data, database, "--role", "privacy-officer", "--person", "B")
    aud = token_for(data, database, "--role", "auditor", "--tenant", T1)
    patch = _DIE + textwrap.dedent(POINTS[point])
    srv = start_server(data, database=database, script=command_script(patch, "serve"))
    try:
        alice = _post_event(srv.url, sub, ALICE, "r-a")
        bob = _post_event(srv.url, sub, BOB, "r-b")
        body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr"}
        r = httpx.post(srv.url + "/v1/scim/erasures", json=body, headers=_hdr(po_a), timeout=60)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{srv.url}/v1/scim/erasures/{rid}/approve", headers=_hdr(po_b), timeout=60)
        assert srv.proc.wait(60) == -signal.SIGKILL
    finally:
        srv.stop()
    srv = start_server(data, database=database)
    try:
        key_file = data / MASTER_KEY_FILE
        assert read_key_file(key_file)[1] is None  # one key left in the file
        status = httpx.get(f"{srv.url}/v1/scim/erasures/{rid}", headers=_hdr(po_a), timeout=60)
        if point == "before-commit":
            assert status.json()["state"] == "pending", status.text
        else:  # committed: its event reaches the log at the start, before any retry
            assert status.json()["state"] == "done", status.text
            cert = f"{srv.url}/v1/scim/erasures/{rid}/certificate"
            deadline = time.monotonic() + 60
            while (c := httpx.get(cert, headers=_hdr(po_a), timeout=60)).status_code != 200:
                assert c.status_code == 404, c.text  # "not in the log yet"
                assert time.monotonic() < deadline, c.text
                time.sleep(0.2)
        r = httpx.post(f"{srv.url}/v1/scim/erasures/{rid}/approve", headers=_hdr(po_b), timeout=60)
        assert r.status_code == 200, r.text
        done: dict[str, Any] = r.json()
        assert done["state"] == "done", done
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        with httpx.Client(timeout=60) as http:
            auditor = ScimAuditClient(srv.url, aud, vkey, http=http)
            assert done["receipt"]["index"] is not None, done  # the event is in the log
            (receipt,) = auditor.receipts(eid=done["receipt"]["eid"])
            assert receipt.index == done["receipt"]["index"]
            assert list(auditor.search_all(rid=ALICE)) == []  # unlinked
            (erased,) = auditor.receipts(eid=alice)
            assert erased.erased and erased.index is not None
            (kept,) = auditor.receipts(eid=bob)
            assert not kept.erased and kept.index is not None
            assert [e.event["rid"] for e in auditor.search_all(rid=BOB)] == [BOB]
            with LogClient(srv.url, vkey, http=http) as client:
                Auditor(client, state_path=tmp_path / "audit.json").run()
        status = httpx.get(f"{srv.url}/v1/scim/erasures/{rid}", headers=_hdr(po_a), timeout=60)
        assert status.status_code == 200 and status.json()["state"] == "done"
    finally:
        srv.stop()
    assert _orphans(data, database, base64.b64decode(done["kid_hash"])) == []
    if database is None:  # and no clear identifier in the file, freed pages included
        mdb = b"".join(f.read_bytes() for f in data.rglob("*.mdb"))
        assert mdb and ALICE.encode() not in mdb and b"alice" not in mdb.lower()
    assert oct(os.stat(data / MASTER_KEY_FILE).st_mode & 0o777) == oct(0o600)


# Retention expiry with everything already due (the month boundary moved to tomorrow) and
# the process killed once the rotation is whole: the shred is committed, its event not
# sequenced yet.
_EXPIRY_DIES = """
import time
from tlog.scim import erasure as _erasure
_erasure._epoch_start_ms = lambda epoch: int(time.time() * 1000) + 86_400_000
_switch = _keys.KeyRing._switch
def _switch_and_die(self, new):
    _switch(self, new)
    _die()
_keys.KeyRing._switch = _switch_and_die
"""


def test_redteam28_an_expiry_killed_before_its_event_is_sequenced_is_logged_after_restart(
    tmp_path: Path, database: str | None
) -> None:
    """The expiry's shred committed, the process killed before its ``tlog.expiry`` event
    was sequenced: nothing retries it (the next run finds nothing due), so before red team
    28 the events were gone with no event in the log saying so. The next start sequences
    the event the commit staged."""
    data = tmp_path / "data"
    start_server(data, database=database).stop()
    sub = token_for(data, database, "--role", "submitter", "--tenant", T1)
    po = token_for(data, database, "--role", "privacy-officer", "--person", "A")
    aud = token_for(data, database, "--role", "auditor", "--tenant", T1)
    srv = start_server(data, database=database, script=command_script(_DIE + _EXPIRY_DIES, "serve"))
    try:
        alice = _post_event(srv.url, sub, ALICE, "r-a")
        r = httpx.put(
            srv.url + "/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=_hdr(po)
        )
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.TransportError):
            httpx.post(
                srv.url + "/v1/scim/expire", json={"tenant": T1}, headers=_hdr(po), timeout=60
            )
        assert srv.proc.wait(60) == -signal.SIGKILL
    finally:
        srv.stop()
    # Before the restart the store holds the expiry's staged event, not sequenced: fsck says
    # so and passes (before, its records were "not in the log": exit 2 on a healthy store).
    r = tlog_in_process("fsck", "--data", str(data), *store_args(database))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fsck: PENDING 1 event(s)" in r.stderr, r.stderr
    srv = start_server(data, database=database)
    try:
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        with httpx.Client(timeout=60) as http:
            auditor = ScimAuditClient(srv.url, aud, vkey, http=http)
            (erased,) = auditor.receipts(eid=alice)
            assert erased.erased  # the shred was committed
            deadline = time.monotonic() + 60
            while not (runs := list(auditor.search_all(action="tlog.expiry.run"))):
                assert time.monotonic() < deadline, "the expiry's event never reached the log"
                time.sleep(0.2)
            (run,) = runs
            assert run.event["x"]["events"] == 1
    finally:
        srv.stop()
    r = tlog_in_process("fsck", "--data", str(data), *store_args(database))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PENDING" not in r.stderr, r.stderr  # sequenced and forgotten
