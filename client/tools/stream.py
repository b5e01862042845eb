"""``tlog-client scim stream``: a tenant's verified events, as OCSF, to a SIEM.

::

    tlog-client scim stream URL --vkey VKEY --token-file FILE --cursor FILE --to SINK
        [--hec-token-file FILE] [--follow [--interval S] [--max-runs N]] [--settle S] [--page N]
        [--rid ID] [--xid ID] [--actor ID] [--action A] [--outcome O] [--req ID]

Sinks (``--to``): ``stdout`` (or ``-``), ``file:PATH`` (JSON lines, appended and fsynced),
``webhook:URL`` (a JSON array of records per POST), ``hec:URL`` (Splunk HTTP Event
Collector: ``Authorization: Splunk <token>``, one ``{"time", "host", "source",
"sourcetype", "event"}`` object per record, concatenated), ``syslog+udp://HOST:PORT`` and
``syslog+tcp://HOST:PORT`` (RFC 5424 messages; over TCP framed by octet counting, RFC 6587
§3.4.1).

Delivery is **at least once, in order**. Every event is verified first
(:class:`client.net.scim_audit.ScimAuditClient`: log signature, consistency, inclusion, tenant,
commitment); the records of a page go to the sink, and only when the sink has taken them
(2xx, fsync, sent) does the cursor file move past them (written atomically, mode 0600). A
crash between the two re-sends that page next time, never skips it. The cursor is the
public log time ``ts`` of the last delivered event plus the leaf hashes delivered at that
time, so it survives server restarts and needs nothing but the search API. Events younger
than ``--settle`` seconds are left for the next run, so one that was accepted but not yet
sequenced when this run passed its time cannot be skipped.

Bodies: only what the log decrypted for this auditor token, and only after the commitment
verified; an erased event goes out as a Base Event with its proof references and no body.
Every page read is logged by the log as an access event, and every run ends by recording
a ``tlog.access.export`` event (``POST /v1/scim/exports``) with the sink kind and counts.

Exit codes: 0 done; 1 usage, network, HTTP or sink error (the cursor keeps what was
delivered); 2 verification failed (nothing of the failing page was delivered).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Verifier, FormatError, b64encode
from client.net.core import HTTPFailure, answer_deadline, http_client
from client.net.scim_audit import AuditedEvent, ScimAuditClient, ScimAuditError
from client.runtime.durable import atomic_write
from client.runtime.logs import one_line
from client.tools.filters import add_filter_args, filters_of
from client.tools.ocsf import to_ocsf
from client.tools.scim_cli import read_secret

__all__ = ["Cursor", "SinkError", "StreamResult", "make_sink", "register", "stream"]

EXIT_OK, EXIT_ERROR, EXIT_FAILED = 0, 1, 2
SD_ID = "tlog@32473"  # RFC 5612 documentation enterprise number
MAX_UDP = 65_000
MAX_ANSWER = 64 * 1024  # bytes of an HTTP sink's answer read (the rest is never read)


class SinkError(Exception):
    """The sink did not take the records (nothing was acknowledged)."""


# --- cursor ---------------------------------------------------------------------------------


@dataclass
class Cursor:
    """Where the stream stands: the log time of the last delivered event and the leaf hashes
    delivered at exactly that time (events of one millisecond are ordered by leaf hash)."""

    since: int = 0
    seen: set[str] = field(default_factory=set)
    delivered: int = 0
    last_index: int | None = None

    @classmethod
    def load(cls, path: Path) -> Cursor:
        try:
            doc = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise SinkError(f"cursor file {path}: {exc}") from None
        except RecursionError:
            raise SinkError(f"cursor file {path}: nested too deeply") from None
        try:
            seen, last = doc["seen"], doc["last_index"]
            c = cls(int(doc["since"]), set(seen), int(doc["delivered"]), last)
        except (KeyError, TypeError, ValueError):
            raise SinkError(f"cursor file {path} is not a stream cursor") from None
        if (
            c.since < 0
            or c.delivered < 0
            or type(seen) is not list
            or not all(isinstance(s, str) for s in c.seen)
            or not (last is None or type(last) is int)
        ):
            raise SinkError(f"cursor file {path} is not a stream cursor")
        return c

    def save(self, path: Path) -> None:
        doc = {
            "v": 1,
            "since": self.since,
            "seen": sorted(self.seen),
            "delivered": self.delivered,
            "last_index": self.last_index,
        }
        atomic_write(path, json.dumps(doc).encode("utf-8"))

    def is_new(self, ae: AuditedEvent) -> bool:
        ts = ae.leaf.ts
        return ts > self.since or (ts == self.since and b64encode(ae.leaf_hash) not in self.seen)

    def advance(self, ae: AuditedEvent) -> None:
        ts = ae.leaf.ts
        if ts > self.since:
            self.since, self.seen = ts, set()
        self.seen.add(b64encode(ae.leaf_hash))
        self.delivered += 1
        self.last_index = ae.index


# --- sinks ----------------------------------------------------------------------------------


class Sink:
    kind = "sink"

    def send(self, records: Sequence[dict[str, Any]]) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        return None


def _json(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class StreamSink(Sink):
    kind = "stdout"

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def send(self, records: Sequence[dict[str, Any]]) -> None:
        try:
            for r in records:
                self.out.write(_json(r) + "\n")
            self.out.flush()
        except OSError as exc:
            raise SinkError(f"cannot write: {exc}") from None


class FileSink(Sink):
    kind = "file"

    def __init__(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SinkError(f"cannot open {path}: {exc.strerror}") from None
        self.f = os.fdopen(fd, "a", encoding="utf-8")

    def send(self, records: Sequence[dict[str, Any]]) -> None:
        try:
            for r in records:
                self.f.write(_json(r) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as exc:
            raise SinkError(f"cannot write: {exc}") from None

    def close(self) -> None:
        self.f.close()


class _SlowAnswer(Exception):
    """The receiver did not finish its answer within the sink's timeout."""


