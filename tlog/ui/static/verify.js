// Verification primitives for the console, all computed in the browser with WebCrypto:
// RFC 6962/9162 Merkle proofs (SHA-256), C2SP signed notes and checkpoints (Ed25519),
// tlog-cosignature/v1 lines, c2sp.org/tlog-policy quorums, deterministic CBOR (RFC 8949
// §4.2.1) and the SCIM leaf commitment c = HMAC-SHA256(nonce, det_cbor(event)).
// Nothing here trusts the server: every function either returns a verified value or throws
// a VerificationError saying what failed.

export class VerificationError extends Error {
  constructor(message) {
    super(message);
    this.name = "VerificationError";
  }
}

const enc = new TextEncoder();
const subtle = globalThis.crypto.subtle;

// --- bytes and base64 ---------------------------------------------------------------------

export function b64decode(s, size) {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) {
    throw new VerificationError("bad base64");
  }
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (b64encode(out) !== s) throw new VerificationError("non-canonical base64");
  if (size !== undefined && out.length !== size) {
    throw new VerificationError(`decoded value is ${out.length} bytes, want ${size}`);
  }
  return out;
}

export function b64encode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- hashes -------------------------------------------------------------------------------

export async function sha256(data) {
  return new Uint8Array(await subtle.digest("SHA-256", data));
}

export async function hmacSha256(key, msg) {
  const k = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, msg));
}

export async function leafHash(entry) {
  return sha256(concat(Uint8Array.of(0), entry));
}

async function nodeHash(l, r) {
  return sha256(concat(Uint8Array.of(1), l, r));
}

// Sizes and indices are JS numbers (exact below 2^53); bit operations are done with
// arithmetic because JS bitwise operators truncate to 32 bits.
const odd = (x) => x % 2 === 1;
const half = (x) => Math.floor(x / 2);

// RFC 9162 §2.1.3.2.
export async function verifyInclusion(index, size, leaf, proof, root) {
  if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size)) || index < 0 || index >= size) {
    throw new VerificationError(`index ${index} is not below tree size ${size}`);
  }
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) throw new VerificationError("inclusion proof too long");
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new VerificationError("inclusion proof too short");
  if (!equal(r, root)) throw new VerificationError("inclusion proof does not lead to the root");
}

// RFC 9162 §2.1.4.2.
export async function verifyConsistency(m, n, oldRoot, newRoot, proof) {
  if (m > n) throw new VerificationError("old size larger than new size");
  if (m === n) {
    if (proof.length !== 0) throw new VerificationError("non-empty proof for equal sizes");
    if (!equal(oldRoot, newRoot)) throw new VerificationError("same size, different roots");
    return;
  }
  if (m === 0) {
    if (proof.length !== 0) throw new VerificationError("non-empty proof from the empty tree");
    return;
  }
  if (proof.length === 0) throw new VerificationError("empty consistency proof");
  let path = proof;
  if (Number.isInteger(Math.log2(m))) path = [oldRoot, ...proof];
  let fn = m - 1;
  let sn = n - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) throw new VerificationError("consistency proof too long");
    if (odd(fn) || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new VerificationError("consistency proof too short");
  if (!equal(fr, oldRoot)) throw new VerificationError("consistency proof: old root mismatch");
  if (!equal(sr, newRoot)) throw new VerificationError("consistency proof: new root mismatch");
}

// --- signed notes, keys, checkpoints ------------------------------------------------------

export const ALG_ED25519 = 0x01;
export const ALG_COSIGNATURE_V1 = 0x04;
export const ALG_MLDSA44 = 0x06;

export async function keyId(name, alg, pub) {
  const d = await sha256(concat(enc.encode(name + "\n"), Uint8Array.of(alg), pub));
  return ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) >>> 0;
}

