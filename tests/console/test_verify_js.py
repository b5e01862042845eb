"""The page's verification code (tlog/ui/static/verify.js), run inside Chromium, against the
Python reference implementations: RFC 6962 proofs from tests/formats/oracle.py for every
(index, size) and (old, new) pair of small trees, deterministic CBOR and commitments of
events built to hit every encoding boundary, and signed notes and cosignatures. Each
altered input must be refused."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.note import Ed25519Signer, sign_note
from client.scim import event_to_json, new_event
from client.scim.cbor import dumps_det
from client.scim.leaf import commitment, effect_commitment, make_leaf
from tests.formats import oracle

from .conftest import Live

pytestmark = pytest.mark.slow

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731

RUNNER = """async (v) => {
  const m = await import("/ui/verify.js");
  const d = (s) => m.b64decode(s);
  const fails = [];
  const throws = async (what, f) => {
    try { await f(); fails.push("accepted " + what); } catch (e) {
      if (!(e instanceof m.VerificationError)) fails.push(what + ": " + e);
    }
  };
  for (const t of v.inclusion) {
    try { await m.verifyInclusion(t.i, t.n, d(t.leaf), t.proof.map(d), d(t.root)); }
    catch (e) { fails.push(`inclusion ${t.i}/${t.n}: ${e.message}`); }
    if (t.proof.length) {
      const bad = t.proof.map(d); bad[bad.length - 1][0] ^= 1;
      await throws(`flipped inclusion ${t.i}/${t.n}`,
        () => m.verifyInclusion(t.i, t.n, d(t.leaf), bad, d(t.root)));
    }
    await throws(`inclusion at the wrong index ${t.i}/${t.n}`,
      () => m.verifyInclusion((t.i + 1) % (t.n + 1), t.n, d(t.leaf), t.proof.map(d), d(t.root)));
  }
  for (const t of v.consistency) {
    try { await m.verifyConsistency(t.m, t.n, d(t.old), d(t.new), t.proof.map(d)); }
    catch (e) { fails.push(`consistency ${t.m}->${t.n}: ${e.message}`); }
    if (t.proof.length) {
      const bad = t.proof.map(d); bad[0][31] ^= 1;
      await throws(`flipped consistency ${t.m}->${t.n}`,
        () => m.verifyConsistency(t.m, t.n, d(t.old), d(t.new), bad));
    }
    if (t.m > 0 && t.m < t.n) {
      await throws(`consistency with a wrong old root ${t.m}->${t.n}`,
        () => m.verifyConsistency(t.m, t.n, d(t.new), d(t.new), t.proof.map(d)));
    }
  }
  for (const t of v.cbor) {
    const got = m.b64encode(m.cborEncode(m.eventFromJson(JSON.parse(t.json))));
    if (got !== t.cbor) fails.push("cbor of " + t.json.slice(0, 80));
    const leaf = await m.parseLeaf(d(t.leaf));
    try { await m.verifyCommitment(leaf, JSON.parse(t.json), d(t.nonce)); }
    catch (e) { fails.push("commitment: " + e.message); }
    const other = JSON.parse(t.json);
    other.eid = other.eid.replace(/.$/, (c) => c === "0" ? "1" : "0");
    await throws("a changed body", () => m.verifyCommitment(leaf, other, d(t.nonce)));
    if (t.effect) {
      const eff = JSON.parse(t.effect);
      if (await m.verifyEffect(leaf, eff, d(t.nonce)) !== true) fails.push("effect not attested");
      const lie = JSON.parse(t.effect); lie.acts[0].a = "user.update";
      await throws("a changed effect", () => m.verifyEffect(leaf, lie, d(t.nonce)));
      await throws("a withheld effect", () => m.verifyEffect(leaf, null, d(t.nonce)));
    } else if (await m.verifyEffect(leaf, null, d(t.nonce)) !== false) {
      fails.push("a leaf without e attested an effect");
    }
  }
  const key = await m.parseVkey(v.note.vkey);
  const cp = await m.openCheckpoint(v.note.note, key);
  if (cp.size !== v.note.size) fails.push("checkpoint size");
  const pol = await m.parsePolicy(v.note.policy);
  const w = await m.checkCosignatures(cp, pol);
  if (!w.met || w.witnesses.length !== 2) fails.push("cosignatures: " + JSON.stringify(w));
  const alt = v.note.note.replace(/\\n(\\d+)\\n/, (_, s) => "\\n" + (Number(s) + 1) + "\\n");
  await throws("a note with a changed size", () => m.openCheckpoint(alt, key));
  const badCosig = v.note.note.replace(v.note.cosig, v.note.cosig_bad);
  await throws("a bad cosignature",
    async () => m.checkCosignatures(await m.openCheckpoint(badCosig, key), pol));
  const wrongId = v.note.vkey.replace(/\\+[0-9a-f]{8}\\+/, "+00000000+");
  await throws("a vkey with a wrong key id", () => m.parseVkey(wrongId));
  await throws("URL-safe base64", async () => m.b64decode("-_-_"));
  await throws("non-canonical base64", async () => m.b64decode("QR=="));
  return fails;
}"""


def _inclusion_vectors(max_n: int) -> list[dict[str, Any]]:
    out = []
    for n in range(1, max_n + 1):
        d = [f"entry {i}".encode() for i in range(n)]
        root = oracle.mth(d)
        for i in range(n):
            out.append(
                {
                    "i": i,
                    "n": n,
                    "leaf": B64(oracle.leaf_hash(d[i])),
                    "proof": [B64(h) for h in oracle.path(i, d)],
                    "root": B64(root),
                }
            )
    return out


def _consistency_vectors(max_n: int) -> list[dict[str, Any]]:
    out = []
    d = [f"entry {i}".encode() for i in range(max_n)]
    for n in range(1, max_n + 1):
        for m in range(1, n + 1):
            out.append(
                {
                    "m": m,
                    "n": n,
                    "old": B64(oracle.mth(d[:m])),
                    "new": B64(oracle.mth(d[:n])),
                    "proof": [B64(h) for h in oracle.proof(m, d[:n])],
                }
            )
    return out


def _events() -> list[dict[str, Any]]:
    x = {
        "i": [
            0,
            23,
            24,
            255,
            256,
            65535,
            65536,
            2**32 - 1,
            2**32,
            2**53 - 1,
            -1,
            -24,
            -25,
            -256,
            -257,
            -(2**32),
            -(2**53 - 1),
        ],
        "s": ["", "a" * 23, "a" * 24, "b" * 255, "c" * 256, "é" * 300, "d" * 16384],
        "keys": {"b": 1, "aa": 2, "é": 3, "z" * 24: 4, "A": 5, "ä": 6, "😀": 7, "a": 8},
        "deep": [[[{"x": [True, False, None]}]]],
    }
    evs = [
        new_event(
            tenant="acme",
            sp={"id": "sp", "base": "https://sp.example/scim/v2"},
            op="patch",
            rt="User",
            rid="u-1",
            xid="ü@example.org",
            actor={
                "kind": "oauth_client",
                "id": "c",
                "tok_d": bytes(range(32)),
                "x5t_s256": bytes(range(32, 64)),
                "scope": ["a", "b"],
            },
            corr={"req": "r", "bulk_req": "b", "seq": 70000},
            req={
                "m": "PATCH",
                "p": "/Users/u-1",
                "dig": hashlib.sha256(b"x").digest(),
                "len": 2**40,
            },
            res={"st": 200, "etag": 'W/"1"'},
            outcome="success",
            patch=[{"op": "replace", "path": "name.givenName", "v_d": bytes(32)}],
            mods=[{"attr": "name.givenName", "old_d": bytes(32), "new_d": b"\xff" * 32}],
            refs=[{"rt": "User", "pid": bytes(16)}, {"rt": "Group", "pid": b"\x80" * 16}],
            src={"ip": "2001:db8::1", "ua": "tab\there\nnewline"},
            x=x,
            dur=12,
        ),
        new_event(
            tenant="acme",
            sp="sp",
            op="create",
            rt="User",
            actor={"kind": "anonymous"},
            corr="req",
            req={"m": "POST", "p": "/Users", "dig": bytes(32), "len": 0},
            res=409,
            outcome="failure",
            err={"scim_type": "uniqueness", "reason": "dup"},
        ),
    ]
    # The first event with a derived effect committed in its leaf (e), as the log does it.
    effect = {
        "basis": "state",
        "acts": [{"a": "user.activate", "ocsf": [3001, 2]}],
        "changes": [{"attr": "active", "old": False, "new": True}],
        "refs": [{"rt": "User", "pid": "AAAAAAAAAAAAAAAAAAAAAA==", "op": "add", "attr": "manager"}],
        "noop": [{"attr": "é", "op": "remove", "n": 70000}],
    }
    out = []
    for i, ev in enumerate(evs):
        nonce = bytes([i + 7]) * 32
        eff = effect if i == 0 else None
        e = None if eff is None else effect_commitment(nonce, eff)
        leaf = make_leaf(1_717_200_000_000 + i, bytes(16), commitment(nonce, ev), e)
        out.append(
            {
                "json": event_to_json(ev),
                "cbor": B64(dumps_det(ev)),
                "nonce": B64(nonce),
                "leaf": B64(leaf),
                "effect": None if eff is None else json.dumps(eff),
            }
        )
    return out


def _note() -> dict[str, Any]:
    origin = "vectors.example/log"
    log = Ed25519Signer(origin, bytes(range(32)))
    ws = [CosignatureSigner(f"w.example/{i}", bytes([i + 40]) * 32) for i in range(3)]
    text = f"{origin}\n12345\n{B64(hashlib.sha256(b'root').digest())}\n"
    note = sign_note(text, [log])
    cosigs = [w.cosign(text, 1_700_000_000 + i).line() for i, w in enumerate(ws[:2])]
    note += "".join(cosigs)
    bad_raw = bytearray(base64.b64decode(cosigs[0].split(" ")[-1].strip()))
    bad_raw[-1] ^= 1
    bad = " ".join(cosigs[0].split(" ")[:-1]) + " " + B64(bytes(bad_raw)) + "\n"
    policy = (
        "\n".join(
            [
                f"log {log.verifier().vkey()}",
                *(f"witness w{i} {w.verifier().vkey()}" for i, w in enumerate(ws)),
                "group g 2 w0 w1 w2",
                "quorum g",
            ]
        )
        + "\n"
    )
    return {
        "vkey": log.verifier().vkey(),
        "note": note,
        "size": 12345,
        "policy": policy,
        "cosig": cosigs[0],
        "cosig_bad": bad,
    }


def test_verify_js_matches_the_python_reference(browser: Any, live: Live) -> None:
    vectors = {
        "inclusion": _inclusion_vectors(33),
        "consistency": _consistency_vectors(33),
        "cbor": _events(),
        "note": _note(),
    }
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(f"{live.url}/ui/")
        page.wait_for_selector("body[data-ready='1']")
        fails = page.evaluate(RUNNER, json.loads(json.dumps(vectors)))
    finally:
        ctx.close()
    assert fails == []
    assert len(vectors["inclusion"]) == 33 * 34 // 2 and len(vectors["consistency"]) == 561
