"""Red team 28: the officers' writes on a log that stopped signing. A witness answering 422
(the split-view alarm) halts a real ``tlog serve`` (docs/design.md: every write 503 until a
restart). An erasure approved then must change nothing: before this test, the approval
shredded the subject's keys in its own commit and only then found the log halted, so the
officer got 503 "not signing" while the data was destroyed, with no event in the log
saying so. A request made then must not be stored either (a 503 whose
record exists is a silent wrong answer, and its retry a second record).

Both backends; the witness is a local HTTP stand-in whose answer the test switches (404 at
start-up, "does not witness this log"; 422 afterwards)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
from client.net.scim_audit import ScimAuditClient
from client.scim import event_to_json
from tests.net.helpers import read_request, serving
from tests.support import start_server, start_witnessed_server, token_for

from .conftest import T1, user_event

pytestmark = pytest.mark.slow  # real servers

ALICE, BOB = "u-alice-rt28h", "u-bob-rt28h"


def _hdr(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post_event(url: str, token: str, rid: str, req: str) -> httpx.Response:
    ev = json.loads(event_to_json(user_event(rid, req=req, xid=f"{rid}@example.org")))
    return httpx.post(
        url + "/v1/scim/events",
        content=json.dumps(ev),
        headers={**_hdr(token), "Content-Type": "application/json"},
        timeout=60,
    )


def test_redteam28_officers_change_nothing_on_a_halted_log(
    tmp_path: Path, database: str | None
) -> None:
    answer = {"status": b"404 Not Found"}

    def witness(conn: socket.socket, stop: threading.Event) -> None:
        buf = bytearray()
        with conn:
            while not stop.is_set() and read_request(conn, buf) is not None:
                status = answer["status"]
                conn.sendall(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 3\r\n\r\nno\n"
                )

    data = tmp_path / "data"
    srv = start_server(data, database=database)
    vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
    srv.stop()
    sub = token_for(data, database, "--role", "submitter", "--tenant", T1)
    po_a = token_for(data, database, "--role", "privacy-officer", "--person", "A")
    po_b = token_for(data, database, "--role", "privacy-officer", "--person", "B")
    aud = token_for(data, database, "--role", "auditor", "--tenant", T1)
    w = CosignatureSigner.generate("w1.example/w")
    with serving(witness) as wurl:
        srv, _ = start_witnessed_server(
            tmp_path,
            data,
            f"log {vkey}\nwitness w1 {w.verifier().vkey()} {wurl}\nquorum w1\n",
            "0.2",
            "--witness-max-backoff",
            "0.5",
            database=database,
        )
        try:
            alice = _post_event(srv.url, sub, ALICE, "r-a")
            assert alice.status_code == 200, alice.text
            body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr"}
            r = httpx.post(srv.url + "/v1/scim/erasures", json=body, headers=_hdr(po_a))
            assert r.status_code == 201, r.text
            req = r.json()["id"]
            answer["status"] = b"422 Unprocessable Entity"
            _post_event(srv.url, sub, BOB, "r-b")  # a new checkpoint: pushed, 422
            deadline = time.monotonic() + 60
            while httpx.get(srv.url + "/v1/witnesses").json()["halted"] is None:
                assert time.monotonic() < deadline, "the log never halted"
                time.sleep(0.1)
            # The approval: 503 with the reason, and nothing erased.
            r = httpx.post(f"{srv.url}/v1/scim/erasures/{req}/approve", headers=_hdr(po_b))
            assert r.status_code == 503, r.text
            assert "not signing" in r.json()["error"]
            # The officer retrying the request made before the halt is answered that
            # request (faith30: a retry finds the first; its event is in the log, so not
            # "pending": with the log's duplicate answer as its receipt where the halted
            # sequencer gives one, else none now), no second one made; before, 503 as for a
            # new request.
            r = httpx.post(srv.url + "/v1/scim/erasures", json=body, headers=_hdr(po_a))
            assert r.status_code == 200, r.text
            assert r.json()["id"] == req and r.json()["state"] == "pending", r.text
            assert "event" not in r.json(), r.text
            assert r.json().get("receipt", {"duplicate": True})["duplicate"], r.text
            # A new request: 503 too.
            body = {"tenant": T1, "rt": "User", "rid": BOB, "reason": "gdpr"}
            r = httpx.post(srv.url + "/v1/scim/erasures", json=body, headers=_hdr(po_a))
            assert r.status_code == 503, r.text
        finally:
            srv.stop()
    # Started again without the lying witness (an officer's reads are logged too, so they
    # wait for a log that signs): nothing of the refused writes was done.
    srv = start_server(data, database=database)
    try:
        st = httpx.get(f"{srv.url}/v1/scim/erasures/{req}", headers=_hdr(po_a))
        assert st.json()["state"] == "pending", st.text
        listed = httpx.get(srv.url + "/v1/scim/erasures", headers=_hdr(po_a)).json()
        assert [e["id"] for e in listed["erasures"]] == [req], listed
        with httpx.Client(timeout=60) as http:
            auditor = ScimAuditClient(srv.url, aud, vkey, http=http)
            (receipt,) = auditor.receipts(eid=alice.json()["eid"])
            assert not receipt.erased
            assert [e.event["rid"] for e in auditor.search_all(rid=ALICE)] == [ALICE]
            r = httpx.post(f"{srv.url}/v1/scim/erasures/{req}/approve", headers=_hdr(po_b))
            assert r.status_code == 200, r.text
            (receipt,) = auditor.receipts(eid=alice.json()["eid"])
            assert receipt.erased
    finally:
        srv.stop()