class HttpSink(Sink):
    """POST each page's records; a non-2xx answer or a network error is retried a few times
    with backoff, then the run fails without moving the cursor.

    The receiver is not trusted with the streamer's memory or time: at most
    :data:`MAX_ANSWER` bytes of an answer are read, and the whole answer (status, headers
    and what is read of the body) must arrive within ``timeout`` seconds of sending, else
    the delivery failed (retried; the records may have been taken: at least once)."""

    def __init__(
        self,
        url: str,
        *,
        hec_token: str | None,
        origin: str,
        http: httpx.Client | None = None,
        retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.hec = hec_token is not None
        self.kind = "splunk-hec" if self.hec else "webhook"
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": "tlog-client",
            "Accept-Encoding": "identity",  # the answer is read raw (_post)
        }
        if hec_token is not None:
            self.headers["Authorization"] = f"Splunk {hec_token}"
        self.origin = origin
        self._own = http is None
        self.timeout = timeout
        self.http = http or http_client(timeout=timeout)
        self.retries = retries
        self.sleep = sleep

    def _body(self, records: Sequence[dict[str, Any]]) -> bytes:
        if not self.hec:
            return ("[" + ",".join(_json(r) for r in records) + "]").encode()
        parts = []
        for r in records:
            parts.append(
                _json(
                    {
                        "time": r["time"] / 1000,
                        "host": self.origin,
                        "source": "tlog",
                        "sourcetype": f"ocsf:{r['class_uid']}",
                        "event": r,
                    }
                )
            )
        return "".join(parts).encode()

    def send(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        body = self._body(records)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(min(8.0, 0.25 * 2**attempt))
            try:
                status, answer = self._post(body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            except _SlowAnswer:
                last = f"no complete answer within {self.timeout:g} s"
                continue
            if 200 <= status < 300:
                if self.hec:
                    try:
                        doc = json.loads(answer)
                    except (ValueError, RecursionError):  # RecursionError: nested too deeply
                        doc = None  # not JSON (or cut at MAX_ANSWER): taken, by its status
                    if isinstance(doc, dict) and doc.get("code", 0) != 0:
                        text = answer[:200].decode("utf-8", "replace")
                        raise SinkError(f"HEC refused the events: {text}")
                return
            last = f"HTTP {status}"
            if status < 500 and status != 429:
                break  # a 4xx will not get better by retrying
        raise SinkError(f"{self.kind} {_where(self.url)}: {last}")

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """POST ``body``: the status and at most :data:`MAX_ANSWER` bytes of the answer,
        all within ``timeout`` seconds (else :class:`_SlowAnswer`)."""
        deadline = time.monotonic() + self.timeout
        try:
            with (
                answer_deadline(self.timeout),  # the head too, on http_client()'s sockets
                self.http.stream("POST", self.url, content=body, headers=self.headers) as r,
            ):
                got = bytearray()
                for chunk in r.iter_raw():
                    if time.monotonic() > deadline:
                        raise _SlowAnswer
                    got += chunk
                    if len(got) >= MAX_ANSWER:
                        break
                if time.monotonic() > deadline:
                    raise _SlowAnswer
                return r.status_code, bytes(got[:MAX_ANSWER])
        except httpx.ReadTimeout:
            # The answer's deadline (or, as long, the per-read timeout) ran out mid-answer.
            raise _SlowAnswer from None

    def close(self) -> None:
        if self._own:
            self.http.close()


def _where(url: str) -> str:
    """An HTTP sink's URL for messages: scheme, host and port only. Many SIEM inputs carry
    their credential in the URL (a token in the path or the query string, a password)."""
    u = urlsplit(url)
    host = u.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{u.port}" if u.port else ""
    except ValueError:
        port = ""
    rest = "/..." if u.path not in ("", "/") or u.query else ""
    return f"{u.scheme}://{host}{port}{rest}"


# The end of year 9999 (ms): an RFC 5424 TIMESTAMP has a four-digit year, and an OCSF
# record's "time" is the event's own claim (any ms up to 2^53 - 1 the submitter sent).
_SYSLOG_TIME_END = 253_402_300_800_000


def syslog_message(rec: dict[str, Any], hostname: str) -> bytes:
    """One RFC 5424 message: facility 13 (log audit), severity informational/warning."""
    severity = 6 if rec.get("status_id") in (0, 1) else 4
    pri = 13 * 8 + severity
    ts = "-"  # RFC 5424 NILVALUE: a time with no four-digit year (an event's claimed ts)
    if 0 <= rec["time"] < _SYSLOG_TIME_END:
        ts = datetime.fromtimestamp(rec["time"] / 1000, UTC).isoformat(timespec="milliseconds")
        ts = ts.replace("+00:00", "Z")
    ref = rec.get("unmapped", {}).get("tlog", {})

    def sd(v: object) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

    params = " ".join(
        f'{k}="{sd(ref[k])}"' for k in ("index", "leaf_hash", "tree_size") if k in ref
    )
    msgid = f"ocsf-{rec['class_uid']}"
    head = f"<{pri}>1 {ts} {hostname} tlog - {msgid} [{SD_ID} {params}] "
    return head.encode() + b"\xef\xbb\xbf" + _json(rec).encode()


class SyslogSink(Sink):
    def __init__(self, transport: str, host: str, port: int, timeout: float = 10.0) -> None:
        self.kind = f"syslog-{transport}"
        self.transport = transport
        self.hostname = (socket.gethostname() or "-").split(".")[0][:255] or "-"
        try:
            if transport == "udp":
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.sock.connect((host, port))
            else:
                self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise SinkError(f"syslog {host}:{port}: {exc}") from None

    def send(self, records: Sequence[dict[str, Any]]) -> None:
        try:
            for r in records:
                msg = syslog_message(r, self.hostname)
                if self.transport == "udp":
                    if len(msg) > MAX_UDP:
                        raise SinkError("record too large for one UDP datagram; use syslog+tcp")
                    self.sock.send(msg)
                else:
                    self.sock.sendall(str(len(msg)).encode() + b" " + msg)
        except OSError as exc:
            raise SinkError(f"syslog: {exc}") from None

    def close(self) -> None:
        self.sock.close()


def make_sink(
    spec: str,
    *,
    origin: str,
    hec_token: str | None = None,
    http: httpx.Client | None = None,
    retries: int = 4,
    timeout: float = 30.0,
) -> Sink:
    """A sink from its ``--to`` spec (module docstring)."""
    if spec in ("-", "stdout"):
        return StreamSink(sys.stdout)
    if spec.startswith("file:"):
        return FileSink(Path(spec[5:]))
    if spec.startswith(("webhook:", "hec:")):
        kind, _, url = spec.partition(":")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{kind}: needs an http(s) URL")
        if kind == "hec" and not hec_token:
            raise ValueError("hec: needs --hec-token-file (or TLOG_HEC_TOKEN)")
        return HttpSink(
            url,
            hec_token=hec_token if kind == "hec" else None,
            origin=origin,
            http=http,
            retries=retries,
            timeout=timeout,
        )
    if spec.startswith(("syslog+udp://", "syslog+tcp://")):
        u = urlsplit(spec)
        if not u.hostname or not u.port:
            raise ValueError("syslog sink needs syslog+udp://HOST:PORT or syslog+tcp://HOST:PORT")
        return SyslogSink(u.scheme.split("+")[1], u.hostname, u.port)
    raise ValueError(
        f"unknown sink {spec!r} (stdout, file:, webhook:, hec:, syslog+udp://, syslog+tcp://)"
    )


# --- the stream -----------------------------------------------------------------------------


@dataclass
class StreamResult:
    events: int = 0
    records: int = 0
    bodies: int = 0
    erased: int = 0
    access: dict[str, Any] | None = None


def _pages(
    client: ScimAuditClient, cur: Cursor, filters: dict[str, Any], page: int
) -> Iterable[list[AuditedEvent]]:
    for p in client.search_pages(since=cur.since, limit=page, **filters):
        yield p.results


def stream(
    client: ScimAuditClient,
    sink: Sink,
    cursor_path: Path,
    *,
    origin: str,
    filters: dict[str, Any] | None = None,
    page: int = 100,
    settle_ms: int = 2000,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    record: Callable[[StreamResult], dict[str, Any]] | None = None,
) -> StreamResult:
    """One run: deliver every new event, page by page, then record the run."""
    cur = Cursor.load(cursor_path)
    tenant = client.tenant()
    res = StreamResult()
    cutoff = now_ms() - settle_ms
    for results in _pages(client, cur, dict(filters or {}), page):
        batch = [ae for ae in results if cur.is_new(ae)]
        young = [i for i, ae in enumerate(batch) if ae.leaf.ts > cutoff]
        if young:
            batch = batch[: young[0]]
        records = [r for ae in batch for r in to_ocsf(ae, origin=origin, tenant=tenant)]
        sink.send(records)
        for ae in batch:
            cur.advance(ae)
            res.events += 1
            if ae.erased:
                res.erased += 1
            else:
                res.bodies += 1
        res.records += len(records)
        if batch:
            cur.save(cursor_path)
        if young:
            break
    if record is not None:
        res.access = record(res)
    return res


def _record_export(
    url: str, token: str, kind: str, http: httpx.Client
) -> Callable[[StreamResult], dict[str, Any]]:
    def rec(res: StreamResult) -> dict[str, Any]:
        body = {"sink": kind, "events": res.events, "bodies": res.bodies, "erased": res.erased}
        r = http.post(
            f"{url.rstrip('/')}/v1/scim/exports",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        if r.status_code != 201:
            raise ScimAuditError(r.status_code, r.text[:200])
        try:
            doc = r.json()
        except (ValueError, RecursionError):
            doc = None
        access = doc.get("access") if isinstance(doc, dict) else None
        if not isinstance(access, dict):
            raise VerificationError("malformed answer to the export record")
        return access

    return rec


# --- command line ---------------------------------------------------------------------------


def cmd_stream(args: argparse.Namespace, http: httpx.Client | None = None) -> int:
    try:
        token = read_secret(args.token_file, "TLOG_TOKEN", "token")
        if token is None:
            raise ValueError("an auditor token is required: --token-file or TLOG_TOKEN")
        hec = read_secret(args.hec_token_file, "TLOG_HEC_TOKEN", "HEC token")
        verifier = Ed25519Verifier.from_vkey(args.vkey)
        filters = filters_of(args)
        sink = make_sink(
            args.to,
            origin=verifier.name,
            hec_token=hec,
            retries=args.retries,
            timeout=args.timeout,
        )
    except (ValueError, FormatError, SinkError) as exc:
        print(f"tlog-client: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    own = http is None
    http = http or http_client(timeout=args.timeout)
    try:
        with ScimAuditClient(args.url, token, args.vkey, http=http) as client:
            runs = 0
            while True:
                res = stream(
                    client,
                    sink,
                    Path(args.cursor),
                    origin=verifier.name,
                    filters=filters,
                    page=args.page,
                    settle_ms=int(args.settle * 1000),
                    record=_record_export(args.url, token, sink.kind, http),
                )
                access = res.access or {}
                print(
                    f"streamed {res.events} event(s) as {res.records} OCSF record(s) to "
                    f"{sink.kind}; recorded as access event {access.get('index')}",
                    file=sys.stderr,
                )
                runs += 1
                if not args.follow or (args.max_runs and runs >= args.max_runs):
                    return EXIT_OK
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except (VerificationError, FormatError) as exc:
        print(f"tlog-client: LOG FAILED VERIFICATION: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except (SinkError, HTTPFailure, httpx.HTTPError, OSError) as exc:
        print(f"tlog-client: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        sink.close()
        if own:
            http.close()


def register(scim: Any) -> None:
    """Add ``stream`` to the ``tlog-client scim`` subcommands."""
    s = scim.add_parser(
        "stream",
        help="deliver a tenant's verified events as OCSF to a file, stdout, HTTP or syslog",
        description="Verify and deliver a tenant's SCIM events as OCSF JSON, at least once and "
        "in order, resuming from a cursor file.",
    )
    s.add_argument("url", help="the log's base URL")
    s.add_argument("--vkey", required=True, help="the log's verifier key")
    s.add_argument("--token-file", help="file holding the auditor token (else TLOG_TOKEN)")
    s.add_argument("--cursor", required=True, help="cursor file (created 0600; resumes runs)")
    s.add_argument(
        "--to",
        required=True,
        help="stdout | file:PATH | webhook:URL | hec:URL | "
        "syslog+udp://HOST:PORT | syslog+tcp://HOST:PORT",
    )
    s.add_argument("--hec-token-file", help="Splunk HEC token file (else TLOG_HEC_TOKEN)")
    s.add_argument("--follow", action="store_true", help="keep polling for new events")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    s.add_argument(
        "--max-runs",
        type=int,
        default=0,
        help="with --follow: stop after this many runs (default: never)",
    )
    s.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="leave events younger than this many seconds for the next run",
    )
    s.add_argument("--page", type=int, default=100, help="events per search page (1..100)")
    s.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="HTTP timeout in seconds (for an HTTP sink: its whole answer)",
    )
    s.add_argument(
        "--retries",
        type=int,
        default=4,
        help="HTTP sinks: retries of a refused page, with backoff (default 4)",
    )
    add_filter_args(s, times=False)
    s.set_defaults(run=cmd_stream)
