"""Re-seal, offline, the actors of events stored before actors were pseudonymised
(``tlog reseal-actors``; docs/design.md, "Actors"; docs/operations.md).

Such an event's envelope holds its actor as sent (an admin's id, name, token digest) under
the *event subject's* DEK, and the search index keys it by ``HMAC(ik, "a" ‖ actor.id)``:
erasing the admin reached neither. The leaf's commitment ``c`` covers that event, actor
included, and the leaf is public: it cannot change. So the record is rewritten, the leaf
and every public byte left as they are:

* the envelope's event keeps ``{kind, pid, sd}`` in place of the actor (as new events do);
  the actor as sent and the nonce of ``sd`` are sealed under the actor's own DEK (subject
  (tenant, User, its handle), the month of the event) as ``"a"``; ``"s": true`` says that
  ``c`` covers the event with that sealed actor in place, not the stored one;
* the index record of the clear id is replaced by the pid's (``actor=`` finds it the same).

Reading (:meth:`tlog.scim.search.Search`): while the actor lives, the event reads exactly as
before (the actor put back in place, ``c`` verifies, no ``actor`` key in the answer). Once
the actor is erased nothing of the event can be verified any more (``c`` covers who acted),
and it reads as erased. A retry is compared with ``c`` as before.

Idempotent (a record already in either pseudonymous form is left alone) and resumable
(batches of records, each committed on its own; a run started again passes over what is
done). Needs the server stopped, as ``reapply-erasures`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.scim.cbor import EventFormatError, dumps_det, loads_det
from client.scim.event import (
    ACTOR_NONCE_SIZE,
    ACTOR_SUBJECT_RT,
    actor_cbor,
    actor_handle,
    actor_seal_digest,
    validate_event,
)
from client.scim.leaf import pid as make_pid
from tlog.backend import StorageError
from tlog.scim import store
from tlog.scim.keys import RandomPool, SubjectId, TenantKeys, seal_actor, seal_envelope
from tlog.scim.search import FILTERS, actor_condition
from tlog.scim.store import Envelope, Overlay, decode_envelope

if TYPE_CHECKING:
    from tlog.scim.service import ScimService

__all__ = ["ResealResult", "reseal_actors"]

_ACTOR_FIELD = dict(FILTERS)["actor"]
SYSTEM_PREFIX = "tlog."


@dataclass
class ResealResult:
    examined: int = 0  # envelopes read (tombstones included)
    resealed: int = 0  # rewritten now
    batches: int = 0


def _old_cond(tk: TenantKeys, actor: dict[str, Any]) -> bytes | None:
    """The index condition the old staging wrote for a clear actor (its id only)."""
    aid = actor.get("id")
    if type(aid) is not str:
        return None
    return _ACTOR_FIELD + tk.index_hash(_ACTOR_FIELD, aid.encode())


def _reseal_one(
    svc: ScimService,
    tx: Overlay,
    tk: TenantKeys,
    lh: bytes,
    env: Envelope,
    now: int,
    rand: Callable[[int], bytes],
) -> bool:
    keys = svc.keys
    dek = keys.dek(tx, tk, env.kid, env.epoch)
    if dek is None:
        return False  # shredded or expired: nothing readable left to re-seal
    try:
        body = loads_det(AESGCM(dek).decrypt(env.iv, env.ct, lh))
        if not isinstance(body, dict):
            raise TypeError("body")
        if "a" in body:
            return False  # pseudonymous already (stored so, or re-sealed before)
        ev = validate_event(body["b"])
    except (InvalidTag, EventFormatError, KeyError, TypeError):
        raise StorageError(f"SCIM envelope {lh.hex()} does not open to an event") from None
    actor = ev["actor"]
    handle = actor_handle(actor)
    if ev["rt"].startswith(SYSTEM_PREFIX) or "pid" in actor or handle is None:
        return False  # the log's own events, or an actor that names no one
    sk = keys.subject_or_create(tx, tk, SubjectId(ACTOR_SUBJECT_RT, "rid", handle), now, rand)
    adek = keys.dek_or_create(tx, tk, sk.kid, env.epoch, rand, new=sk.created)
    pid = make_pid(keys.pseudonym_key(tk, sk), handle)
    an = rand(ACTOR_NONCE_SIZE)
    sent = actor_cbor(actor)
    sd = actor_seal_digest(an, sent)
    stored = {**ev, "actor": {"kind": actor["kind"], "pid": pid, "sd": sd}}
    new_body = {
        **body,
        "a": seal_actor(AESGCM(adek), sk.kid, env.epoch, lh, sent, an, rand),
        "b": stored,
        "s": True,
    }
    iv, ct = seal_envelope(AESGCM(dek), lh, dumps_det(new_body), rand)
    new_cond = actor_condition(tk, pid)
    old_cond = _old_cond(tk, actor)
    tail = store.ts_tail(env.ts, lh)
    ix = [c for c in env.ix if c != old_cond and c != new_cond]
    if old_cond is not None and old_cond in env.ix:
        tx.delete(store.index_prefix(tk.tn, old_cond) + tail)
    ix.append(new_cond)
    tx.put(store.index_prefix(tk.tn, new_cond) + tail, b"")
    tx.put(
        store.envelope_key(lh),
        store.encode_envelope(env.tn, env.eid, env.ts, env.kid, env.epoch, iv, ct, ix),
    )
    return True


def reseal_actors(
    svc: ScimService,
    *,
    batch: int = 500,
    stop_after: int | None = None,
    progress: Callable[[ResealResult], None] | None = None,
) -> ResealResult:
    """Re-seal every stored event whose actor is still in clear (module docstring), in
    transactions of at most ``batch`` envelopes. ``stop_after``: stop after that many
    batches (tests: an interrupted run)."""
    prefix = store.envelope_key(b"")
    out = ResealResult()
    start: bytes | None = None
    tenants: dict[bytes, TenantKeys] = {}
    while stop_after is None or out.batches < stop_after:

        def stage(tx: Overlay, start: bytes | None = start) -> tuple[bytes | None, int, int]:
            tenants.clear()  # read again in each transaction (no rotation runs meanwhile)
            rand = RandomPool()
            now = svc.log_time()
            items = list(itertools.islice(tx.rv.aux_range(prefix, start), batch))
            done = 0
            for key, raw in items:
                env = decode_envelope(raw)
                if not isinstance(env, Envelope):
                    continue
                tk = tenants.get(env.tn)
                if tk is None:
                    traw = tx.get(store.tenant_key(env.tn))
                    if traw is None:
                        raise StorageError("SCIM envelope of a tenant without keys")
                    tk = tenants[env.tn] = svc.keys._tenant_keys(env.tn, traw)
                if _reseal_one(svc, tx, tk, key[len(prefix) :], env, now, rand):
                    done += 1
            return (items[-1][0] if items else None), len(items), done

        last, seen, done = svc.write(stage)
        out.batches += 1
        out.examined += seen
        out.resealed += done
        if progress is not None:
            progress(out)
        if last is None or seen < batch:
            break
        start = last + b"\x00"
    return out
