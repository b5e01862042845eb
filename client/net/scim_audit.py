"""Auditor client for the log's SCIM event service: search, and verify every answer.

The server is not trusted. For every result of :meth:`ScimAuditClient.search` the client
checks (SCIM.md §4.3 step 4):

* the checkpoint: the log's signature and origin, and consistency with every checkpoint this
  client has seen before (an RFC 9162 consistency proof from the log, fetched when sizes
  differ), so one client cannot be shown two histories;
* the leaf: it hashes to ``leaf_hash``, parses as ``{v, ts, tn, c}``, and ``tn`` is this
  tenant's ref (from ``GET /v1/scim/tenant-ref`` or pinned by the caller);
* the inclusion proof of the leaf hash at ``index`` under the checkpoint's root;
* the body: the event validates (:func:`client.scim.event.event_from_json`), belongs to this
  tenant, and ``c == HMAC(nonce, det_cbor(event))``;
* the actor: an event stored with a pseudonymous actor (``{kind, pid, sd}``, docs/design.md
  "Actors") comes with the actor as submitted and the nonce of ``sd``, opened by the log from
  under the actor's own keys: ``sd == HMAC(nonce, det_cbor(actor))`` and the kinds agree; or
  with ``{"unlinked": true}`` once the actor was erased (then nobody is named);
* the filters: each returned event matches what was asked for (resource id, externalId,
  actor, action, outcome, request id, time range), so a server cannot pad results.

Any failure raises :class:`client.formats.merkle.VerificationError`, including a malformed answer.
An HTTP error status raises :class:`ScimAuditError`. Erased events come back with
``event=None``: their leaf and inclusion are still verified.

Uses ``httpx`` only; nothing of the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.merkle import VerificationError, leaf_hash, verify_consistency, verify_inclusion
from client.formats.note import Ed25519Verifier, FormatError, b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.net.core import CheckpointTracker, CoreClient, HTTPCore, StatusError
from client.scim.event import (
    Event,
    actor_from_json,
    actor_handle,
    actor_seal_digest,
    event_from_json,
)
from client.scim.leaf import NONCE_SIZE, Leaf, parse_leaf, verify_commitment, verify_effect
from client.scim.reserved import event_origin

__all__ = ["AuditedEvent", "Receipt", "ScimAuditClient", "ScimAuditError", "SearchPage"]

# A search page holds at most 100 events, each at most a 64 KiB body with its proofs.
MAX_ANSWER_BYTES = 32 << 20


class ScimAuditError(StatusError):
    """The server answered with an error status (the reason is the server's)."""


@dataclass(frozen=True)
class AuditedEvent:
    """A verified search result. ``event`` and ``nonce`` are None for an erased event."""

    index: int
    leaf_hash: bytes
    leaf: Leaf
    tree_size: int
    checkpoint: Checkpoint
    event: Event | None
    nonce: bytes | None
    checkpoint_note: str = ""  # the signed note ``checkpoint`` was verified from
    # What the log derived the event did, judged against the resource's state (actions,
    # named member adds/removes, no-ops): the log's reading, not the submitter's statement.
    # None when the log derived none.
    effect: Mapping[str, Any] | None = None
    # True: the leaf commits to ``effect`` (its ``e``), verified like the event itself. False
    # for a leaf without ``e`` (an event with no effect, or one logged before effects were
    # committed: then ``effect`` is the log's unattested reading).
    effect_attested: bool = False
    # Who acted: the event's actor as submitted, the sealed one verified against the
    # event's ``actor.sd`` when the log stored the actor as a pseudonym; None once erased,
    # or once the actor was erased (``actor_unlinked``: the event names no one).
    actor: Mapping[str, Any] | None = None
    actor_unlinked: bool = False

    @property
    def erased(self) -> bool:
        return self.event is None

    @property
    def who(self) -> Mapping[str, Any] | None:
        """Who acted (``actor``; for an event built without it, the event's own actor unless
        that is a pseudonym): None once erased or unlinked."""
        if self.actor is not None or self.event is None:
            return self.actor
        stored = self.event["actor"]
        return None if "pid" in stored else stored

    @property
    def origin(self) -> str | None:
        """``"log"`` (one of the log's own events), ``"lookalike"`` (a name that only
        normalises into the reserved ``tlog.`` namespace: never the log's, treat as forged) or
        ``"tenant"``; None once erased. See :mod:`client.scim.reserved`."""
        return None if self.event is None else event_origin(self.event)


# A search cursor as the log makes it (tlog.scim.search): the log time (8 bytes, big-endian)
# and the leaf hash of the page's last result, or _NEXT_MS where the page ended at the end
# of that millisecond.
_CURSOR_SIZE = 8 + 32
_NEXT_MS = b"\xff" * 32
_AFTER = float("inf")  # a millisecond's end: after each of its events
# Millisecond ends a listing may name beyond twice the log's size: the events pending or
# sequenced after the page's checkpoint are read (and counted) by the log's scan too.
_END_SLACK = 1024


def _cursor(text: str) -> tuple[int, bytes]:
    """The (log time, leaf hash) a search cursor names."""
    try:
        raw = b64decode_strict(text, size=_CURSOR_SIZE)
    except FormatError as exc:
        raise _malformed(f"next cursor: {exc}") from None
    return int.from_bytes(raw[:8], "big"), raw[8:]


def _position(at: tuple[int, float]) -> str:
    if at[1] == _AFTER:
        return f"the end of millisecond {at[0]}"
    return f"index {at[1]} (time {at[0]})"


@dataclass(frozen=True)
class SearchPage:
    results: list[AuditedEvent]
    next: str | None  # cursor for the next page, None at the end
    access: Mapping[str, Any]  # the access event this read appended (eid, index, leaf_hash)
    tree_size: int = 0  # the size of the checkpoint the page answers to


@dataclass(frozen=True)
class Receipt:
    """A verified receipt (``index`` None while the event is still pending)."""

    eid: str
    leaf_hash: bytes
    leaf: Leaf
    index: int | None
    erased: bool
    checkpoint: Checkpoint | None


def _malformed(what: str) -> VerificationError:
    return VerificationError(f"malformed answer from the log: {what}")


class ScimAuditClient(CoreClient):
    """Search a tenant's SCIM events as an auditor, verifying everything.

    ``log_vkey`` is the log's verifier key (``origin+keyid+base64``); the checkpoint origin
    must equal its name. ``http`` may be any ``httpx.Client`` (for tests, a Starlette
    ``TestClient``); requests go to ``url`` + path. Not safe for concurrent use.
    """

    def __init__(
        self,
        url: str,
        token: str,
        log_vkey: str,
        http: httpx.Client | None = None,
        *,
        tenant_ref: bytes | None = None,
        tenant: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        self._core = HTTPCore(url, http, timeout=timeout, headers=auth)
        self.url = self._core.url
        self._verifier = Ed25519Verifier.from_vkey(log_vkey)
        self._tn = tenant_ref
        self._tenant = tenant
        self._tree = CheckpointTracker(self._consistency)
        self._seen: dict[str, Checkpoint] = {}

    # -- transport -----------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        answer = self._core.send("GET", path, params=params, limit=MAX_ANSWER_BYTES)
        if answer.status != 200:
            raise ScimAuditError(answer.status, answer.reason())
        try:
            return answer.json()
        except FormatError:
            raise _malformed("not JSON") from None

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self, note: object) -> Checkpoint:
        """Verify a checkpoint note and its consistency with everything seen before."""
        if type(note) is not str:
            raise _malformed("checkpoint is not a string")
        cp = self._seen.get(note)
        if cp is not None:
            return cp
        try:
            cp, _ = open_checkpoint(note, [self._verifier], origin=self._verifier.name)
        except FormatError as exc:
            raise _malformed(f"checkpoint: {exc}") from None
        self._tree.observe(cp)
        if len(self._seen) > 1024:
            self._seen.clear()
        self._seen[note] = cp
        return cp

    def _consistency(self, old: Checkpoint, new: Checkpoint) -> None:
        if old.size == 0:
            return  # everything extends the empty tree
        try:
            d = self._get("/v1/proof/consistency", {"old_size": old.size, "tree_size": new.size})
        except ScimAuditError as exc:
            if exc.status >= 500:
                raise
            # The log signed both checkpoints; refusing to relate them is a failed proof.
            raise VerificationError(f"the log gives no consistency proof: {exc}") from None
        try:
            proof = [b64decode_strict(h, size=32) for h in d["consistency_proof"]]
        except (KeyError, TypeError, FormatError) as exc:
            raise _malformed(f"consistency proof: {exc}") from None
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)

    # -- tenant ----------------------------------------------------------------------------

    def tenant_ref(self) -> bytes:
        """This tenant's ``tn`` (asked once, unless pinned in the constructor)."""
        if self._tn is None or self._tenant is None:
            d = self._get("/v1/scim/tenant-ref")
            try:
                tn = b64decode_strict(d["tn"], size=16)
                tenant = d["tenant"]
            except (KeyError, TypeError, FormatError) as exc:
                raise _malformed(f"tenant ref: {exc}") from None
            if type(tenant) is not str:
                raise _malformed("tenant is not a string")
            if self._tn is not None and tn != self._tn:
                raise VerificationError("the log reports another tenant ref than the pinned one")
            self._tn = tn
            self._tenant = tenant
        return self._tn

    def tenant(self) -> str:
        """This tenant's name, as the log reports it (asked with :meth:`tenant_ref`)."""
        self.tenant_ref()
        assert self._tenant is not None  # set by tenant_ref
        return self._tenant

    # -- verification ------------------------------------------------------------------------

    def _leaf(self, r: Mapping[str, Any]) -> tuple[bytes, bytes, Leaf]:
        try:
            leaf_bytes = b64decode_strict(r["leaf"])
            lh = b64decode_strict(r["leaf_hash"], size=32)
            leaf = parse_leaf(leaf_bytes)
        except (KeyError, TypeError, FormatError) as exc:
            raise _malformed(f"leaf: {exc}") from None
        if leaf_hash(leaf_bytes) != lh:
            raise VerificationError("leaf does not hash to leaf_hash")
        if leaf.tn != self.tenant_ref():
            raise VerificationError("leaf belongs to another tenant (tn differs)")
        return leaf_bytes, lh, leaf

    def _inclusion(self, r: Mapping[str, Any], lh: bytes) -> tuple[int, Checkpoint]:
        cp = self._checkpoint(r.get("checkpoint"))
        try:
            index = r["index"]
            size = r["tree_size"]
            proof = [b64decode_strict(h, size=32) for h in r["inclusion_proof"]]
        except (KeyError, TypeError, FormatError) as exc:
            raise _malformed(f"inclusion proof: {exc}") from None
        if type(index) is not int or type(size) is not int or size != cp.size:
            raise VerificationError("tree_size does not match the checkpoint")
        verify_inclusion(index, cp.size, lh, proof, cp.root_hash)
        return index, cp

    @staticmethod
    def _actor(ev: Event, r: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, bool]:
        """Who acted (module docstring): the verified actor, and whether it is unlinked."""
        stored = ev["actor"]
        got = r.get("actor")
        if "pid" not in stored:
            if got is not None:
                raise _malformed("a sealed actor for an event that names its actor")
            return stored, False
        if got == {"unlinked": True}:
            return None, True
        try:
            if not isinstance(got, dict) or set(got) != {"actor", "nonce"}:
                raise TypeError("not {actor, nonce}")
            actor = actor_from_json(got["actor"])
            an = b64decode_strict(got["nonce"], size=32)
        except (TypeError, ValueError) as exc:
            raise _malformed(f"actor: {exc}") from None
        if actor_seal_digest(an, actor) != stored["sd"] or actor["kind"] != stored["kind"]:
            raise VerificationError("the sealed actor does not open the event's actor.sd")
        return actor, False

    def _check_filters(
        self,
        ev: Event | None,
        leaf: Leaf,
        filters: Mapping[str, Any],
        effect: Mapping[str, Any] | None = None,
        actor: Mapping[str, Any] | None = None,
    ) -> None:
        since, until = filters.get("since"), filters.get("until")
        if (since is not None and leaf.ts < since) or (until is not None and leaf.ts >= until):
            raise VerificationError("result outside the requested time range")
        if ev is None:
            return
        if ev["tenant"] != self._tenant:
            raise VerificationError("event belongs to another tenant")
        actual = {
            "rid": ev.get("rid"),
            "xid": ev.get("xid"),
            "actor": None if actor is None else actor_handle(actor),
            "outcome": ev["outcome"],
            "req": ev["corr"]["req"],
        }
        for name, value in actual.items():
            if filters.get(name) is not None and filters[name] != value:
                raise VerificationError(f"result does not match the {name} filter")
        action = filters.get("action")
        derived = [a["a"] for a in (effect or {}).get("acts", ())]
        if action is not None and action not in [a["a"] for a in ev.get("acts", ())] + derived:
            raise VerificationError("result does not match the action filter")

    def _result(self, r: object, filters: Mapping[str, Any]) -> AuditedEvent:
        if not isinstance(r, dict):
            raise _malformed("result is not an object")
        _, lh, leaf = self._leaf(r)
        index, cp = self._inclusion(r, lh)
        if r.get("erased") is True:
            if "event" in r or "nonce" in r or "actor" in r:
                raise _malformed("an erased result with a body")
            self._check_filters(None, leaf, filters)
            return AuditedEvent(index, lh, leaf, cp.size, cp, None, None, r["checkpoint"])
        try:
            ev = event_from_json(json.dumps(r["event"]))
            nonce = b64decode_strict(r["nonce"], size=NONCE_SIZE)
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(f"event: {exc}") from None
        verify_commitment(leaf, ev, nonce)  # SCIM.md §4.3 step 4
        effect = r.get("effect")
        if effect is not None and (
            not isinstance(effect, dict)
            or not isinstance(effect.get("acts", []), list)
            or not all(
                isinstance(a, dict) and isinstance(a.get("a"), str) for a in effect.get("acts", [])
            )
        ):
            raise _malformed("effect")
        try:
            attested = verify_effect(leaf, effect, nonce)  # the leaf's e, like c above
        except FormatError as exc:  # an effect outside the deterministic data model
            raise _malformed(f"effect: {exc}") from None
        actor, unlinked = self._actor(ev, r)
        self._check_filters(ev, leaf, filters, effect, actor)
        return AuditedEvent(
            index,
            lh,
            leaf,
            cp.size,
            cp,
            ev,
            nonce,
            r["checkpoint"],
            effect,
            attested,
            actor,
            unlinked,
        )

    # -- API -------------------------------------------------------------------------------

    def search(
        self,
        *,
        rid: str | None = None,
        req: str | None = None,
        xid: str | None = None,
        ref: str | None = None,
        ref_rt: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SearchPage:
        """One verified page of ``GET /v1/scim/events`` (all filters must match)."""
        filters: dict[str, Any] = {
            "rid": rid,
            "req": req,
            "xid": xid,
            "ref": ref,
            "ref_rt": ref_rt,
            "actor": actor,
            "action": action,
            "outcome": outcome,
            "since": since,
            "until": until,
        }
        params: dict[str, str | int] = {k: v for k, v in filters.items() if v is not None}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        self.tenant_ref()
        d = self._get("/v1/scim/events", params)
        if not isinstance(d, dict) or not isinstance(d.get("results"), list):
            raise _malformed("no results list")
        page_cp = self._checkpoint(d.get("checkpoint"))
        if limit is not None and len(d["results"]) > limit:
            raise VerificationError(f"the log answered {len(d['results'])} results, asked {limit}")
        results = [self._result(r, filters) for r in d["results"]]
        nxt = d.get("next")
        if nxt is not None and type(nxt) is not str:
            raise _malformed("next cursor is not a string")
        access = d.get("access")
        if not isinstance(access, dict):
            raise _malformed("no access record")
        return SearchPage(results, nxt, access, page_cp.size)

    def search_all(self, **filters: Any) -> Iterator[AuditedEvent]:
        """Every verified result of :meth:`search_pages`, in log order, each once."""
        for page in self.search_pages(**filters):
            yield from page.results

    def search_pages(self, **filters: Any) -> Iterator[SearchPage]:
        """Every verified page, following the cursor (each page is one logged access).

        Held to the log's promise of a listing: results in log order (by log time, the
        events of one millisecond by index), so each once, and a cursor that moves on; a
        log going round (its ``next`` the cursor of a page already read, or pages repeating
        results already given) ends the listing in a :class:`VerificationError` instead of
        yielding the same events for ever (red team 22). The cursor is read as the log
        makes it (:func:`_cursor`, red team 25): a full page's names its last result (else
        results were skipped), one ending a millisecond names a later millisecond than any
        before it, and there are no more of those than the log's events could make (each
        ends a millisecond in which the log read at least one event's record; the access
        records of this listing's own pages not counted): empty pages under ever-fresh
        cursors went on for ever. A log that keeps growing faster than that is listed for
        as long as it grows, as its results would be. :meth:`search_all` and ``tlog
        stream`` both read their pages here (the stream followed the cursor on its own, and
        went round for ever on red team 22's log)."""
        cursor: str | None = None
        last: tuple[int, float] | None = None  # the last result given, or millisecond ended
        ends = 0  # pages ended at a millisecond's end
        pages = 0  # pages read: each appended an access record the log may count
        while True:
            page = self.search(**filters, cursor=cursor)
            pages += 1
            for r in page.results:
                at = (r.leaf.ts, r.index)
                if last is not None and at <= last:
                    raise VerificationError(
                        f"the log's listing is out of log order: index {r.index} (time "
                        f"{r.leaf.ts}) after {_position(last)}"
                    )
                last = at
            yield page
            if page.next is None:
                return
            ts, lh = _cursor(page.next)
            if lh != _NEXT_MS:
                end = page.results[-1] if page.results else None
                if end is None or (end.leaf.ts, end.leaf_hash) != (ts, lh):
                    raise VerificationError("the log's next cursor is not its page's last result")
            else:
                if last is not None and (ts, _AFTER) <= last:
                    raise VerificationError(
                        f"the log's next cursor ends millisecond {ts}, not after "
                        f"{_position(last)}: a page already read"
                    )
                last = (ts, _AFTER)
                ends += 1
                if ends > 2 * max(0, page.tree_size - pages) + _END_SLACK:
                    raise VerificationError(
                        f"the log named {ends} millisecond ends, more than its "
                        f"{page.tree_size} events (this listing's {pages} access records "
                        "among them) could make"
                    )
            cursor = page.next

    def receipts(self, *, eid: str | None = None, req: str | None = None) -> list[Receipt]:
        """Verified receipts by event id or request id (auditor reads are logged)."""
        if (eid is None) == (req is None):
            raise ValueError("give exactly one of eid or req")
        self.tenant_ref()
        params = {"eid": eid} if eid is not None else {"req": req or ""}
        d = self._get("/v1/scim/receipts", params)
        if not isinstance(d, dict) or not isinstance(d.get("receipts"), list):
            raise _malformed("no receipts list")
        out = []
        for r in d["receipts"]:
            if not isinstance(r, dict) or type(r.get("eid")) is not str:
                raise _malformed("receipt")
            if eid is not None and r["eid"] != eid:
                raise VerificationError("receipt for another eid")
            _, lh, leaf = self._leaf(r)
            if r.get("pending") is True:
                out.append(Receipt(r["eid"], lh, leaf, None, bool(r.get("erased")), None))
                continue
            index, cp = self._inclusion(r, lh)
            try:
                TlogProof.parse(r["tlog_proof"]).verify(self._verifier, leaf=lh)
            except (KeyError, TypeError, FormatError) as exc:
                raise _malformed(f"tlog_proof: {exc}") from None
            out.append(Receipt(r["eid"], lh, leaf, index, r.get("erased") is True, cp))
        return out
