"""A group's members as the SP holds them and as the log judges them: the events an adapter
makes of SCIM requests (references by pseudonym), the log's judging of one event
(``ScimService._effect``), a model of the SP applying member operations in order, and a
request cut into the linked parts of a split (shared by the member tests)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from client.scim import new_event
from client.scim.actions import parse_request
from tlog.scim.effects import classify, mark_members_known, members_known

GEN = "0123456789abcdef"
POOL = ("u1", "u2", "u3", "u4")
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def pid_of(_rt: str, rid: str) -> bytes:
    return hashlib.sha256(rid.encode()).digest()[:16]


def scim_event(rt: str, rid: str, op: str, body: Any, req: str) -> dict[str, Any]:
    """The event an adapter makes of a request on ``rt`` ``rid`` (refs by pseudonym)."""
    raw = b"" if op == "delete" else json.dumps(body).encode()  # a DELETE has no body
    method = {"create": "POST", "patch": "PATCH", "delete": "DELETE"}.get(op, "PUT")
    intent = parse_request(op, rt, raw, ref_pid=pid_of)
    path = f"/{rt}s/{rid}"
    ev: dict[str, Any] = new_event(
        tenant="acme", sp="app-1", op=op, rt=rt, rid=rid,
        actor={"kind": "user", "id": "admin-1"}, corr=req,
        req={"m": method, "p": path,
             "dig": bytes(32), "len": 10},
        res=200, outcome="success", patch=intent.patch, mods=intent.mods, refs=intent.refs,
        acts=intent.acts,
    )  # fmt: skip
    return ev


def group_event(op: str, body: Any, req: str) -> dict[str, Any]:
    return scim_event("Group", "g-1", op, body, req)


def judge(state: Any, ev: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """What the service does with one event (ScimService._effect), one KEK generation."""
    effect, new, _ = classify(members_known(state, GEN), ev)
    assert effect is not None
    mark_members_known(new, GEN)
    return effect, new


def changes(effect: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((r["op"], r["pid"]) for r in effect.get("refs", ()) if r["attr"] == "members")


def members(rids: set[str]) -> list[str]:
    return sorted(b64(pid_of("User", r)) for r in rids)


def patch_body(ops: list[tuple[str, list[str]]]) -> dict[str, Any]:
    return {
        "schemas": [PATCH_OP],
        "Operations": [
            {"op": op, "path": "members", "value": [{"value": r} for r in rids]} for op, rids in ops
        ],
    }


CLEARS = ("clear-remove", "clear-replace")  # remove without a value, replace with none
# A PATCH's member operations, in order: adds, removes, replaces of 1-3 members, clears.
MEMBER_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["add", "remove", "replace"]),
            st.lists(st.sampled_from(POOL), min_size=1, max_size=3),
        ),
        st.tuples(st.sampled_from(CLEARS), st.just([])),
    ),
    min_size=1,
    max_size=5,
)


def patch_ops(ops: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """A PatchOp of member operations and clears, in order."""
    out = []
    for op, rids in ops:
        if op == "clear-remove":
            out.append({"op": "remove", "path": "members"})
        elif op == "clear-replace":
            out.append({"op": "replace", "path": "members", "value": []})
        else:
            out.append({"op": op, "path": "members", "value": [{"value": r} for r in rids]})
    return {"schemas": [PATCH_OP], "Operations": out}


def sp_apply(sp: set[str], ops: list[tuple[str, list[str]]]) -> set[str]:
    """What the SP's members are after ``ops``, applied one at a time (RFC 7644 §3.5.2)."""
    for op, rids in ops:
        if op in CLEARS:
            sp = set()
        elif op == "replace":
            sp = set(rids)
        else:
            sp = sp | set(rids) if op == "add" else sp - set(rids)
    return sp


def user_event(op: str, body: Any, req: str) -> dict[str, Any]:
    return scim_event("User", "u-9", op, body, req)


def split_items(whole: dict[str, Any]) -> list[tuple[str, Any]]:
    """``whole``'s ``patch``, ``mods`` and ``refs`` items in that order (the split's)."""
    return [
        *(("patch", p) for p in whole.get("patch", ())),
        *(("mods", m) for m in whole.get("mods", ())),
        *(("refs", r) for r in whole.get("refs", ())),
    ]


