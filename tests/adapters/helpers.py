"""Shared pieces of the adapter tests: a SCIM app, a fake log, servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from client.adapters.exchange import AuditConfig, Builder, Exchange
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox, OutboxError, OutboxRecord
from client.adapters.proxy import ProxySettings, build_proxy
from client.adapters.relay import Relay
from client.scim.event import event_from_json

from ..support import (
    UvicornThread,
    free_port,
    start_proxy,
    tlog_argv,
    wait_for,
    wait_http,
    wait_own,
)
from .scim_app import SCIM_TOKEN, scim_asgi_app

if TYPE_CHECKING:
    import pytest

# tests/support's and scim_app's, imported from here by the adapter tests
__all__ = ["SCIM_TOKEN", "scim_asgi_app", "start_proxy"]

ROOT = Path(__file__).resolve().parents[2]
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body, from its ``http.request`` messages."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def answer_lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's side of the lifespan protocol: complete each lifespan message, until
    shutdown."""
    while True:
        msg = await receive()
        await send({"type": msg["type"] + ".complete"})
        if msg["type"] == "lifespan.shutdown":
            return


def user(name: str, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER], "userName": name, **extra}


@dataclass
class FakeLog:
    """The log's batch submission contract as an ``httpx.MockTransport`` handler.

    Deduplicates by eid like the real log. ``fail`` holds canned answers served first
    (a status int, or "down" for a connection error); ``reject`` eids get a 400.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    by_eid: dict[str, int] = field(default_factory=dict)
    fail: collections.deque[int | str] = field(default_factory=collections.deque)
    reject: set[str] = field(default_factory=set)
    down: bool = False
    requests: list[int] = field(default_factory=list)  # batch sizes seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("log down", request=request)
        if self.fail:
            what = self.fail.popleft()
            if what == "down":
                raise httpx.ConnectError("log down", request=request)
            return httpx.Response(int(what), headers={"Retry-After": "0"}, json={"error": "canned"})
        assert request.url.path == "/v1/scim/events/batch"
        assert request.headers["authorization"].startswith("Bearer ")
        events = json.loads(request.content)["events"]
        self.requests.append(len(events))
        if len(events) > 1000:
            return httpx.Response(413, json={"error": "batch too large"})
        parsed = [event_from_json(json.dumps(e)) for e in events]
        if any(e["eid"] in self.reject for e in parsed):
            return httpx.Response(400, json={"error": "bad event"})
        results = []
        with self.lock:
            for ev in parsed:
                dup = ev["eid"] in self.by_eid
                if not dup:
                    self.by_eid[ev["eid"]] = len(self.events)
                    self.events.append(ev)
                idx = self.by_eid[ev["eid"]]
                lh = base64.b64encode(hashlib.sha256(ev["eid"].encode()).digest()).decode()
                results.append({"eid": ev["eid"], "index": idx, "leaf_hash": lh, "duplicate": dup})
            size = len(self.events)
        return httpx.Response(
            200, json={"tree_size": size, "checkpoint": f"fake\n{size}\n", "results": results}
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def start_scim2_server(tmp: Path, token: str = SCIM_TOKEN) -> tuple[subprocess.Popen[bytes], str]:
    """The ``scim2-server`` command (wsgiref, threads) on 127.0.0.1; returns its base URL.
    A free port is picked; if another process takes it first (the server then exits, or an
    answer there is not this server's: it has not said it serves), another port is tried."""
    for attempt in range(5):
        try:
            return _start_scim2_server(tmp, token, free_port())
        except RuntimeError as exc:
            if attempt == 4 or "exited" not in str(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _start_scim2_server(tmp: Path, token: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
    exe = Path(sys.executable).with_name("scim2-server")
    log_path = tmp / f"scim2-server-{port}.log"
    # The child gets its own copy of the descriptor: ours is closed at once.
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [
                str(exe),
                "--hostname",
                "127.0.0.1",
                "--port",
                str(port),
                "--bearer-token",
                token,
                "--reverse-proxy",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),  # the banner below, at once
        )
    base = f"http://127.0.0.1:{port}/v2"
    banner = f"Serving SCIM on {base}".encode()
    try:
        wait_own(base + "/ServiceProviderConfig", proc, log_path, banner)
    except BaseException:
        stop(proc)
        raise
    return proc, base


def start_mw_server(
    log_url: str,
    token_file: Path,
    tenant: str,
    outbox: Path,
    out: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> tuple[subprocess.Popen[bytes], str]:
    """A real SCIM app behind the audit middleware (``tests/adapters/mw_server.py``) on a
    free port, delivering to the log at ``log_url``, its output appended to ``out``; waited
    for (it imports scim2-server, the adapters and uvicorn: on a loaded 2-core machine that
    alone has taken more than 20 s). The process and its SCIM base URL."""
    port = free_port()
    # The child gets its own copy of the descriptor: ours is closed at once.
    with open(out, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.adapters.mw_server",
                "--port",
                str(port),
                "--log",
                log_url,
                "--token-file",
                str(token_file),
                "--tenant",
                tenant,
                "--outbox",
                str(outbox),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v2"
    wait_http(base + "/ServiceProviderConfig", proc, timeout=timeout)
    return proc, base


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Write:
    method: str
    path: str
    digest: bytes
    status: int
    req_id: str | None
    eids: list[str]
    tlog_status: str | None


def check_writes_logged(
    writes: list[Write],
    events: list[dict[str, Any]],
    *,
    routing: Callable[[Write], bool],
    each: Callable[[dict[str, Any]], None] = lambda ev: None,
    none_ok: bool = False,
) -> collections.Counter[str]:
    """Each provisioning write is exactly one event carrying its request's digest, method
    and status (``each``: more checks of every such event); a ``routing`` write (one to a
    discovery endpoint: not a provisioning event) is none. No event twice; no events at all
    is a failure unless ``none_ok``. Returns the count of events by outcome (and of routing
    writes, as "routing")."""
    by_eid = collections.Counter(e["eid"] for e in events)
    if none_ok:
        assert not by_eid or max(by_eid.values()) == 1  # no duplicates
    else:
        assert max(by_eid.values()) == 1  # no duplicates
    by_req = {e["corr"]["req"]: e for e in events}
    kinds: collections.Counter[str] = collections.Counter()
    for w in writes:
        if routing(w):
            assert w.eids == [] and w.req_id not in by_req, (w.method, w.path)
            kinds["routing"] += 1
            continue
        assert len(w.eids) == 1, (w.method, w.path, w.status)
        ev = by_req[w.req_id]
        assert ev["eid"] == w.eids[0]
        assert ev["req"]["dig"] == w.digest and ev["req"]["m"] == w.method
        assert ev["res"]["st"] == w.status
        each(ev)
        kinds[ev["outcome"]] += 1
    assert len(events) == len(writes) - kinds["routing"]
    return kinds


def relay_for(outbox: Outbox, log: FakeLog, **kw: object) -> Relay:
    """A relay from ``outbox`` to the fake ``log`` with the tests' short back-off and idle
    times (``kw``: more of its settings, or others than these, e.g. a ``transport`` that
    puts a hostile front proxy before the log)."""
    settings: dict[str, Any] = {
        "transport": log.transport(),
        "backoff_min": 0.01,
        "backoff_max": 0.05,
        "idle": 0.05,
        **kw,
    }
    return Relay(outbox, "http://log.test", "tok", **settings)


def where_records_are_built(monkeypatch: pytest.MonkeyPatch, mw: AuditMiddleware) -> list[bool]:
    """Spy on ``mw`` building an exchange's records: the list it returns gets, per build,
    True when it ran on the event loop and False when in a worker thread."""
    on_loop: list[bool] = []
    build = mw._build_records

    def spy(*args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return build(*args)

    monkeypatch.setattr(mw, "_build_records", spy)
    return on_loop


def run_tester(base_url: str, token: str = SCIM_TOKEN) -> tuple[list[tuple[str, str]], list[Write]]:
    """Run the scim2-tester suite; return (title, status) per check and the writes it sent."""
    from httpx2 import Client
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_tester import check_server

    writes: list[Write] = []

    def on_response(response: Any) -> None:
        req = response.request
        if req.method in ("POST", "PUT", "PATCH", "DELETE") and not req.url.path.endswith(
            "/.search"
        ):
            eids = response.headers.get("tlog-event-id", "")
            writes.append(
                Write(
                    req.method,
                    req.url.path,
                    hashlib.sha256(req.content).digest(),
                    response.status_code,
                    response.headers.get("x-request-id"),
                    [e.strip() for e in eids.split(",") if e.strip()],
                    response.headers.get("tlog-status"),
                )
            )

    with Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        event_hooks={"response": [on_response]},
    ) as http:
        client = SyncSCIMClient(http)
        client.discover()
        results = check_server(client)
    return [(r.title, r.status.name) for r in results], writes


def status_counts(results: list[tuple[str, str]]) -> dict[str, int]:
    return dict(collections.Counter(s for _, s in results))


def down_proxy_argv(
    tmp_path: Path,
    outbox: Path,
    tenant: str = "t1",
    *,
    secret: str = "tlog_" + "A" * 43,
    mode: int = 0o600,
) -> list[str]:
    """``tlog scim-proxy`` whose log and SP are down (nothing listens at either at start),
    its token ``secret`` in ``tmp_path/token`` with ``mode``, its outbox at ``outbox``."""
    token = tmp_path / "token"
    token.write_text(secret + "\n")
    token.chmod(mode)
    dead = f"http://127.0.0.1:{free_port()}"
    return tlog_argv(
        "scim-proxy",
        "--upstream",
        dead + "/v2",
        "--log",
        dead,
        "--token-file",
        str(token),
        "--tenant",
        tenant,
        "--sp-id",
        "sp1",
        "--log-key-tofu",
        "--outbox",
        str(outbox),
        "--listen",
        f"127.0.0.1:{free_port()}",
    )


def undeliverable_proxy(outbox: Path) -> AuditMiddleware:
    """A proxy (in process) whose log is down (nothing can be delivered) and whose SP is
    unreachable, its outbox at ``outbox``."""
    return build_proxy(
        ProxySettings(
            upstream="http://127.0.0.1:9/v2",
            log_url="http://log.test",
            token="tok",
            tenant="t1",
            sp_id="raw",
            outbox=outbox,
        ),
        log_transport=FakeLog(down=True).transport(),
    )


def tmpfs(tmp_path: Path, name: str, options: str = "", *, lazy: bool = False) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at ``tmp_path/name`` with ``options`` (e.g. ``ro``) while the
    generator is suspended (``yield from`` it in a fixture); skips without root or mount.
    ``lazy``: unmounted with ``umount -l`` (files may still be open)."""
    import pytest

    mnt = tmp_path / name
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a tmpfs mount needs root")
    opts = "size=1m" + (f",{options}" if options else "")
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, timeout=30
    )
    if p.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(
            ["umount", *(["-l"] if lazy else []), str(mnt)], capture_output=True, timeout=30
        )


def outbox_events(outbox: Path) -> dict[str, list[dict[str, Any]]]:
    """The events of an outbox (its SQLite file), by request id."""
    conn = sqlite3.connect(outbox)
    try:
        rows = conn.execute("SELECT req, body FROM events").fetchall()
    finally:
        conn.close()
    out: dict[str, list[dict[str, Any]]] = {}
    for req, body in rows:
        out.setdefault(req, []).append(json.loads(body))
    return out


def fill_disk(path: Path) -> None:
    """Write ``path`` until its file system is full (the write that fails ends it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


class StandInSP(http.server.BaseHTTPRequestHandler):
    """A SCIM service provider stand-in: answers every write at once, counts what it saw."""

    seen: list[tuple[str, str]]

    def log_message(self, *a: Any) -> None:
        pass

    def _answer(self, status: int, doc: Any | None) -> None:
        body = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/scim+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)

    def do_GET(self) -> None:
        self._answer(
            200, {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"]}
        )

    def do_POST(self) -> None:
        self._read()
        self.seen.append(("POST", self.path))
        self._answer(201, {"id": "u-new", "userName": "new", "schemas": []})

    def do_PATCH(self) -> None:
        self._read()
        self.seen.append(("PATCH", self.path))
        self._answer(200, {"id": self.path.rsplit("/", 1)[-1], "schemas": []})

    def do_DELETE(self) -> None:
        self._read()
        self.seen.append(("DELETE", self.path))
        self._answer(204, None)


@pytest.fixture(name="sp")
def standin_sp() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    with serve_http(type("SP", (StandInSP,), {"seen": seen})) as url:
        yield f"{url}/v2", seen


@contextlib.contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a loopback port by a thread (a thread a request), for the
    ``with`` block: its base URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def put_until_full(
    ob: Outbox,
    records: Iterable[OutboxRecord],
    acked: Callable[[OutboxRecord], None],
    refusals: int = 3,
) -> int:
    """Put ``records`` one at a time until the outbox refused ``refusals`` of them as full
    (each refusal must say so); ``acked`` is called with each one acknowledged. Returns how
    many were refused."""
    refused = 0
    for r in records:
        try:
            ob.put([r], timeout=10)
        except OutboxError as exc:
            assert "full" in str(exc), exc
            refused += 1
            if refused >= refusals:
                break
        else:
            acked(r)
    return refused


def run_traced(
    out: Path, calls: str, script: str, *args: str, options: tuple[str, ...] = ()
) -> str:
    """The Python ``script`` (with ``args``) run under ``strace -f`` tracing the system
    calls ``calls`` (``-e trace=``; ``options`` added) into ``out``, the project on its
    path; skips where strace is missing or ptrace is refused, asserts it exited 0, and
    returns its standard output."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    run = subprocess.run(
        [strace, "-f", "-qq", *options, "-o", str(out), "-e", f"trace={calls}"]
        + [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0 and "ptrace" in run.stderr.lower():
        pytest.skip(f"strace cannot trace here (ptrace refused): {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr
    return run.stdout


def strace_syncs(tmp_path: Path, script: str, *args: str) -> dict[str, int]:
    """The ``fsync``/``fdatasync`` calls of ``python -c script args`` under ``strace``, by
    stretch: the script writes ``=====<name>\\n`` to stderr where a stretch begins (the
    first is ``start``). Skips where strace is missing or may not trace."""
    out = tmp_path / "trace.txt"
    run_traced(out, "fsync,fdatasync,write", script, *args)
    counts: dict[str, int] = {}
    stretch = "start"
    for line in out.read_text().splitlines():
        if "=====" in line and "write(2" in line:
            stretch = line.split("=====", 1)[1].split("\\n", 1)[0]
            continue
        if "fsync(" in line or "fdatasync(" in line:
            counts[stretch] = counts.get(stretch, 0) + 1
    return counts


def said_then_killed(script: str, *args: str) -> str:
    """The first line ``python -c script args`` prints, then the process killed (SIGKILL:
    a crash, nothing flushed or closed after that line)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        return child.stdout.readline()
    finally:
        child.kill()
        child.wait(15)


BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
DEACTIVATE = {
    "schemas": [PATCH],
    "Operations": [{"op": "replace", "path": "active", "value": False}],
}


def bulk_events(
    ops: list[dict[str, Any]], results: list[Any], req: str = "req-1", **request: Any
) -> list[dict[str, Any]]:
    """The events the adapter's builder records of a bulk request of ``ops`` (``request``:
    more of its members, e.g. ``failOnErrors``) that the SP answered 200 with a
    BulkResponse of ``results``, in process (the component under test, as red team 7 and
    19 drove it)."""
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    scope = {"headers": [(b"content-type", b"application/scim+json")]}
    body = json.dumps({"schemas": [BULK], "Operations": ops, **request}).encode()
    x = Exchange(scope, "POST", "/Bulk", req, None, body, 0)
    x.status = 200
    x.headers = [(b"content-type", b"application/scim+json")]
    x.resp_body = json.dumps({"schemas": [BULK_RESPONSE], "Operations": results}).encode()
    x.t1_ns = 1_800_000_000_000_000_000
    return Builder(cfg, x).bulk().events


async def answers_204(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An SP answering 204 to every request, returning at once from any other scope (no
    lifespan)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def serve_one_write(mw: Any) -> int:
    """Serve ``mw`` (uvicorn, its lifespan on), send it one PATCH deactivating User ``A``
    and stop the server: the answer's status (the lifespan tests of red team 20 and 21)."""
    srv = UvicornThread(mw)
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            return c.patch("/v2/Users/A", json=DEACTIVATE).status_code
    finally:
        assert srv.serving.stop(15), "the server did not stop"


def effect_acts(effect: dict[str, Any] | None) -> list[str]:
    """The actions an event's effect names (the log's ``classify``), in order."""
    assert effect is not None
    return [a["a"] for a in effect["acts"]]


def check_created(ev: dict[str, Any], want: str, why: str | None) -> None:
    """``ev`` is a create's success recorded with the created id ``want`` (``"-"``: not
    known) and, where ``why`` is given, an ``x.answer`` saying it and no ``x.result`` (the
    answer not taken as its values); else no ``x.answer`` (faith21, faith23)."""
    assert ev["op"] == "create" and ev["outcome"] == "success", ev
    assert ev["rid"] == want, ev
    answer = (ev.get("x") or {}).get("answer")
    if why is None:
        assert answer is None, ev
    else:
        assert answer is not None and why in answer, ev
        assert "result" not in (ev.get("x") or {}), ev


def send_raw(port: int, request: bytes) -> int:
    """Send ``request`` (a whole HTTP/1.1 request, ``Connection: close``) to 127.0.0.1:``port``
    as is (an HTTP client would remove a path's dot segments itself) and return the answer's
    status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def serve_proxy(upstream: str, log: FakeLog, outbox: Path, sp_id: str) -> UvicornThread:
    """``tlog scim-proxy``'s app in front of ``upstream`` on a real uvicorn, its events
    delivered to ``log`` (red team 22's and 24's routing tests)."""
    settings = ProxySettings(
        upstream=upstream,
        log_url="http://log.test",
        token="tok",
        tenant="t1",
        sp_id=sp_id,
        outbox=outbox,
    )
    return UvicornThread(build_proxy(settings, log_transport=log.transport()))


def serve_middleware(app: Any, outbox: Path, log: FakeLog) -> UvicornThread:
    """``app`` behind the audit middleware (base path ``/v2``, tenant ``t1``) on a real
    uvicorn, which hands it ``raw_path``; its events delivered to ``log`` (at the latest
    when the server stops)."""
    ob = Outbox(outbox)
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=lambda _: None)
    return UvicornThread(AuditMiddleware(app, config, ob, relay_for(ob, log), own=True))


def delete_raw(port: int, path: str) -> int:
    """``DELETE path`` sent as is (:func:`send_raw`), its request id the path."""
    head = f"DELETE {path} HTTP/1.1\r\nHost: sp\r\nX-Request-Id: {path}\r\n"
    return send_raw(port, (head + "Connection: close\r\n\r\n").encode())


def routed_deletes(
    srv: UvicornThread, log: FakeLog, paths: Iterable[str], events: int | None = None
) -> dict[str, Any]:
    """The (type, id) each ``DELETE`` of ``paths`` was recorded on, by path: each sent as is
    (:func:`delete_raw`, all answered 204) to ``srv``, a served middleware (its events
    reach ``log`` at the latest when it stops) or proxy (``events``: the events to wait for
    before stopping it, as its relay delivers them as it goes); ``srv`` stopped after."""
    try:
        for path in paths:
            assert delete_raw(srv.port, path) == 204, path
        if events is not None:
            wait_for(lambda: len(log.events) == events, 10, "every event delivered")
    finally:
        assert srv.serving.stop(15), "the server did not stop"
    return {ev["corr"]["req"]: (ev["rt"], ev["rid"]) for ev in log.events}


def answer_rewritten(
    app: Any,
    applies: Callable[[dict[str, Any]], bool],
    rewrite: Callable[[dict[str, Any], bytes], Any],
) -> Any:
    """``app`` (an ASGI SP) whose answer to each HTTP request with ``applies(scope)`` is
    replaced by ``await rewrite(scope, body)`` (its status and headers kept, its
    Content-Length set anew): an SP that answers otherwise than it stored."""

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not applies(scope):
            await app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                start.update(msg)
            else:
                chunks.append(msg.get("body", b""))

        await app(scope, receive, keep)
        raw: bytes = await rewrite(scope, b"".join(chunks))
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    return front