// "name+hexkeyid+base64(alg || key)"
export async function parseVkey(vkey) {
  // The name has no "+"; the base64 key may.
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(String(vkey));
  if (!m) throw new VerificationError("malformed verifier key");
  const parts = m.slice(1);
  const raw = b64decode(parts[2]);
  if (raw.length < 2) throw new VerificationError("verifier key too short");
  const alg = raw[0];
  const pub = raw.slice(1);
  const id = await keyId(parts[0], alg, pub);
  if (id !== parseInt(parts[1], 16)) throw new VerificationError("verifier key id mismatch");
  if (alg === ALG_MLDSA44) {
    // WebCrypto has no ML-DSA: such a witness is listed, its cosignatures are not counted.
    return { name: parts[0], alg, id, pub, key: null, vkey, unsupported: "ML-DSA-44" };
  }
  if (pub.length !== 32 || (alg !== ALG_ED25519 && alg !== ALG_COSIGNATURE_V1)) {
    throw new VerificationError("verifier key is not an Ed25519 key");
  }
  const key = await subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  return { name: parts[0], alg, id, pub, key, vkey };
}

export function parseNote(note) {
  if (typeof note !== "string") throw new VerificationError("note is not text");
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) throw new VerificationError("malformed note");
  const text = note.slice(0, cut + 1);
  const sigs = [];
  for (const line of note.slice(cut + 2, -1).split("\n")) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) throw new VerificationError("malformed signature line");
    const raw = b64decode(m[2]);
    if (raw.length < 5) throw new VerificationError("signature too short");
    const id = ((raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]) >>> 0;
    sigs.push({ name: m[1], id, raw: raw.slice(4) });
  }
  if (sigs.length === 0) throw new VerificationError("note has no signatures");
  return { text, sigs };
}

export function parseCheckpoint(text) {
  const lines = text.split("\n");
  if (lines.length < 4 || lines[lines.length - 1] !== "") {
    throw new VerificationError("malformed checkpoint");
  }
  if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new VerificationError("bad checkpoint size");
  const size = Number(lines[1]);
  if (!Number.isSafeInteger(size)) throw new VerificationError("checkpoint size too large");
  return { origin: lines[0], size, root: b64decode(lines[2], 32), text };
}

async function ed25519(key, sig, msg) {
  if (sig.length !== 64) return false;
  return subtle.verify({ name: "Ed25519" }, key, sig, msg);
}

// Verify the log's signature on a checkpoint note; returns the checkpoint with its note.
export async function openCheckpoint(note, logKey) {
  const n = parseNote(note);
  const mine = n.sigs.filter((s) => s.name === logKey.name && s.id === logKey.id);
  if (mine.length === 0) throw new VerificationError("checkpoint is not signed by the log's key");
  for (const s of mine) {
    if (!(await ed25519(logKey.key, s.raw, enc.encode(n.text)))) {
      throw new VerificationError("the log's signature on the checkpoint does not verify");
    }
  }
  const cp = parseCheckpoint(n.text);
  if (cp.origin !== logKey.name) {
    throw new VerificationError(`checkpoint origin ${cp.origin} is not the log's ${logKey.name}`);
  }
  return { ...cp, note, sigs: n.sigs };
}

// --- witness policy (c2sp.org/tlog-policy) ------------------------------------------------

export async function parsePolicy(text) {
  const p = { logs: [], witnesses: new Map(), groups: new Map(), quorum: null };
  const defined = (name) => name === "none" || p.witnesses.has(name) || p.groups.has(name);
  for (const [i, raw] of text.split("\n").entries()) {
    const f = raw.split("#")[0].trim().split(/\s+/).filter(Boolean);
    if (f.length === 0) continue;
    const where = `policy line ${i + 1}`;
    if (f[0] === "log") {
      p.logs.push(await parseVkey(f[1]));
    } else if (f[0] === "witness") {
      const key = await parseVkey(f[2]);
      if (key.alg !== ALG_COSIGNATURE_V1 && key.alg !== ALG_MLDSA44) {
        throw new VerificationError(`${where}: not a cosigner key`);
      }
      p.witnesses.set(f[1], { name: f[1], key, url: f[3] || null });
    } else if (f[0] === "group") {
      const members = f.slice(3);
      for (const m of members) if (!defined(m)) throw new VerificationError(`${where}: ${m}?`);
      let k = f[2] === "all" ? members.length : f[2] === "any" ? 1 : Number(f[2]);
      if (!Number.isInteger(k) || k < 1 || k > members.length) {
        throw new VerificationError(`${where}: bad threshold`);
      }
      p.groups.set(f[1], { name: f[1], k, members });
    } else if (f[0] === "quorum") {
      if (p.quorum !== null || !defined(f[1])) throw new VerificationError(`${where}: quorum`);
      p.quorum = f[1];
    } else {
      throw new VerificationError(`${where}: unknown keyword ${f[0]}`);
    }
  }
  if (p.quorum === null) throw new VerificationError("policy has no quorum line");
  return p;
}