def split_parts(whole: dict[str, Any], cuts: list[int]) -> tuple[list[dict[str, Any]], list[int]]:
    """``whole`` as the linked parts of a request too large for one event
    (client.adapters.exchange's split), cut before each of ``cuts`` that falls inside its
    items: the parts in order, and the cuts used."""
    items = split_items(whole)
    bounds = sorted({c for c in cuts if 0 < c < len(items)})
    chunks = [items[a:b] for a, b in itertools.pairwise([0, *bounds, len(items)])]
    out = []
    for n, chunk in enumerate(chunks):
        ev = {k: v for k, v in whole.items() if k not in ("patch", "mods", "refs")}
        for kind, item in chunk:
            ev.setdefault(kind, []).append(item)
        ev["x"] = {"part": n, "parts": len(chunks)}
        out.append(ev)
    return out, bounds


def judge_in_parts(
    state: Any, whole: dict[str, Any], cuts: list[int]
) -> tuple[Any, list[tuple[str, Any]], list[int]]:
    """Judge ``whole`` as the linked parts of a request too large for one event
    (:func:`split_parts`), each part judged as it comes. Returns the state after the last
    part, the items and the cuts used."""
    parts, bounds = split_parts(whole, cuts)
    for ev in parts:
        _, state = judge(state, ev)
    return state, split_items(whole), bounds


# --- faith19's forms: each member operation by its path or path-less, and two SPs ---------

PATHLESS_CLEAR = {"op": "replace", "value": {"members": []}}
PATH_CLEAR = {"op": "replace", "path": "members", "value": []}
# A member operation of a PATCH and what two real SPs do with it (faith19's trial, both SPs
# behind the proxy: tests/adapters/test_effects_forms_sp.py): the path form alike on both,
# the path-less one read two ways.
FORM_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["add", "remove", "replace", "preplace"]),
            st.lists(st.sampled_from(POOL), min_size=1, max_size=3),
        ),
        st.tuples(st.sampled_from(["clear", "pclear"]), st.just([])),
    ),
    min_size=1,
    max_size=5,
)


def form_op(op: str, rids: list[str]) -> dict[str, Any]:
    """The PATCH operation of a :data:`FORM_OPS` step."""
    value = [{"value": r} for r in rids]
    return {
        "clear": PATH_CLEAR,
        "pclear": PATHLESS_CLEAR,
        "preplace": {"op": "replace", "value": {"members": value}},
    }.get(op) or {"op": op, "path": "members", "value": value}


def sp_forms(start: set[str], ops: list[tuple[str, list[str]]], *, merges: bool) -> set[str]:
    """The members after :data:`FORM_OPS` ``ops`` on scim2-server (``merges=False``: the
    path-less form as the path one) or SCIMMY (``merges``: a path-less clear keeps them, a
    path-less replace adds to them)."""
    sp = set(start)
    for op, rids in ops:
        if op == "pclear":
            sp = sp if merges else set()
        elif op == "preplace":
            sp = sp | set(rids) if merges else set(rids)
        else:  # the path form: as every SP applies it
            sp = sp_apply(sp, [("clear-replace" if op == "clear" else op, rids)])
    return sp


def group_event_of(
    tenant: str, op: str, body: Any, req: str, rid: str, pids: dict[str, bytes]
) -> dict[str, Any]:
    """The event an adapter makes of a request on Group ``rid`` of ``tenant``, its
    references by the pseudonyms the log gave (``pids``: id -> pid), for a served log."""
    intent = parse_request(op, "Group", json.dumps(body).encode(), ref_pid=lambda _rt, r: pids[r])
    ev: dict[str, Any] = new_event(
        tenant=tenant, sp="app-1", op=op, rt="Group", rid=rid,
        actor={"kind": "user", "id": "admin-carol-1234"}, corr=req,
        req={"m": "POST" if op == "create" else "PATCH", "p": f"/Groups/{rid}",
             "dig": bytes(32), "len": 10},
        res=200, outcome="success", patch=intent.patch, mods=intent.mods, refs=intent.refs,
        acts=intent.acts,
    )  # fmt: skip
    return ev


# --- red team 20's role and entitlement programs, shared with red team 24's ----------------

ROLE_VALUES = st.lists(st.sampled_from("abc"), max_size=2).map(lambda v: sorted(set(v)))
ROLE_STEP = st.one_of(
    st.tuples(st.sampled_from(["add", "remove"]), ROLE_VALUES.filter(bool)),
    st.tuples(st.just("clear"), st.just([])),
    st.tuples(st.sampled_from(["path-replace", "pathless-replace"]), ROLE_VALUES),
)


def role_operation(key: str, kind: str, vals: list[str]) -> dict[str, Any]:
    """The PATCH operation of a step of :data:`ROLE_STEP` on the set ``key``."""
    items = [{"value": v} for v in vals]
    if kind == "clear":
        return {"op": "remove", "path": key}
    if kind == "pathless-replace":
        return {"op": "replace", "value": {key: items}}
    return {"op": kind.removeprefix("path-"), "path": key, "value": items}


