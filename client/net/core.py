"""The one HTTP core of the clients in ``client/``: transport, bounded answers, errors,
``Retry-After``, and what a client believes about a log's tree.

Every client of a log or a witness goes through it: :class:`client.net.logclient.LogClient`,
:class:`client.net.scim_audit.ScimAuditClient`, :class:`client.net.witness_client.WitnessClient`,
the witness's log poller (:mod:`client.witness.monitor`), and the SCIM adapters' relay and
pseudonym lookup (:mod:`client.adapters`).

* :class:`HTTPCore` owns its ``httpx.Client`` only if it made it (closed with the core), reads
  every answer with a bound on its *decoded* size (no gzip bombs) and on its total time
  (:data:`ANSWER_TIME_FACTOR` times the timeout, from connecting to the last byte: httpx's
  timeouts bound each socket read, so a server sending one byte a second would otherwise
  hold a client for as long as it likes), and turns transport failures into
  :class:`Unreachable`. :func:`http_client` makes an ``httpx.Client`` whose sockets obey
  that bound (the head too); with any other client only the body's time is checked.
* The sockets of :func:`http_client` send a request once more, at once, on a fresh
  connection when the server's idle close met it in flight (``tlog serve --keep-alive``
  closing a kept-alive connection just after httpcore looked at it: httpx raises
  ``RemoteProtocolError``, "Server disconnected without sending a response", or a reset's
  ``ReadError``/``WriteError``; httpcore's own ``retries=`` covers only connecting). Only
  when safe: the request may be sent twice (GET, HEAD, or marked ``idempotent`` in
  :meth:`HTTPCore.send`: the relay's batch and the pseudonym lookup, idempotent on the log,
  and a witness's ``add-checkpoint``, whose compare-and-swap on ``old`` makes a repeat
  harmless), it went on a reused connection, not one byte of an answer came, and it was no
  timeout. Once only, within the same deadline (docs/design.md, "Clients and the server's
  idle close"; ``tests/net/test_net15_idle_close.py``). :mod:`client.net.lean` does the
  same for its own connection.
* :func:`retry_after` is the one reading of ``Retry-After`` (delta-seconds or an HTTP date,
  never negative, capped) and :meth:`HTTPCore.call` the one retry loop on 429 and 503.
* :class:`CheckpointTracker` keeps the largest checkpoint a client has proven and the tree
  sizes proven consistent with it, so that a rollback or a fork is noticed however the log
  presents it.

Errors::

    Exception
    ├── HTTPFailure          the server could not be asked or refused: proves nothing about it
    │   ├── Unreachable      connection, TLS or timeout failure
    │   └── StatusError      a non-2xx answer: .status, .reason (the server's), .retry_after
    └── client.formats.merkle.VerificationError   (raised by the tracker: fork, rollback)
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpcore
import httpx

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import FormatError
from client.formats.text import inert

__all__ = [
    "ANSWER_TIME_FACTOR",
    "IDEMPOTENT",
    "MAX_RETRY_AFTER",
    "Answer",
    "CheckpointTracker",
    "Closing",
    "CoreClient",
    "HTTPCore",
    "HTTPFailure",
    "StatusError",
    "Unreachable",
    "answer_deadline",
    "deadline_left",
    "default_tls",
    "http_client",
    "inert",
    "read_body",
    "retry_after",
]

MAX_RETRY_AFTER = 30.0
MAX_REASON = 1000  # characters of a server's {"error": ...} text kept in a StatusError
MAX_KNOWN_SIZES = 4096
# A whole answer (connect, head, body) must arrive within this many times the read timeout.
ANSWER_TIME_FACTOR = 3.0


class HTTPFailure(Exception):
    """The server could not be asked, or refused to answer. Proves nothing about it."""


class Unreachable(HTTPFailure):
    """Connection, TLS or timeout failure."""


class StatusError(HTTPFailure):
    """A non-2xx answer. ``reason`` is the server's ``{"error": ...}`` text (or the start of
    its body); ``retry_after`` is :func:`retry_after` of its header."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def retry_after(value: str | None, cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3: delta-seconds or an
    HTTP date), at least 0 and at most ``cap``; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    delay = when.timestamp() - time.time()
    return min(max(delay, 0.0), cap) if math.isfinite(delay) else None


