"""Member pseudonyms from the log, for adapters (SCIM.md §4.3 step 5).

Group events name users. :class:`LogPseudonyms` is a ``ref_pid`` for
:func:`client.scim.actions.parse_request`: it asks the log (``POST /v1/scim/pseudonyms``) for
``pid = HMAC(P_user, id)[:16]`` under each member's *own* pseudonym key, which the log keeps
next to that user's DEK. Shredding the user destroys the key, so group events that named them
become unlinkable too.

If the log cannot answer, the call raises :class:`EventFormatError`; ``parse_request`` then
fails and adapters record the event without its body-derived fields, so a member id is never
written in plaintext to stand in for a pseudonym.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from client.formats.note import FormatError, b64decode_strict
from client.net.core import CoreClient, HTTPCore, Unreachable
from client.scim.cbor import EventFormatError

__all__ = ["MAX_BATCH", "MAX_TIMEOUT", "LogPseudonyms", "PidCollector", "substitute_pids"]

MAX_BATCH = 10_000  # refs per POST /v1/scim/pseudonyms (the log's limit)
CACHE_TTL = 300.0  # seconds a pid is used from the cache before the log is asked again
ANSWER_LIMIT = 8 << 20  # bytes of an answer (10,000 pids are ~600 KB)
PATH = "/v1/scim/pseudonyms"
# The longest wait for an answer: a day. The lookup's sockets take the timeout as a C
# ``timeval``, which a larger value (1e10 s) overflows: every lookup raised OverflowError,
# and every group write was answered 503 after the SP applied it (red team 27).
MAX_TIMEOUT = 86_400.0


class PidCollector:
    """A ``ref_pid`` that records which subjects a request references and hands out
    placeholders, so that all of them can be resolved in **one** batched call afterwards
    (:func:`substitute_pids` then swaps the placeholders for the real pids)."""

    _TAG = b"\xfe\x9d\x07tlog-ph"  # 10 bytes; + a 6-byte counter

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def __call__(self, rt: str, ref_id: str) -> bytes:
        with self._lock:
            ph = self.pairs.get((rt, ref_id))
            if ph is None:
                ph = self._TAG + len(self.pairs).to_bytes(6, "big")
                self.pairs[(rt, ref_id)] = ph
            return ph

    def placeholders(self, real: Mapping[tuple[str, str], bytes]) -> dict[bytes, bytes]:
        """placeholder -> real pid, for :func:`substitute_pids`."""
        return {ph: real[pair] for pair, ph in self.pairs.items()}


def substitute_pids(events: Iterable[dict[str, Any]], table: Mapping[bytes, bytes]) -> None:
    """Replace placeholder pids in events built with a :class:`PidCollector`, in place:
    ``refs[].pid``, the ``pid:<base64>`` filters in ``patch[].path``/``mods[].attr`` and
    the manager's and members' pids in ``x.result`` (same length, so the events stay
    valid)."""
    text = {base64.b64encode(k).decode(): base64.b64encode(v).decode() for k, v in table.items()}

    def fix(s: str) -> str:
        if "pid:" not in s:
            return s
        for k, v in text.items():
            if k in s:
                s = s.replace(k, v)
        return s

    for ev in events:
        for ref in ev.get("refs", ()):
            ref["pid"] = table.get(ref["pid"], ref["pid"])
        for item in ev.get("patch", ()):
            if "path" in item:
                item["path"] = fix(item["path"])
        for mod in ev.get("mods", ()):
            mod["attr"] = fix(mod["attr"])
        result = (ev.get("x") or {}).get("result")
        if isinstance(result, dict) and isinstance(result.get("manager"), str):
            result["manager"] = text.get(result["manager"], result["manager"])
        if isinstance(result, dict) and isinstance(result.get("members"), list):
            result["members"] = sorted(text.get(p, p) for p in result["members"])


class LogPseudonyms(CoreClient):
    """``ref_pid(rt, id) -> 16-byte pid`` backed by the log, cached. Thread-safe.

    Asks the log through the shared :class:`client.net.core.HTTPCore` (over ``http`` if
    given, which it then does not close).

    A pid is stable until its subject is erased. After an erasure the log has no key for it
    any more: a user created again with the same id gets a new key and a new pid. A cached
    pid is used for at most ``cache_ttl`` seconds: after an erasure, group events name a
    re-created user by the erased one's pid for no longer than that (the cached value opens
    nothing; it would only link the new user's group events to the erased user's).
    """

    def __init__(
        self,
        log_url: str,
        token: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 2.0,
        cache_size: int = 100_000,
        cache_ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(
                f"the pseudonym lookup's timeout must be above 0 and at most {MAX_TIMEOUT:g} "
                f"seconds, not {timeout!r}"
            )
        self.url = log_url.rstrip("/") + PATH
        self._core = HTTPCore(
            log_url,
            http,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        # (rt, id) -> (pid, when it was fetched, by ``clock``)
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self.calls = 0  # requests made to the log (for tests and metrics)

    def __call__(self, rt: str, member_id: str) -> bytes:
        return self.resolve([(rt, member_id)])[(rt, member_id)]

    def resolve(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The pids of all ``(rt, id)`` pairs: cached ones from the cache, the rest in one
        ``POST /v1/scim/pseudonyms`` (split only beyond :data:`MAX_BATCH`). Blocking: the
        adapters call it from a worker thread, never on the event loop."""
        out: dict[tuple[str, str], bytes] = {}
        missing: list[tuple[str, str]] = []
        now = self._clock()
        fresh = now - self._cache_ttl
        with self._lock:
            for key in dict.fromkeys(pairs):
                got = self._cache.get(key)
                if got is None or got[1] < fresh:
                    missing.append(key)
                else:
                    out[key] = got[0]
        self.calls += 1 if missing else 0
        for i in range(0, len(missing), MAX_BATCH):
            chunk = missing[i : i + MAX_BATCH]
            got_pids = self._fetch(chunk)
            out.update(zip(chunk, got_pids, strict=True))
            with self._lock:
                if len(self._cache) + len(chunk) > self._cache_size:
                    self._cache.clear()
                self._cache.update((k, (p, now)) for k, p in zip(chunk, got_pids, strict=True))
        return out

    def _fetch(self, chunk: Sequence[tuple[str, str]]) -> list[bytes]:
        body = json.dumps({"refs": [{"rt": rt, "id": i} for rt, i in chunk]}).encode()
        try:
            # idempotent: a pid is an HMAC under the subject's key, made once on first use
            r = self._core.send("POST", PATH, limit=ANSWER_LIMIT, content=body, idempotent=True)
        except (Unreachable, FormatError) as exc:
            raise EventFormatError(f"member pseudonym unavailable: {exc}") from None
        if r.status != 200:
            raise EventFormatError(f"member pseudonym unavailable: log answered {r.status}")
        try:
            refs = r.json()["refs"]
            if len(refs) != len(chunk):
                raise FormatError("unexpected answer")
            pids = []
            for (rt, _), ref in zip(chunk, refs, strict=True):
                if ref["rt"] != rt:
                    raise FormatError("unexpected answer")
                pids.append(b64decode_strict(ref["pid"], size=16))
        except (ValueError, KeyError, IndexError, TypeError, FormatError) as exc:
            raise EventFormatError(f"member pseudonym: malformed answer: {exc}") from None
        return pids
