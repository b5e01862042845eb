"""The auditor's console: a static page under ``/ui/`` and the small JSON it needs.

The page (``tlog/ui/static/``: plain HTML, CSS and ES modules, no framework, nothing fetched
from anywhere but this server) verifies everything it shows in the browser; the server only
serves files and data. Every answer under ``/ui/`` carries a strict Content-Security-Policy:
scripts and styles from this origin only, no inline code, no frames, no other hosts.

Endpoints added here (docs/api.md "Console"):

* ``GET /ui/`` and ``GET /ui/<file>``: the page's files, held in memory (a fixed list; no
  path is ever joined onto the file system at request time);
* ``GET /v1/ui/summary`` (public): origin, verifier key, witness policy text, the latest
  checkpoint and its time, each witness's latest cosigned size and time, and up to
  :data:`HISTORY_POINTS` stored checkpoints for the entries-over-time chart;
* ``POST /v1/scim/exports`` (auditor): records an export run (the page's CSV/evidence
  downloads, ``tlog-client scim stream``) as a ``tlog.access.export`` access event of the
  token's tenant, and returns its receipt.

The console is given what it reads explicitly (:func:`console_routes`: the log's
:class:`tlog.routes.Api` and the SCIM service, if any), as rows of the app's one routing
table (:class:`tlog.http.Endpoint`), like every other module's routes.

Times: a checkpoint carries no time of its own. The time shown for tree size ``n`` is the
log time ``ts`` of the SCIM leaf at index ``n - 1`` when that entry is a SCIM leaf, else the
earliest witness cosignature timestamp for that size, else none.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import FormatError, b64decode_strict, open_note, parse_note
from client.formats.policy import Policy
from client.scim.cbor import EventFormatError
from client.scim.leaf import parse_leaf
from tlog.backend import StorageError, storage_fault
from tlog.errors import ERRORS, BadRequest
from tlog.http import Endpoint, Query, b64, json_body, read_body, request_id
from tlog.routes import Api

if TYPE_CHECKING:
    from tlog.scim.service import ScimService

__all__ = ["CSP", "HISTORY_POINTS", "STATIC_DIR", "SUMMARY_TTL", "console_routes", "policy_text"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
HISTORY_POINTS = 64
# The latest time a browser's Date can hold (ms, 275760-09-13): later cosignature times are
# not handed to the page (_cosig_times).
JS_DATE_MAX_MS = 8_640_000_000_000_000
SUMMARY_TTL = 2.0  # seconds a summary is reused while the log's checkpoints are unchanged
MAX_EXPORT_BODY = 4096
_SINK_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_FILE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\.(html|js|css|svg|png)")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
_log = logging.getLogger("tlog.ui")

_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}


def policy_text(policy: Policy) -> str:
    """The policy in c2sp.org/tlog-policy form (what the page parses and checks against)."""
    lines = []
    for lg in policy.logs:
        lines.append(" ".join(["log", lg.verifier.vkey(), *([lg.url] if lg.url else [])]))
    for w in policy.witnesses.values():
        lines.append(" ".join(["witness", w.name, w.verifier.vkey(), *([w.url] if w.url else [])]))
    for g in policy.groups.values():
        lines.append(" ".join(["group", g.name, str(g.threshold), *g.members]))
    lines.append(f"quorum {policy.quorum}")
    return "\n".join(lines) + "\n"


def _cosig_times(lines: bytes | None) -> dict[tuple[str, int], int]:
    """(key name, key id) -> timestamp (ms) of each cosignature line: both cosignature types
    (Ed25519 0x04, ML-DSA-44 0x06) start with a big-endian uint64 time after the key ID."""
    out: dict[tuple[str, int], int] = {}
    for line in (lines or b"").decode("utf-8", "replace").split("\n"):
        if not line.startswith("\u2014 "):
            continue
        name, _, sig = line[2:].rpartition(" ")
        try:
            raw = b64decode_strict(sig)
        except FormatError:
            continue
        if len(raw) >= 4 + 8 + 64:  # cosignature/v1 (Ed25519) or ML-DSA-44: time first
            kid, ts = struct.unpack(">IQ", raw[:12])
            if ts * 1000 <= JS_DATE_MAX_MS:
                out[(name, kid)] = ts * 1000
            # else: a witness clock far ahead (up to 2^63 - 1 s is a valid cosignature):
            # the page could not show the time (new Date() throws past JavaScript's range,
            # and JSON numbers past 2^53 lose digits), so that witness's time is left out.
    return out


class Console:
    """The console's handlers over one log (``api``) and its SCIM service (``scim``)."""

    def __init__(
        self, api: Api, scim: ScimService | None = None, static_dir: Path = STATIC_DIR
    ) -> None:
        self.api = api
        self.scim = scim
        # The last summary: (when, what it was computed for, the answer).
        self._summary_cache: tuple[float, tuple[str, int], dict[str, Any]] | None = None
        # The summary read in flight: (what it is for, the task every request for the same
        # key awaits). One read however many requests miss the cache at once.
        self._summary_flight: tuple[tuple[str, int], asyncio.Task[dict[str, Any]]] | None = None
        # History checkpoints whose stored bytes verified (size -> bytes), and the damaged
        # ones last logged (logged once each, at ERROR: _history_point).
        self._verified: dict[int, bytes] = {}
        self._damaged_logged: set[int] = set()
        self.files: dict[str, tuple[bytes, str]] = {}
        if static_dir.is_dir():
            for p in sorted(static_dir.iterdir()):
                m = _FILE_RE.fullmatch(p.name)
                if m and p.is_file():
                    self.files[p.name] = (p.read_bytes(), _TYPES[m.group(1)])

    # -- static --------------------------------------------------------------------------

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=308, headers=SECURITY_HEADERS)

    async def page(self, request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        got = self.files.get(name)
        if got is None:
            return JSONResponse({"error": "no such file"}, 404, headers=SECURITY_HEADERS)
        data, ctype = got
        return Response(data, media_type=ctype, headers=SECURITY_HEADERS)

    # -- summary -------------------------------------------------------------------------

    @staticmethod
    def _time(rv: Any, size: int, cosigs: bytes | None) -> int | None:
        if size == 0:
            return None
        entry = rv.entry(size - 1)
        if entry is not None:
            try:
                return parse_leaf(entry).ts
            except EventFormatError:
                pass
        times = _cosig_times(cosigs)
        return min(times.values()) if times else None

    async def summary(self, request: Request) -> Response:
        Query(request, set())
        # Public and costly (a read of every chart point): computed once per checkpoint
        # for SUMMARY_TTL seconds, and on the read threads, never on the event loop. Requests
        # that miss the cache together share one read (single flight): the first starts it,
        # the others await the same task; a failure is not cached, every waiter gets the
        # same error, and the next request reads again.
        key = (self.api.published.checkpoint(), self.api.log.latest.size)
        c = self._summary_cache
        if c is not None and c[1] == key and time.monotonic() - c[0] < SUMMARY_TTL:
            return JSONResponse(c[2])
        loop = asyncio.get_running_loop()
        f = self._summary_flight
        if f is None or f[0] != key or f[1].done() or f[1].get_loop() is not loop:
            f = self._summary_flight = (key, loop.create_task(self._read_summary(key)))
        # shield: a waiter that goes away does not cancel the read the others wait for.
        doc = await asyncio.shield(f[1])
        return JSONResponse(doc)

    async def _read_summary(self, key: tuple[str, int]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            doc = await self.api.reads.run(self._summary, "a summary read")
        except Exception as exc:
            raise _summary_error(exc) from None
        finally:
            f = self._summary_flight
            if f is not None and f[1] is asyncio.current_task():
                self._summary_flight = None
        self._summary_cache = (started, key, doc)
        return doc

    def _summary(self) -> dict[str, Any]:
        api = self.api
        note = api.published.checkpoint()
        size = _size_of(note)
        policy = api.published.policy
        status = api.published.status()
        history: list[dict[str, Any]] = []
        witnesses: list[dict[str, Any]] = []
        damaged = 0
        with api.log.storage.read() as rv:
            latest_time = self._time(rv, size, rv.cosignatures(size))
            top = api.log.latest.size
            seen: set[int] = set()
            for i in range(HISTORY_POINTS):
                want = -(-i * top // (HISTORY_POINTS - 1))
                got = rv.checkpoint_at_or_after(want)
                if got is None or got[0] in seen or got[0] > top:
                    continue
                seen.add(got[0])
                note_text = self._history_point(got[0], got[1])
                if note_text is None:  # damaged: left out of the chart, counted
                    damaged += 1
                    continue
                t = self._time(rv, got[0], rv.cosignatures(got[0]))
                history.append({"size": got[0], "time": t, "checkpoint": note_text})
            if policy is not None and status is not None:
                for w in status["witnesses"]:
                    pw = policy.witnesses.get(w["name"])
                    t = None
                    if pw is not None and w["cosigned_size"]:
                        times = _cosig_times(rv.cosignatures(w["cosigned_size"]))
                        t = times.get((pw.verifier.name, pw.verifier.key_id))
                    witnesses.append(
                        {
                            "name": w["name"],
                            "url": w["url"],
                            "cosigned_size": w["cosigned_size"],
                            "cosigned_time": t,
                            "last_error": w["last_error"],
                            "alarms": len(w["alarms"]),
                        }
                    )
        return {
            "origin": api.log.origin,
            "vkey": api.log.vkey,
            "tree_size": size,
            "latest_size": api.log.latest.size,
            "checkpoint": note,
            "checkpoint_time": latest_time,
            "policy": None if policy is None else policy_text(policy),
            "quorum": None if policy is None else policy.quorum,
            "witnesses": witnesses,
            "history": history,
            # Stored checkpoints met while reading the history that do not verify under
            # the log's key (left out of "history"; tlog fsck names them).
            "damaged": {"checkpoint": damaged},
        }

    def _history_point(self, size: int, note: bytes) -> str | None:
        """The stored checkpoint of ``size`` as text when it verifies under the log's key
        (for that size and origin), else None: one damaged record leaves one point out of
        the chart instead of failing the whole summary (it answered 503). The damage is
        logged once at ERROR (the size only) and counted in the answer; tlog fsck reports
        it and every route that serves that checkpoint still refuses it."""
        if self._verified.get(size) == note:
            return note.decode()
        log_ = self.api.log
        try:
            cp = Checkpoint.parse(open_note(note, [log_.signer.verifier]).text)
            ok = cp.size == size and cp.origin == log_.origin
        except (FormatError, VerificationError, UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            log_.note_damage("checkpoint")
            if size not in self._damaged_logged and len(self._damaged_logged) < 4096:
                self._damaged_logged.add(size)
                _log.error(
                    "STORE DAMAGED: the stored checkpoint for tree size %d does not verify; "
                    "left out of the console summary; run tlog fsck",
                    size,
                )
            return None
        if len(self._verified) >= 4096:
            self._verified.clear()
        self._verified[size] = note
        return note.decode()

    # -- export records ------------------------------------------------------------------

    async def record_export(self, request: Request) -> Response:
        p = await self.api.authenticate(request, "auditor")  # a token read: off the loop
        service = self.scim
        if service is None or p.tenant is None:
            return JSONResponse({"error": "no SCIM event service"}, 404)
        doc = json_body(await read_body(request, MAX_EXPORT_BODY))
        counts = ("events", "bodies", "erased")
        if type(doc) is not dict or not set(doc) <= {"sink", *counts} or "sink" not in doc:
            raise BadRequest('body must be {"sink": "<code>", "events": n, ...}')
        sink = doc["sink"]
        if type(sink) is not str or not _SINK_RE.fullmatch(sink):
            raise BadRequest("sink must be a code matching [a-z0-9][a-z0-9._-]{0,31}")
        n: dict[str, int] = {}
        for k in counts:
            v = doc.get(k, 0)
            if type(v) is not int or not 0 <= v < 1 << 53:
                raise BadRequest(f"{k} must be a non-negative integer")
            n[k] = v
        access, _ = await service.access.record(
            p.tenant,
            p,
            what="export",
            path="/v1/scim/exports",
            query=[("sink", sink)],
            counts=n,
            req_id=request_id(request),
        )
        return JSONResponse(
            {
                "sink": sink,
                "access": {
                    "eid": access.eid,
                    "index": access.index,
                    "leaf_hash": b64(access.leaf_hash),
                },
            },
            status_code=201,
        )


def _summary_error(exc: Exception) -> Exception:
    """What every waiter of a failed summary read is answered: the error itself when it
    has a status of its own (:data:`tlog.errors.ERRORS`: a stalled store is a 503 with its
    reason), else a 503 saying the summary could not be read (logged once here, with the
    traceback, not once per waiter as a 500)."""
    if isinstance(exc, HTTPException) or any(isinstance(exc, cls) for cls, _ in ERRORS):
        return exc
    fault = storage_fault(exc)
    if fault is not None:
        _log.critical("STORE FAILURE while reading the console summary: %s", fault)
        return fault
    _log.error("the console summary could not be read", exc_info=exc)
    return StorageError("the console summary could not be read; try again")


def _size_of(note: str) -> int:
    text = parse_note(note).text
    return int(text.split("\n")[1])


def console_routes(
    api: Api, scim: ScimService | None = None, static_dir: Path = STATIC_DIR
) -> list[Endpoint]:
    """The console's rows of the routing table over ``api`` (the log's, given to
    :func:`tlog.app.create_app` too) and ``scim`` (without it, ``POST /v1/scim/exports``
    answers 404), for :func:`tlog.app.create_app`'s ``extra_routes``."""
    c = Console(api, scim, static_dir)
    return [
        Endpoint("GET", "/ui", c.redirect),
        Endpoint("GET", "/ui/", c.page),
        Endpoint("GET", "/ui/{name}", c.page),
        Endpoint("GET", "/v1/ui/summary", c.summary),
        Endpoint("POST", "/v1/scim/exports", c.record_export),
    ]