@dataclass(frozen=True)
class Answer:
    """A whole answer: status, headers and the decoded body (bounded)."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; a body that is not JSON is the server's fault (FormatError)."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise FormatError(f"answer is not JSON: {exc}") from None
        except RecursionError:  # [[[[...]]]] within the size bound: no ValueError
            raise FormatError("answer is not JSON: nested too deeply") from None

    def media_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()

    def reason(self, limit: int = 200) -> str:
        """The server's ``{"error": ...}`` text (its first :data:`MAX_REASON` characters),
        else the start of its body; control and format characters shown escaped, so that a
        hostile server's text is one inert line wherever it is printed or logged."""
        try:
            doc = json.loads(self.body)
        except (ValueError, RecursionError):
            doc = None
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, str):
            return inert(error, MAX_REASON)
        return inert(self.body[:limit].decode("utf-8", "replace"), limit)

    def error(self, cap: float = MAX_RETRY_AFTER) -> StatusError:
        delay = retry_after(self.headers.get("retry-after"), cap)
        return StatusError(self.status, self.reason(), delay)


class Closing:
    """``with`` support for anything with a ``close()``: written once for the core and the
    clients built on it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# The deadline of the answer HTTPCore.send is reading on this thread (httpx's sync client
# does all its socket work on the caller's thread), for the sockets of http_client().
_deadline = threading.local()


@contextlib.contextmanager
def answer_deadline(seconds: float | None) -> Iterator[None]:
    """The requests this thread sends meanwhile, on the sockets of :func:`http_client`, must
    have their whole answer (connect, head included) within ``seconds`` (None: no bound; an
    outer deadline that ends sooner stays): a server dripping its head or body a byte at a
    time cannot hold the caller, whatever the per-read timeout."""
    outer: float | None = getattr(_deadline, "at", None)
    at = None if seconds is None else time.monotonic() + seconds
    _deadline.at = outer if at is None else at if outer is None else min(at, outer)
    try:
        yield
    finally:
        _deadline.at = outer


def deadline_left(exc: type[Exception], timeout: float | None) -> float | None:
    """``timeout`` shortened to what is left of this thread's deadline; ``exc`` once past."""
    at: float | None = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise exc("the answer took longer than its deadline")
    return left if timeout is None else min(timeout, left)


def read_body(
    chunks: Iterable[bytes], limit: int, at: float | None, path: str, request: str
) -> bytes:
    """An answer's body, read from ``chunks``: :class:`FormatError` once it is larger than
    ``limit`` bytes, :class:`Unreachable` (naming ``request``) once the answer's end ``at``
    (``time.monotonic()``) has passed, whatever the client's sockets."""
    body: list[bytes] = []
    n = 0
    for chunk in chunks:
        n += len(chunk)
        if n > limit:
            raise FormatError(f"{path}: answer larger than {limit} bytes")
        if at is not None and time.monotonic() > at:
            raise Unreachable(f"{request}: the answer took too long")
        body.append(chunk)
    return b"".join(body)


# A request extension (``httpx.Request(extensions={IDEMPOTENT: True})``): this request may be
# sent twice without harm, so the sockets of http_client() send it once more on a fresh
# connection when the server's idle close met it in flight (GET and HEAD always may).
IDEMPOTENT = "tlog.idempotent"
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class _Attempt:
    """What one request's attempt did on this thread's sockets of :func:`http_client`."""

    __slots__ = ("connects", "fresh", "received")

    def __init__(self, fresh: bool = False) -> None:
        self.connects = 0  # connections opened for it (0: it went on a kept-alive one)
        self.received = 0  # bytes of an answer read
        self.fresh = fresh  # every idle connection of the pool counts as closed by the server


# The attempt the request on this thread is making (httpx's sync client does all its socket
# work on the caller's thread, the pool's choice of a connection included).
_attempt = threading.local()


