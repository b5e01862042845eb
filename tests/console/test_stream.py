"""``tlog-client scim stream`` against real receivers on 127.0.0.1: a file, stdout, an HTTP
endpoint (generic webhook and Splunk HEC format), syslog over UDP and TCP."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.net.scim_audit import ScimAuditClient
from client.tools.cli import main
from client.tools.stream import Cursor

from .conftest import Live

SYSLOG_RE = re.compile(
    r"<(\d+)>1 (\S+) (\S+) tlog - ocsf-(\d+) \[tlog@32473 index=\"(\d+)\" "
    r"leaf_hash=\"([^\"]+)\" tree_size=\"(\d+)\"\] \ufeff(.*)$",
    re.S,
)


class Receiver:
    """An HTTP endpoint that records what it is sent; answers 503 ``fail`` times first."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.fail = 0
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if rec.fail:
                    rec.fail -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                rec.posts.append((self.path, dict(self.headers), body))
                out = b'{"text":"Success","code":0}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                return None

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self.t = threading.Thread(
            target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.t.start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def run(
    live: Live, tmp: Path, to: str, *extra: str, token: str = "aud", cursor: str = "cursor.json"
) -> int:
    tok = tmp / f"{token}.token"
    tok.write_text(live.tokens[token] + "\n")
    return main(
        [
            "scim",
            "stream",
            live.url,
            "--vkey",
            live.vkey,
            "--token-file",
            str(tok),
            "--cursor",
            str(tmp / cursor),
            "--to",
            to,
            "--settle",
            "0",
            "--page",
            "3",
            *extra,
        ]
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_file_sink_in_order_resumable_and_proof_referenced(live: Live, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert run(live, tmp_path, f"file:{out}") == 0
    recs = lines(out)
    refs = [r["unmapped"]["tlog"] for r in recs]
    idx = [t["index"] for t in refs]
    assert idx == sorted(idx) and idx[0] == 0  # in order, from the start
    assert len(set(idx)) == 8  # every event once (acts may give several records)
    by_act = {r["unmapped"]["tlog"].get("action"): r for r in recs}
    deact = by_act["user.deactivate"]
    assert (deact["class_uid"], deact["activity_id"], deact["type_uid"]) == (3001, 5, 300105)
    assert deact["user"]["uid"] == "u-alice" and deact["status_id"] == 1
    assert deact["metadata"]["tenant_uid"] == "acme" and deact["metadata"]["uid"]
    grp = by_act["group.member.add"]
    assert (grp["class_uid"], grp["activity_id"]) == (3006, 3) and grp["group"]["uid"] == "g-admins"
    failed = [r for r in recs if r["status_id"] == 2]
    assert len(failed) == 1 and failed[0]["class_uid"] == 3001
    assert failed[0]["status_detail"] == "userName already taken"
    # A SIEM record points back to its proof: the log proves that leaf under that root.
    t = deact["unmapped"]["tlog"]
    d = httpx.get(
        f"{live.url}/v1/proof/inclusion",
        params={"leaf_hash": t["leaf_hash"], "tree_size": t["tree_size"]},
    ).json()
    assert d["index"] == t["index"] and t["root_hash"] in d["checkpoint"]
    assert oct((tmp_path / "cursor.json").stat().st_mode & 0o777) == "0o600"
    assert oct(out.stat().st_mode & 0o777) == "0o600"

    # Resume: nothing is delivered twice; what is new is the log's record of the first run
    # (its search pages and its export), streamed like any other event.
    assert run(live, tmp_path, f"file:{out}") == 0
    again = lines(out)[len(recs) :]
    assert again and all(r["class_uid"] == 6003 for r in again)
    assert {r["unmapped"]["tlog"]["index"] for r in again}.isdisjoint(idx)
    acts = [r["unmapped"]["tlog"]["action"] for r in again]
    assert "tlog.access.export" in acts and "tlog.access.search" in acts


def test_every_run_is_recorded_as_an_access_event(live: Live, tmp_path: Path) -> None:
    def exports() -> list[Any]:
        with ScimAuditClient(live.url, live.tokens["aud"], live.vkey) as c:
            return [e for e in c.search_all(action="tlog.access.export")]

    before = len(exports())
    assert run(live, tmp_path, f"file:{tmp_path / 'o'}", cursor="c2") == 0
    after = exports()
    assert len(after) == before + 1
    ev = after[-1].event
    assert ev is not None and ev["x"]["what"] == "export"
    assert ev["x"]["events"] == len(
        {
            json.loads(x)["unmapped"]["tlog"]["index"]
            for x in (tmp_path / "o").read_text().splitlines()
        }
    )


def test_stdout_sink(live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(live, tmp_path, "stdout", "--rid", "u-bob") == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(recs) == 2 and all(r["user"]["uid"] == "u-bob" for r in recs)


def test_stream_by_reference(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ref``: the events naming a user without being about it (the group that took
    her in), as the auditor's search finds them; ``--ref-rt`` alone is a usage error."""
    assert run(live, tmp_path, "stdout", "--ref", "u-alice", cursor="c-ref") == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["group"]["uid"] for r in recs] == ["g-admins"]
    assert run(live, tmp_path, "stdout", "--ref-rt", "Group", cursor="c-ref2") == 1
    assert "--ref-rt needs --ref" in capsys.readouterr().err


def test_webhook_retries_then_delivers(live: Live, tmp_path: Path, receiver: Receiver) -> None:
    receiver.fail = 2
    assert run(live, tmp_path, f"webhook:{receiver.url}/ingest", "--rid", "u-alice") == 0
    assert receiver.fail == 0
    recs = [r for _, _, body in receiver.posts for r in json.loads(body)]
    assert [r["unmapped"]["tlog"]["action"] for r in recs] == [
        "user.create",
        "user.update",
        "user.deactivate",
    ]
    assert all(h["Content-Type"] == "application/json" for _, h, _ in receiver.posts)


def test_splunk_hec_format(
    live: Live, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TLOG_HEC_TOKEN", "hec-secret-token")
    url = f"{receiver.url}/services/collector/event"
    assert run(live, tmp_path, f"hec:{url}", "--rid", "g-admins") == 0
    [(path, headers, body)] = receiver.posts
    assert path == "/services/collector/event"
    assert headers["Authorization"] == "Splunk hec-secret-token"
    dec = json.JSONDecoder()
    text, objs = body.decode(), []
    while text:
        o, end = dec.raw_decode(text)
        objs.append(o)
        text = text[end:]
    assert len(objs) == 1 and objs[0]["sourcetype"] == "ocsf:3006"
    assert objs[0]["event"]["group"]["uid"] == "g-admins"
    assert objs[0]["time"] == objs[0]["event"]["time"] / 1000


def test_a_failing_sink_moves_no_cursor(live: Live, tmp_path: Path, receiver: Receiver) -> None:
    receiver.fail = 10**6
    assert (
        run(
            live,
            tmp_path,
            f"webhook:{receiver.url}",
            "--rid",
            "u-carol",
            "--retries",
            "1",
            cursor="c3",
        )
        == 1
    )
    assert not (tmp_path / "c3").exists()
    receiver.fail = 0
    assert run(live, tmp_path, f"webhook:{receiver.url}", "--rid", "u-carol", cursor="c3") == 0
    recs = [r for _, _, body in receiver.posts for r in json.loads(body)]
    assert [r["unmapped"]["tlog"]["action"] for r in recs] == ["user.create", "user.delete"]
    assert Cursor.load(tmp_path / "c3").delivered == 2


def test_syslog_udp(live: Live, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    port = sock.getsockname()[1]
    try:
        assert run(live, tmp_path, f"syslog+udp://127.0.0.1:{port}", "--rid", "u-bob") == 0
        msgs = [sock.recv(65536).decode() for _ in range(2)]
    finally:
        sock.close()
    for m in msgs:
        g = SYSLOG_RE.match(m)
        assert g, m
        rec = json.loads(g.group(8))
        assert int(g.group(5)) == rec["unmapped"]["tlog"]["index"]
        assert g.group(6) == rec["unmapped"]["tlog"]["leaf_hash"]
        assert int(g.group(1)) in (13 * 8 + 6, 13 * 8 + 4)  # log audit, info / warning
    assert {json.loads(SYSLOG_RE.match(m).group(8))["status_id"] for m in msgs} == {1, 2}


def test_syslog_tcp_octet_counting(live: Live, tmp_path: Path) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        conn, _ = srv.accept()
        conn.settimeout(10)
        buf = b""
        while chunk := conn.recv(65536):
            buf += chunk
        conn.close()
        got.append(buf)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        assert run(live, tmp_path, f"syslog+tcp://127.0.0.1:{port}", "--rid", "u-alice") == 0
        t.join(10)
    finally:
        srv.close()
    buf, frames = got[0], []
    while buf:
        n, _, rest = buf.partition(b" ")
        frames.append(rest[: int(n)].decode())
        buf = rest[int(n) :]
    assert len(frames) == 3 and all(SYSLOG_RE.match(f) for f in frames)


def test_verification_failure_delivers_nothing(live: Live, tmp_path: Path) -> None:
    def body(q: str, doc: dict[str, Any]) -> dict[str, Any]:
        for r in doc["results"]:
            if "event" in r:
                r["event"]["actor"]["id"] = "mallory"
        return doc

    live.tamper.rules["/v1/scim/events"] = body
    out = tmp_path / "x.jsonl"
    try:
        assert run(live, tmp_path, f"file:{out}", cursor="c4") == 2
    finally:
        live.tamper.rules.clear()
    assert not out.exists() or out.read_text() == ""
    assert not (tmp_path / "c4").exists()


def test_another_tenants_auditor_gets_nothing_of_this_tenant(live: Live, tmp_path: Path) -> None:
    out = tmp_path / "g.jsonl"
    assert run(live, tmp_path, f"file:{out}", token="aud2", cursor="c5") == 0
    text = out.read_text() if out.exists() else ""
    assert "u-alice" not in text and "acme" not in text


def test_erased_events_go_out_without_a_body(live: Live, tmp_path: Path) -> None:
    po1, _ = live.store.create("privacy-officer", name="po1")
    po2, _ = live.store.create("privacy-officer", name="po2")
    r = httpx.post(
        f"{live.url}/v1/scim/erasures",
        headers={"Authorization": f"Bearer {po1}"},
        json={"tenant": "acme", "rt": "User", "rid": "u-carol", "reason": "gdpr-art17"},
    )
    assert r.status_code == 201, r.text
    a = httpx.post(
        f"{live.url}/v1/scim/erasures/{r.json()['id']}/approve",
        headers={"Authorization": f"Bearer {po2}"},
    )
    assert a.status_code == 200, a.text
    out = tmp_path / "e.jsonl"
    assert run(live, tmp_path, f"file:{out}", cursor="c6") == 0
    recs = lines(out)
    erased = [r for r in recs if r["class_uid"] == 0]
    assert len(erased) == 2  # u-carol's create and delete
    assert all(r["unmapped"]["tlog"]["erased"] is True for r in erased)
    assert "u-carol" not in out.read_text()
    for r in erased:
        base64.b64decode(r["unmapped"]["tlog"]["leaf_hash"], validate=True)


def test_follow_keeps_polling_and_each_run_is_recorded(live: Live, tmp_path: Path) -> None:
    with ScimAuditClient(live.url, live.tokens["aud"], live.vkey) as c:
        before = len(list(c.search_all(action="tlog.access.export")))
    out = tmp_path / "f.jsonl"
    assert (
        run(
            live,
            tmp_path,
            f"file:{out}",
            "--follow",
            "--interval",
            "0",
            "--max-runs",
            "3",
            cursor="c7",
        )
        == 0
    )
    recs = lines(out)
    idx = [r["unmapped"]["tlog"]["index"] for r in recs]
    assert idx == sorted(idx)
    # Runs 2 and 3 each found the previous run's own access records (search pages, export).
    exports = [r for r in recs if r["unmapped"]["tlog"].get("action") == "tlog.access.export"]
    assert len(exports) == before + 2
    assert Cursor.load(tmp_path / "c7").last_index == idx[-1]
