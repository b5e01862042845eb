"""End to end on 127.0.0.1, all real: scim2-server, ``tlog scim-proxy``, the middleware, and
``tlog serve`` (with the SCIM event service) as the log.

* the scim2-tester compliance suite gives the same result per check against plain
  scim2-server, through the proxy, and with scim2-server's ASGI app inside the middleware;
* every write it sent is one event in the log, read back as an auditor: its leaf hash, its
  inclusion proof against the signed checkpoint, its commitment (nonce) and its request
  digest (the exact bytes sent) all verify; routing failures (405 on discovery) are not
  events;
* log unreachable mid-run, and the proxy SIGKILLed and restarted meanwhile: nothing lost,
  no duplicate (by eid) once the log is back;
* fail-closed when the outbox cannot take more; bulk: one event per operation.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_inclusion
from client.formats.note import Ed25519Verifier
from tests.support import wait_for

from .helpers import (
    BULK,
    PATCH,
    SCIM_TOKEN,
    Write,
    check_writes_logged,
    run_tester,
    start_mw_server,
    start_proxy,
    start_scim2_server,
    status_counts,
    stop,
    user,
)
from .logserver import Log, audit_read

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


@pytest.fixture(scope="module")
def plain_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[tuple[str, str]], list[Write]]:
    """The compliance suite against plain scim2-server, with no proxy and no log: the
    reference both backends' runs are compared with, the same for both, so run once per
    module (a run is ~700 writes and a third of the test's time)."""
    sp_plain, base_plain = start_scim2_server(tmp_path_factory.mktemp("plain"))
    try:
        t0 = time.monotonic()
        result = run_tester(base_plain)
        print(f"tester run: plain {time.monotonic() - t0:.1f}s")
        return result
    finally:
        stop(sp_plain)


def test_compliance_identical_and_every_write_logged(
    tmp_path: Path, log: Log, plain_run: tuple[list[tuple[str, str]], list[Write]]
) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sp_proxied, upstream = start_scim2_server(tmp_path)
        procs.append(sp_proxied)
        sub_p, aud_p = log.tokens("acme-proxy")
        proxy, base_proxy = start_proxy(tmp_path, upstream, log.url, sub_p, "acme-proxy")
        procs.append(proxy)
        sub_m, aud_m = log.tokens("acme-mw")
        (tmp_path / "mw.token").write_text(sub_m)
        mw, base_mw = start_mw_server(
            log.url,
            tmp_path / "mw.token",
            "acme-mw",
            tmp_path / "mw.sqlite",
            tmp_path / "mw.log",
            timeout=60,
        )
        procs.append(mw)

        plain, plain_writes = plain_run
        t1 = time.monotonic()
        proxied, proxy_writes = run_tester(base_proxy)
        t2 = time.monotonic()
        wrapped, mw_writes = run_tester(base_mw)
        t3 = time.monotonic()
        print(f"tester runs: proxy {t2 - t1:.1f}s middleware {t3 - t2:.1f}s")
        for name, res, w in (
            ("plain", plain, plain_writes),
            ("proxy", proxied, proxy_writes),
            ("middleware", wrapped, mw_writes),
        ):
            print(
                f"{name}: {len(res)} checks {status_counts(res)}, {len(w)} writes "
                f"{dict(Counter(x.status for x in w))}"
            )

        assert sorted(plain) == sorted(proxied) == sorted(wrapped)
        assert status_counts(plain) == {"SUCCESS": len(plain)}
        assert len(plain_writes) == len(proxy_writes) == len(mw_writes) == 711
        assert [w.status for w in plain_writes] == [w.status for w in proxy_writes]

        for writes, auditor in ((proxy_writes, aud_p), (mw_writes, aud_m)):
            events: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while len(events) < len(writes) - 12 and time.monotonic() < deadline:
                time.sleep(0.2)
                events = audit_read(log, auditor)
            # routing failures on the discovery endpoints (405) are not events
            kinds = check_writes_logged(writes, events, routing=lambda w: w.status == 405)
            print(f"events in the log: {len(events)}, verified; {dict(kinds)}")
            assert kinds == {"success": 190, "skipped": 509, "routing": 12}
        print(f"audit read and verified in {time.monotonic() - t3:.1f}s")
    finally:
        for p in procs:
            stop(p)


class Writer(threading.Thread):
    """Sequential SCIM writes (create, patch, delete) until stopped; records every answer."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.halt = threading.Event()
        self.answers: list[tuple[int, str | None, list[str]]] = []  # status, status hdr, eids
        self.errors = 0
        self.n = 0

    def note(self, r: httpx.Response) -> None:
        eids = [e.strip() for e in r.headers.get("tlog-event-id", "").split(",") if e.strip()]
        self.answers.append((r.status_code, r.headers.get("tlog-status"), eids))

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=AUTH, timeout=10) as c:
            while not self.halt.is_set():
                self.n += 1
                try:
                    r = c.post("/Users", json=user(f"w{self.n}-{time.monotonic_ns()}"))
                    self.note(r)
                    if r.status_code != 201:
                        continue
                    uid = r.json()["id"]
                    self.note(
                        c.patch(
                            f"/Users/{uid}",
                            json={
                                "schemas": [PATCH],
                                "Operations": [{"op": "replace", "path": "active", "value": False}],
                            },
                        )
                    )
                    if self.n % 3 == 0:
                        self.note(c.delete(f"/Users/{uid}"))
                except httpx.HTTPError:
                    self.errors += 1  # the proxy is being killed
                    time.sleep(0.05)


def test_log_down_proxy_killed_nothing_lost_no_duplicates(tmp_path: Path, log: Log) -> None:
    submitter, auditor = log.tokens("acme-outage")
    sp, upstream = start_scim2_server(tmp_path)
    outbox = tmp_path / "outage-outbox.sqlite"
    proxy, base = start_proxy(tmp_path, upstream, log.url, submitter, "acme-outage", outbox=outbox)
    port = httpx.URL(base).port
    writer = Writer(base)
    try:
        # Bulk through the proxy first: one event per operation, the unrun one included.
        bulk = {
            "schemas": [BULK],
            "failOnErrors": 1,
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "a", "data": user("bulk-a")},
                {
                    "method": "PATCH",
                    "path": "/Users/bulkId:a",
                    "data": {
                        "schemas": [PATCH],
                        "Operations": [{"op": "replace", "path": "active", "value": False}],
                    },
                },
                {"method": "DELETE", "path": "/Users/no-such-user"},
                {"method": "DELETE", "path": "/Users/bulkId:a"},
            ],
        }
        r = httpx.post(base + "/Bulk", json=bulk, headers={**AUTH, "X-Request-Id": "bulk-e2e"})
        assert r.status_code == 200 and r.headers["tlog-event-count"] == "4"
        writer.start()
        time.sleep(1.0)
        log.srv.stop()  # the log goes away; SCIM writes keep flowing, events queue
        time.sleep(1.5)
        proxy.send_signal(signal.SIGKILL)  # a crash with a backlog in the outbox
        proxy.wait()
        time.sleep(0.3)
        proxy, _ = start_proxy(
            tmp_path, upstream, log.url, submitter, "acme-outage", outbox=outbox, port=port
        )
        time.sleep(1.0)
        log.restart()
        time.sleep(1.0)
        writer.halt.set()
        writer.join(15)
        ok = [a for a in writer.answers if a[2]]
        assert len(ok) > 20 and all(a[0] < 500 for a in writer.answers)
        assert {a[1] for a in ok} == {"queued"}
        sent = [e for a in ok for e in a[2]]
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            events = audit_read(log, auditor)
            if {e["eid"] for e in events} >= set(sent):
                break
            time.sleep(0.3)
        eids = Counter(e["eid"] for e in events)
        assert set(sent) <= set(eids)  # nothing acknowledged was lost
        assert max(eids.values()) == 1  # and nothing was logged twice
        # Events without an answer can only come from requests in flight at the SIGKILL.
        assert len(eids) - len(sent) - 4 <= writer.errors
        bulk_events = sorted(
            (e for e in events if e["corr"]["req"] == "bulk-e2e"), key=lambda e: e["corr"]["seq"]
        )
        assert [(e["op"], e["outcome"]) for e in bulk_events] == [
            ("create", "success"),
            ("patch", "success"),
            ("delete", "skipped"),
            ("delete", "skipped"),
        ]
        assert bulk_events[1]["rid"] == bulk_events[0]["rid"] == bulk_events[3]["rid"]
        assert bulk_events[3]["err"]["code"] == "not_processed"
        assert all(e["corr"]["bulk_req"] == "bulk-e2e" for e in bulk_events)
    finally:
        writer.halt.set()
        stop(proxy)
        stop(sp)


def test_fail_closed_when_the_outbox_is_full(tmp_path: Path, log: Log) -> None:
    submitter, auditor = log.tokens("acme-full")
    sp, upstream = start_scim2_server(tmp_path)
    proxy, base = start_proxy(
        tmp_path,
        upstream,
        log.url,
        submitter,
        "acme-full",
        "--outbox-max-mb",
        "0.01",
        "--receipt-timeout",
        "5",
    )
    try:
        # While the log is up, the answer carries the receipt, which checks out against the log.
        r = httpx.post(base + "/Users", json=user("receipted"), headers=AUTH)
        assert r.status_code == 201 and r.headers["tlog-status"] == "logged"
        verifier = Ed25519Verifier.from_vkey(log.vkey)
        cp, _ = open_checkpoint(base64.b64decode(r.headers["tlog-checkpoint"]), [verifier])
        index, size = int(r.headers["tlog-index"]), int(r.headers["tlog-tree-size"])
        assert cp.size == size > index
        proof = httpx.get(
            log.url + "/v1/proof/inclusion", params={"index": index, "tree_size": size}
        ).json()
        verify_inclusion(
            index,
            size,
            base64.b64decode(r.headers["tlog-leaf-hash"]),
            [base64.b64decode(h) for h in proof["inclusion_proof"]],
            cp.root_hash,
        )
        log.srv.stop()  # nothing drains the outbox and direct delivery fails too
        codes = []
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as c:
            for i in range(60):
                r = c.post("/Users", json=user(f"full-{i}", title="t" * 400))
                assert r.headers.get("tlog-status") in ("queued", None)
                codes.append(r.status_code)
                if r.status_code == 503:
                    break
            assert codes[-1] == 503 and set(codes[:-1]) == {201} and len(codes) > 3
            assert r.headers["retry-after"] and "status 201" in r.json()["detail"]
            assert "etag" not in r.headers  # the SP's answer was not released
            last = len(codes) - 1

            def exists(name: str) -> bool:
                q = c.get("/Users", params={"filter": f'userName eq "{name}"'})
                return bool(q.json()["totalResults"])

            assert exists(f"full-{last}")  # applied by the SP (the documented limit)
            r = c.post("/Users", json=user("refused"))
            assert r.status_code == 503 and "not applied" in r.json()["detail"]
            assert not exists("refused")  # refused before reaching the SP
            log.restart()  # the backlog drains, the outbox has room again
            wait_for(
                lambda: c.post("/Users", json=user(f"again-{time.time()}")).status_code == 201,
                20,
                "a write accepted again",
                step=0.3,
            )
        wait_for(lambda: len(audit_read(log, auditor)) >= last + 2, 20, "two more events", step=0.3)
        events = audit_read(log, auditor)
        names = Counter(e["outcome"] for e in events)
        assert names["success"] >= last + 2
    finally:
        stop(proxy)
        stop(sp)