def _current() -> _Attempt | None:
    got: _Attempt | None = getattr(_attempt, "now", None)
    return got


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write ends by the thread's deadline, and which
    counts what it reads for the thread's :class:`_Attempt`."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, deadline_left(httpcore.ReadTimeout, timeout))
        attempt = _current()
        if attempt is not None:
            attempt.received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, deadline_left(httpcore.WriteTimeout, timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, deadline_left(httpcore.ConnectTimeout, timeout)
        )
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":  # httpcore's look at an idle connection before reusing it
            attempt = _current()
            if attempt is not None and attempt.fresh:
                return True  # taken for closed: the pool drops it and connects anew
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = deadline_left(httpcore.ConnectTimeout, timeout)
        attempt = _current()
        if attempt is not None:
            attempt.connects += 1
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - no client here uses UNIX sockets
        timeout = deadline_left(httpcore.ConnectTimeout, timeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:  # pragma: no cover - retries are off
        self._inner.sleep(seconds)


class _IdleCloseRetry(httpx.BaseTransport):
    """``inner``, with a request that met the server's idle close in flight sent once more
    at once on a fresh connection, when that is safe: the request may be sent twice
    (GET, HEAD, or marked :data:`IDEMPOTENT`), it went on a kept-alive connection (not one
    opened for it), and not one byte of an answer came, by a failure other than a timeout
    (a server still working on it may answer yet). The retry obeys the same deadline.

    httpcore looks at an idle connection before reusing it (readable: the server closed
    it) but a close arriving just after the look meets the request, and httpcore then
    raises ``RemoteProtocolError`` ("Server disconnected without sending a response"),
    ``ReadError`` or ``WriteError`` (connection reset); it retries only failures to
    connect (``retries=``), and those with a back-off sleep."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        outer = _current()
        attempt = _Attempt()
        _attempt.now = attempt
        try:
            return self._inner.handle_request(request)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            if not (_may_repeat(request) and attempt.connects == 0 and attempt.received == 0):
                raise
            _attempt.now = _Attempt(fresh=True)
            return self._inner.handle_request(request)
        finally:
            _attempt.now = outer

    def close(self) -> None:
        self._inner.close()


def _may_repeat(request: httpx.Request) -> bool:
    """Whether ``request`` may be sent twice: a safe method, or marked idempotent, and a
    body that can be sent again (bytes, not a stream already consumed)."""
    if request.method not in _SAFE_METHODS and request.extensions.get(IDEMPOTENT) is not True:
        return False
    return isinstance(request.stream, httpx.ByteStream)


_TLS: ssl.SSLContext | None = None
_TLS_LOCK = threading.Lock()


def default_tls() -> ssl.SSLContext:
    """The verifying TLS context of every :func:`http_client` not given one, made once a
    process, as httpx makes it (the CA file of ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` as
    the environment is then, else certifi's). httpx makes a new one for each client, the
    whole CA file parsed again: ~20 ms of CPU a client (a tool or test that makes many
    clients spent most of its time there). A context is shared safely by connections and
    threads; each of our transports sets the same ALPN (HTTP/1.1) on it and changes
    nothing else."""
    global _TLS
    with _TLS_LOCK:
        if _TLS is None:
            _TLS = httpx.create_ssl_context()
        return _TLS


def http_client(
    *,
    timeout: float | None = 30.0,
    limits: httpx.Limits | None = None,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = False,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """An ``httpx.Client`` whose sockets also obey :class:`HTTPCore`'s whole-answer deadline
    (a server dripping its head byte by byte is cut off too)."""
    if verify is True:
        verify = default_tls()
    transport = httpx.HTTPTransport(limits=limits or httpx.Limits(), verify=verify)
    pool = transport._pool
    if not isinstance(pool, httpcore.ConnectionPool):  # pragma: no cover - httpx changed
        raise RuntimeError("httpx.HTTPTransport has no httpcore pool to bound")
    pool._network_backend = _DeadlineBackend()
    return httpx.Client(
        timeout=timeout,
        transport=_IdleCloseRetry(transport),
        headers=headers,
        follow_redirects=follow_redirects,
    )


class HTTPCore(Closing):
    """Requests to ``url`` + path over ``http`` (any ``httpx.Client``, e.g. a Starlette
    ``TestClient`` in tests), which it closes only if it made it. Safe for concurrent use if
    ``http`` is."""

    def __init__(
        self,
        url: str,
        http: httpx.Client | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._own = http is None
        self.http = http if http is not None else http_client(timeout=timeout)
        self._headers = dict(headers or {})

    def close(self) -> None:
        if self._own:
            self.http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        limit: int,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Answer:
        """One request; any status is returned. Raises :class:`Unreachable` on a transport
        failure or an answer slower than :data:`ANSWER_TIME_FACTOR` times the timeout, and
        :class:`FormatError` when the decoded body exceeds ``limit`` bytes or cannot be
        decoded (the server's fault, not the network's). ``timeout`` replaces the client's
        for this request. ``idempotent``: the request may be sent twice without harm, so
        that, like a GET, it is sent once more on a fresh connection when the server's idle
        close met it on a kept-alive one (on the sockets of :func:`http_client` only)."""
        url = f"{self.url}/{path.lstrip('/')}"
        merged = {**self._headers, **headers} if headers else self._headers
        budget = self.http.timeout.read if timeout is None else timeout
        span = None if budget is None else ANSWER_TIME_FACTOR * budget
        at = None if span is None else time.monotonic() + span
        try:
            with answer_deadline(span):
                request = self.http.build_request(
                    method,
                    url,
                    params=params,
                    content=content,
                    headers=merged,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                    extensions={IDEMPOTENT: True} if idempotent else None,
                )
                response = self.http.send(request, stream=True)
                try:
                    # decoded: the limit bounds gzip too
                    body = read_body(response.iter_bytes(), limit, at, path, f"{method} {url}")
                finally:
                    response.close()
        except httpx.DecodingError as exc:
            raise FormatError(f"{path}: cannot decode the answer: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise Unreachable(f"{method} {url}: {exc}") from exc
        return Answer(response.status_code, response.headers, body)

    def call(
        self,
        method: str,
        path: str,
        *,
        limit: int,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retries: int = 0,
    ) -> Answer:
        """:meth:`send`, retried up to ``retries`` times on 429 and 503 after the server's
        ``Retry-After`` (1 s without one); a non-2xx answer raises :class:`StatusError`."""
        for attempt in range(retries + 1):
            answer = self.send(
                method, path, limit=limit, params=params, content=content, headers=headers
            )
            if answer.ok:
                return answer
            error = answer.error()
            if attempt >= retries or answer.status not in (429, 503):
                raise error
            time.sleep(error.retry_after if error.retry_after is not None else 1.0)
        raise AssertionError("unreachable")  # pragma: no cover


class CoreClient(Closing):
    """Base of the clients built on one :class:`HTTPCore` (``self._core``): closing them and
    using them in a ``with`` statement, written once."""

    _core: HTTPCore

    def close(self) -> None:
        self._core.close()


class CheckpointTracker:
    """What a client believes about one log's tree: the largest checkpoint it has proven
    (:attr:`latest`) and the sizes proven consistent with it (bounded memory).

    ``prove(old, new)`` must raise :class:`VerificationError` unless ``old`` is a prefix of
    ``new`` (typically: fetch a consistency proof and verify it). The checkpoints given to
    :meth:`observe` must already be verified (signature, origin). Not safe for concurrent use.
    """

    def __init__(self, prove: Callable[[Checkpoint, Checkpoint], None]) -> None:
        self._prove = prove
        self.latest: Checkpoint | None = None
        self._known: dict[int, bytes] = {}

    def observe(self, cp: Checkpoint, *, claimed_latest: bool = False) -> None:
        """Fold ``cp`` in, proving it consistent with :attr:`latest`. A second root for a
        known size is a fork; a checkpoint smaller than :attr:`latest` that the log
        ``claimed_latest`` is a rollback. Both raise :class:`VerificationError`."""
        known = self._known.get(cp.size)
        if known is not None and known != cp.root_hash:
            raise VerificationError(f"fork: two checkpoints of size {cp.size} with different roots")
        cur = self.latest
        if cur is None:
            self.latest = cp
            self._remember(cp)
        elif cp.size == cur.size:
            if cp.root_hash != cur.root_hash:
                raise VerificationError(
                    f"fork: two checkpoints of size {cp.size} with different roots"
                )
        elif cp.size < cur.size:
            if claimed_latest:
                raise VerificationError(
                    f"rollback: the log's checkpoint has size {cp.size}, "
                    f"but it already signed size {cur.size}"
                )
            if known is None:
                self._prove(cp, cur)
                self._remember(cp)
        else:
            self._prove(cur, cp)
            self.latest = cp
            self._remember(cp)

    def _remember(self, cp: Checkpoint) -> None:
        if len(self._known) >= MAX_KNOWN_SIZES:
            self._known.clear()
        self._known[cp.size] = cp.root_hash