def role_sp(held: set[str], kind: str, vals: list[str], merges: bool) -> set[str]:
    """What an SP holds after a step of :data:`ROLE_STEP`: one that ``merges`` a path-less
    replace (SCIMMY) or replaces on it (scim2-server)."""
    if kind == "add":
        return held | set(vals)
    if kind == "remove":
        return held - set(vals)
    if kind == "clear":
        return set()
    if kind == "pathless-replace" and merges:
        return held | set(vals)
    return set(vals)


ROLE_VERBS = {
    "roles": ("user.role.grant", "user.role.revoke"),
    "entitlements": ("user.entitlement.grant", "user.entitlement.revoke"),
}


def role_write(
    key: str, kind: str, arg: Any, n: int, merging: set[str], replacing: set[str]
) -> tuple[dict[str, Any], set[str], set[str]]:
    """The event of a PATCH (``arg``: steps of :data:`ROLE_STEP`) or a PUT (``arg``: the
    set stated, None: left out) of user u9's set ``key``, unanswered, and what the merging
    and the replacing SP hold after it."""
    if kind == "patch":
        for step, vals in arg:
            merging = role_sp(merging, step, vals, True)
            replacing = role_sp(replacing, step, vals, False)
        ops = [role_operation(key, step, vals) for step, vals in arg]
        return (
            user_event("patch", {"schemas": [PATCH_OP], "Operations": ops}, f"r{n}"),
            merging,
            replacing,
        )
    put: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": "u9"}
    if arg is not None:
        put[key] = [{"value": v} for v in arg]
    held = set(arg or ())
    return user_event("replace", put, f"r{n}"), held, set(held)


def check_role_effect(
    key: str, effect: dict[str, Any], state: Any, merging: set[str], replacing: set[str], why: Any
) -> None:
    """No value of ``key`` named granted (a change's ``added`` or a grant act) that either SP
    lacks, none revoked that either holds, unless a change says the set is not known; a set
    the state calls known whole is both SPs'."""
    named = [c for c in effect.get("changes", ()) if c.get("attr") == key]
    if not any(len(c) == 1 for c in named):  # none says "not known"
        added = {v for c in named for v in c.get("added", ())}
        removed = {v for c in named for v in c.get("removed", ())}
        assert all(v in merging and v in replacing for v in added - removed), why
        assert not (removed - added) & (merging | replacing), why
        acts = {a["a"] for a in effect.get("acts", ())}
        grant, revoke = ROLE_VERBS[key]
        assert grant not in acts or added, why
        assert revoke not in acts or removed, why
    if key in state.get("full", ()):
        assert set(state.get(key, ())) == merging == replacing, why


def linked_parts(
    ops: list[tuple[str, list[str]]],
    req: str,
    cuts: list[int],
    eid: Callable[[], str] | None = None,
) -> list[dict[str, Any]]:
    """A PATCH of ``ops`` cut at ``cuts`` into parts as the adapter links them: each its
    own eid (``eid()``, else a random one), later ones naming part 0's (``x.first``,
    faith24)."""
    body = {"schemas": [PATCH_OP], "Operations": [form_op(*o) for o in ops]}
    parts = split_parts(group_event("patch", body, req), cuts)[0]
    for n, ev in enumerate(parts):
        ev["eid"] = eid() if eid is not None else str(uuid.uuid4())
        if n:
            ev["x"]["first"] = parts[0]["eid"]
    return parts


# --- a split request's parts delivered out of line (red team 25's programs, faith25's) ---------


def delivered(parts: list[dict[str, Any]], how: str, rnd: random.Random) -> list[dict[str, Any]]:
    """``parts`` as they reach the log: ``in line``, ``reversed``, one part twice
    (``retry``), a part never coming (``drop``; the last's absence is not seen), or
    ``shuffle``d."""
    n = len(parts)
    i = rnd.randrange(n)
    if how == "reversed":
        return parts[::-1]
    if how == "retry":
        return parts[: i + 1] + [parts[i]] + parts[i + 1 :]
    if how == "drop":  # a part never came (the last's absence is not seen)
        return parts[:i] + parts[i + 1 :] if i < n - 1 else list(parts)
    if how == "shuffle":
        got = list(parts)
        rnd.shuffle(got)
        return got
    return list(parts)


def members_body(rids: set[str]) -> dict[str, Any]:
    """A Group's body (create, PUT) stating the members ``rids``."""
    return {"displayName": "g", "members": [{"value": r} for r in sorted(rids)]}
