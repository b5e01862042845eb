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

import threading

import httpx

from client.note import FormatError, b64decode_strict
from client.scim.cbor import EventFormatError

__all__ = ["LogPseudonyms"]


class LogPseudonyms:
    """``ref_pid(rt, id) -> 16-byte pid`` backed by the log, cached. Thread-safe.

    A pid is stable until its subject is erased; a cached pid of an erased subject is just a
    random-looking value, so the cache never un-erases anything.
    """

    def __init__(
        self,
        log_url: str,
        token: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 2.0,
        cache_size: int = 100_000,
    ) -> None:
        self.url = log_url.rstrip("/") + "/v1/scim/pseudonyms"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._cache: dict[tuple[str, str], bytes] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __call__(self, rt: str, member_id: str) -> bytes:
        key = (rt, member_id)
        with self._lock:
            got = self._cache.get(key)
        if got is not None:
            return got
        try:
            r = self._http.post(
                self.url, json={"refs": [{"rt": rt, "id": member_id}]}, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise EventFormatError(f"member pseudonym unavailable: {exc}") from None
        if r.status_code != 200:
            raise EventFormatError(f"member pseudonym unavailable: log answered {r.status_code}")
        try:
            refs = r.json()["refs"]
            pid = b64decode_strict(refs[0]["pid"], size=16)
            if len(refs) != 1 or refs[0]["rt"] != rt:
                raise FormatError("unexpected answer")
        except (ValueError, KeyError, IndexError, TypeError, FormatError) as exc:
            raise EventFormatError(f"member pseudonym: malformed answer: {exc}") from None
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = pid
        return pid