export function quorumMet(policy, cosigned) {
  const sat = (name) => {
    if (name === "none") return true;
    if (policy.witnesses.has(name)) return cosigned.has(name);
    const g = policy.groups.get(name);
    return g.members.filter(sat).length >= g.k;
  };
  return sat(policy.quorum);
}

// Check every cosignature of a known witness on the checkpoint; a known witness whose
// cosignature does not verify is a failure (thrown), a missing one just does not count.
// Returns {witnesses: [{name, time}], met: bool, unverifiable: [names]}: cosignatures of
// witnesses whose key type WebCrypto lacks (ML-DSA-44) are reported, never counted.
export async function checkCosignatures(cp, policy) {
  const good = new Map();
  const unverifiable = [];
  for (const w of policy.witnesses.values()) {
    const lines = cp.sigs.filter((x) => x.name === w.key.name && x.id === w.key.id);
    if (w.key.unsupported) {
      if (lines.length) unverifiable.push(w.name);
      continue;
    }
    for (const s of lines) {
      if (s.raw.length !== 72) throw new VerificationError(`cosignature of ${w.name} is malformed`);
      let t = 0n;
      for (const b of s.raw.slice(0, 8)) t = (t << 8n) | BigInt(b);
      const msg = enc.encode(`cosignature/v1\ntime ${t}\n` + cp.text);
      if (!(await ed25519(w.key.key, s.raw.slice(8), msg))) {
        throw new VerificationError(`the cosignature of witness ${w.name} does not verify`);
      }
      good.set(w.name, Number(t) * 1000);
    }
  }
  const witnesses = [...good].map(([name, time]) => ({ name, time }));
  return { witnesses, met: quorumMet(policy, new Set(good.keys())), unverifiable };
}

// --- deterministic CBOR -------------------------------------------------------------------

function head(major, n) {
  const m = major << 5;
  if (typeof n === "number") {
    if (n < 24) return Uint8Array.of(m | n);
    if (n < 0x100) return Uint8Array.of(m | 24, n);
    if (n < 0x10000) return Uint8Array.of(m | 25, n >> 8, n & 0xff);
    if (n < 0x100000000) {
      return Uint8Array.of(m | 26, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
    }
    n = BigInt(n);
  }
  const out = new Uint8Array(9);
  out[0] = m | 27;
  for (let i = 8; i >= 1; i--) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function cborEncode(v) {
  if (v === null) return Uint8Array.of(0xf6);
  if (v === true) return Uint8Array.of(0xf5);
  if (v === false) return Uint8Array.of(0xf4);
  if (v instanceof Uint8Array) return concat(head(2, v.length), v);
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw new VerificationError("not an integer in the safe range");
    return v >= 0 ? head(0, v) : head(1, -1 - v);
  }
  if (typeof v === "string") {
    const b = enc.encode(v);
    return concat(head(3, b.length), b);
  }
  if (Array.isArray(v)) return concat(head(4, v.length), ...v.map(cborEncode));
  if (typeof v === "object") {
    const items = Object.keys(v).map((k) => [cborEncode(k), cborEncode(v[k])]);
    items.sort((a, b) => compareBytes(a[0], b[0]));
    return concat(head(5, items.length), ...items.flat());
  }
  throw new VerificationError(`cannot encode ${typeof v} in CBOR`);
}

// A small strict decoder, enough for the public leaf {v, ts, tn, c, ?e}.
export function cborDecode(bytes) {
  let pos = 0;
  const need = (n) => {
    if (pos + n > bytes.length) throw new VerificationError("truncated CBOR");
  };
  const arg = (info) => {
    if (info < 24) return info;
    const len = { 24: 1, 25: 2, 26: 4, 27: 8 }[info];
    if (!len) throw new VerificationError("unsupported CBOR argument");
    need(len);
    let n = 0n;
    for (let i = 0; i < len; i++) n = (n << 8n) | BigInt(bytes[pos++]);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new VerificationError("CBOR integer too large");
    return Number(n);
  };
  const item = () => {
    need(1);
    const ib = bytes[pos++];
    const major = ib >> 5;
    const n = arg(ib & 31);
    switch (major) {
      case 0:
        return n;
      case 2:
        need(n);
        pos += n;
        return bytes.slice(pos - n, pos);
      case 3:
        need(n);
        pos += n;
        return new TextDecoder("utf-8", { fatal: true }).decode(bytes.slice(pos - n, pos));
      case 5: {
        const out = {};
        for (let i = 0; i < n; i++) {
          const k = item();
          if (typeof k !== "string" || k in out) throw new VerificationError("bad CBOR map key");
          out[k] = item();
        }
        return out;
      }
      default:
        throw new VerificationError("unexpected CBOR type in a leaf");
    }
  };
  const v = item();
  if (pos !== bytes.length) throw new VerificationError("trailing bytes after CBOR");
  return v;
}

// --- SCIM leaves and commitments (client/scim/leaf.py, SCIM.md §4.3) ----------------------

export async function parseLeaf(bytes) {
  const m = cborDecode(bytes);
  const keys = Object.keys(m).sort().join(",");
  if ((keys !== "c,tn,ts,v" && keys !== "c,e,tn,ts,v") || m.v !== 1) {
    throw new VerificationError("not a version-1 SCIM leaf");
  }
  if (!(m.tn instanceof Uint8Array) || m.tn.length !== 16) throw new VerificationError("leaf tn");
  if (!(m.c instanceof Uint8Array) || m.c.length !== 32) throw new VerificationError("leaf c");
  if ("e" in m && !(m.e instanceof Uint8Array && m.e.length === 32)) throw new VerificationError("leaf e");
  if (typeof m.ts !== "number") throw new VerificationError("leaf ts");
  // The leaf must be in canonical form: re-encoding reproduces it byte for byte.
  if (!equal(cborEncode(m), bytes)) throw new VerificationError("leaf is not deterministic CBOR");
  return { ts: m.ts, tn: m.tn, c: m.c, e: m.e || null };
}

// The byte-string fields of an event's JSON form (client/scim/event.py BYTES_FIELDS).
const BYTES_FIELDS = [
  ["req", "dig"],
  ["actor", "tok_d"],
  ["actor", "x5t_s256"],
  ["actor", "pid"],
  ["actor", "sd"],
  ["patch[]", "v_d"],
  ["mods[]", "old_d"],
  ["mods[]", "new_d"],
  ["refs[]", "pid"],
];

// The event in the CBOR data model: a deep copy with the base64 byte fields decoded.
export function eventFromJson(ev) {
  const out = structuredClone(ev);
  for (const [headName, leafName] of BYTES_FIELDS) {
    if (headName.endsWith("[]")) {
      const seq = out[headName.slice(0, -2)];
      if (Array.isArray(seq)) {
        for (const item of seq) {
          if (item && typeof item === "object" && leafName in item) {
            item[leafName] = b64decode(item[leafName]);
          }
        }
      }
    } else {
      const sub = out[headName];
      if (sub && typeof sub === "object" && leafName in sub) sub[leafName] = b64decode(sub[leafName]);
    }
  }
  return out;
}

// c = HMAC-SHA256(key = nonce, msg = det_cbor(event)); throws unless it equals the leaf's c.
export async function verifyCommitment(leaf, eventJson, nonce) {
  if (nonce.length !== 32) throw new VerificationError("nonce must be 32 bytes");
  const c = await hmacSha256(nonce, cborEncode(eventFromJson(eventJson)));
  if (!equal(c, leaf.c)) throw new VerificationError("the body does not match the leaf commitment");
}

// Who acted (docs/design.md, "Actors"). An event whose actor the log stored as a pseudonym,
// {kind, pid, sd}, comes with the actor as submitted and the nonce of sd, opened from under
// the actor's own keys: sd = HMAC-SHA256(nonce, det_cbor(actor)) and the kinds agree; or with
// {unlinked: true} once the actor was erased. Returns { actor, unlinked }: the verified actor
// (the event's own when it names its actor), or null and unlinked = true.
export async function verifyActor(eventJson, answer) {
  const stored = eventJson.actor || {};
  if (!("pid" in stored)) {
    if (answer !== undefined) throw new VerificationError("a sealed actor for an event that names its actor");
    return { actor: stored, unlinked: false };
  }
  if (answer && answer.unlinked === true && Object.keys(answer).length === 1) return { actor: null, unlinked: true };
  if (!answer || typeof answer.actor !== "object" || typeof answer.nonce !== "string") {
    throw new VerificationError("a pseudonymous actor without its sealed actor");
  }
  const actor = eventFromJson({ actor: answer.actor }).actor;
  if ("pid" in actor || "sd" in actor) throw new VerificationError("the sealed actor is itself a pseudonym");
  const sd = await hmacSha256(b64decode(answer.nonce, 32), cborEncode(actor));
  if (!equal(sd, b64decode(stored.sd, 32)) || actor.kind !== stored.kind) {
    throw new VerificationError("the sealed actor does not open the event's actor.sd");
  }
  return { actor: answer.actor, unlinked: false };
}

// e = HMAC-SHA256(key = nonce, msg = "tlog-scim-effect\0" || det_cbor(effect)): the effect the
// log derived, committed in the leaf next to c (client/scim/leaf.py verify_effect). Returns
// true when the leaf commits to this effect, false for a leaf without e (no effect, or logged
// before effects were committed: an unattested reading); throws on a mismatch or a withheld one.
export async function verifyEffect(leaf, effect, nonce) {
  if (!leaf.e) return false;
  if (effect === null || effect === undefined) {
    throw new VerificationError("the leaf commits to an effect the log did not report");
  }
  if (nonce.length !== 32) throw new VerificationError("nonce must be 32 bytes");
  const e = await hmacSha256(nonce, concat(enc.encode("tlog-scim-effect\0"), cborEncode(effect)));
  if (!equal(e, leaf.e)) throw new VerificationError("the effect does not match the leaf commitment");
  return true;
}

// --- c2sp.org/tlog-proof@v1 ---------------------------------------------------------------

export function formatTlogProof(index, proof, note) {
  return ["c2sp.org/tlog-proof@v1", `index ${index}`, ...proof.map(b64encode)].join("\n") +
    "\n\n" + note;
}

export function parseTlogProof(text) {
  const cut = text.indexOf("\n\n");
  if (cut < 0) throw new VerificationError("proof bundle has no checkpoint");
  const lines = text.slice(0, cut).split("\n");
  if (lines[0] !== "c2sp.org/tlog-proof@v1") throw new VerificationError("not a tlog-proof");
  let pos = 1;
  let extra = null;
  if (lines[pos] && lines[pos].startsWith("extra ")) extra = b64decode(lines[pos++].slice(6));
  const m = /^index (0|[1-9][0-9]*)$/.exec(lines[pos] || "");
  if (!m) throw new VerificationError("proof bundle has no index line");
  const proof = lines.slice(pos + 1).map((h) => b64decode(h, 32));
  return { index: Number(m[1]), proof, note: text.slice(cut + 2), extra };
}
