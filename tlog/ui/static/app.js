// The tlog console: public log view and auditor view. Every check runs here, in the
// browser (verify.js); the server's word is never taken for "verified".
import {
  VerificationError, b64decode, b64encode, checkCosignatures, equal, formatTlogProof,
  leafHash, openCheckpoint, parseLeaf, parsePolicy, parseTlogProof, parseVkey,
  verifyActor, verifyCommitment, verifyConsistency, verifyEffect, verifyInclusion,
} from "./verify.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// --- small DOM helpers --------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function badge(kind, text) {
  return el("span", { class: `badge ${kind}`, text });
}

function utc(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function age(ms) {
  if (ms === null || ms === undefined) return "unknown (no time for this size)";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} days ago`;
}

const problems = [];
function alarm(msg) {
  if (!problems.includes(msg)) problems.push(msg);
  const box = $("alarm");
  box.replaceChildren(
    el("div", { text: "VERIFICATION FAILED — do not trust what this log shows until this is explained." }),
    el("ul", {}, ...problems.map((p) => el("li", { text: p }))),
  );
  box.hidden = false;
}

// --- state --------------------------------------------------------------------------------

const state = {
  summary: null,
  logKey: null, // verified log key (pinned)
  policy: null, // parsed witness policy or null
  token: sessionStorage.getItem("tlog.console.token"),
  tenant: null,
  tn: null,
  filters: null,
  next: null,
  rows: [], // {r (server result), checks, ok, warn}
  selected: null,
  trusted: null, // largest verified checkpoint seen in this page
  cosigned: null, // the newest checkpoint seen with a verified witness quorum
  noteCache: new Map(), // note -> Promise<checkpoint>
};

class HttpError extends Error {
  constructor(status, reason) {
    super(`HTTP ${status}: ${reason}`);
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  if (opts.auth) headers.Authorization = `Bearer ${state.token}`;
  const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body, cache: "no-store" });
  const text = await r.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    if (r.ok) throw new VerificationError(`malformed answer from ${path.split("?")[0]}`);
  }
  if (!r.ok) throw new HttpError(r.status, (data && data.error) || text.slice(0, 200));
  return data;
}

// --- trust anchors: the log key and witness policy, pinned on first use ---------------------

function pinKey(origin) {
  return `tlog.console.pin:${origin}`;
}

async function loadAnchors(summary) {
  const stored = localStorage.getItem(pinKey(summary.origin));
  let pin = stored ? JSON.parse(stored) : null;
  if (!pin) {
    pin = { vkey: summary.vkey, policy: summary.policy, since: Date.now() };
    localStorage.setItem(pinKey(summary.origin), JSON.stringify(pin));
    $("pin").replaceChildren(badge("warn", "pinned now (first visit)"));
  } else if (pin.vkey !== summary.vkey || pin.policy !== summary.policy) {
    const what = pin.vkey !== summary.vkey ? "verifier key" : "witness policy";
    alarm(`The log now presents another ${what} than the one this browser pinned on ${utc(pin.since)}.`);
    const b = el("button", { type: "button", class: "ghost", text: "Trust the new one" });
    b.addEventListener("click", () => {
      localStorage.setItem(pinKey(summary.origin), JSON.stringify({ vkey: summary.vkey, policy: summary.policy, since: Date.now() }));
      location.reload();
    });
    $("pin").replaceChildren(badge("bad", `CHANGED since ${utc(pin.since)}`), " ", b);
  } else {
    $("pin").replaceChildren(badge("ok", `pinned since ${utc(pin.since)}`));
  }
  state.logKey = await parseVkey(pin.vkey);
  state.policy = pin.policy ? await parsePolicy(pin.policy) : null;
}

// --- checkpoints: signature, witnesses, consistency with what this browser saw -------------

function seenKey() {
  return `tlog.console.seen:${state.logKey.name}`;
}

async function consistent(oldCp, newCp) {
  // Relates two verified checkpoints with a consistency proof from the log.
  const [small, big] = oldCp.size <= newCp.size ? [oldCp, newCp] : [newCp, oldCp];
  if (small.size === big.size) {
    if (!equal(small.root, big.root)) throw new VerificationError(`two different trees of size ${small.size}`);
    return;
  }
  if (small.size === 0) return;
  const d = await api(`/v1/proof/consistency?old_size=${small.size}&tree_size=${big.size}`);
  const proof = d.consistency_proof.map((h) => b64decode(h, 32));
  await verifyConsistency(small.size, big.size, small.root, big.root, proof);
}

// Verify a checkpoint note fully; cached per note text. Returns the checkpoint with
// .witness = {met, witnesses} (or null without a policy) and .consistency text.
function checkpoint(note) {
  let p = state.noteCache.get(note);
  if (!p) {
    p = verifyCheckpoint(note);
    state.noteCache.set(note, p);
  }
  return p;
}

async function verifyCheckpoint(note) {
  const cp = await openCheckpoint(note, state.logKey);
  cp.witness = state.policy ? await checkCosignatures(cp, state.policy) : null;
  const raw = localStorage.getItem(seenKey());
  const seen = raw ? JSON.parse(raw) : null;
  if (seen) {
    const prev = { size: seen.size, root: b64decode(seen.root, 32) };
    try {
      await consistent(prev, cp);
    } catch (e) {
      throw new VerificationError(
        `checkpoint ${cp.size} is not consistent with checkpoint ${seen.size} this browser saw on ${utc(seen.at)}: ${e.message}`);
    }
    cp.consistency = cp.size === seen.size ? `same tree as seen on ${utc(seen.at)}`
      : `consistent with size ${seen.size} seen on ${utc(seen.at)}`;
  } else {
    cp.consistency = "first checkpoint this browser has seen of this log";
  }
  if (!seen || cp.size > seen.size) {
    localStorage.setItem(seenKey(), JSON.stringify({ size: cp.size, root: b64encode(cp.root), at: Date.now() }));
  }
  if (!state.trusted || cp.size > state.trusted.size) state.trusted = cp;
  return cp;
}

function witnessText(cp) {
  if (!cp.witness) return ["warn", "no witness policy"];
  const n = cp.witness.witnesses.length;
  const u = cp.witness.unverifiable.length;
  const extra = u ? `; ${u} ML-DSA-44 not verifiable here` : "";
  if (cp.witness.met) return ["ok", `quorum met (${n} cosignature${n === 1 ? "" : "s"} verified${extra})`];
  return ["warn", `not yet witnessed to quorum (${n} verified cosignature${n === 1 ? "" : "s"}${extra})`];
}

// --- public view --------------------------------------------------------------------------

async function loadLog() {
  const s = await api("/v1/ui/summary");
  state.summary = s;
  $("origin").textContent = s.origin;
  $("vkey").textContent = s.vkey;
  await loadAnchors(s);
  $("size").textContent = s.tree_size.toLocaleString("en");
  $("age").textContent = `${age(s.checkpoint_time)} (${utc(s.checkpoint_time)})`;
  const checks = $("cp-checks");
  try {
    const cp = await checkpoint(s.checkpoint);
    if (cp.witness && cp.witness.met) state.cosigned = cp;
    $("root").textContent = b64encode(cp.root);
    const [wk, wt] = witnessText(cp);
    checks.replaceChildren(
      el("div", {}, badge("ok", "signature verified"), " ", badge(wk, wt)),
      el("div", { class: "muted small", text: cp.consistency }),
    );
    renderWitnesses(s, cp);
  } catch (e) {
    checks.replaceChildren(badge("bad", `FAILED: ${e.message}`));
    alarm(`Latest checkpoint: ${e.message}`);
    renderWitnesses(s, null);
  }
  // Stored checkpoints the server found damaged (they do not verify under the log's key)
  // are left out of the history and counted: as alarming as a bad one in the history.
  const damaged = s.damaged && Number.isInteger(s.damaged.checkpoint) ? s.damaged.checkpoint : 0;
  if (damaged > 0) alarm(`${damaged} stored checkpoint(s) of this log are damaged (they do not verify under the log's key; left out of the chart): the operator must run tlog fsck.`);
  await renderChart(s.history);
}

function renderWitnesses(s, cp) {
  const body = $("witnesses").querySelector("tbody");
  body.replaceChildren();
  if (!state.policy) {
    $("quorum").textContent = "This log runs without a witness policy.";
    return;
  }
  const verified = new Map((cp && cp.witness ? cp.witness.witnesses : []).map((w) => [w.name, w.time]));
  const unverifiable = new Set(cp && cp.witness ? cp.witness.unverifiable : []);
  $("quorum").textContent = `Quorum: ${state.policy.quorum} — ${state.policy.witnesses.size} witness(es) in the pinned policy.`;
  const status = new Map(s.witnesses.map((w) => [w.name, w]));
  for (const name of state.policy.witnesses.keys()) {
    const w = status.get(name) || {};
    const here = verified.has(name) ? badge("ok", "cosignature verified")
      : unverifiable.has(name) ? badge("warn", "ML-DSA-44: not verifiable here")
        : badge("pending", "not on this checkpoint");
    if (verified.has(name)) here.title = `cosigned at ${utc(verified.get(name))}`;
    const errs = w.alarms ? badge("bad", `${w.alarms} split-view alarm(s)`) : w.last_error ? badge("warn", w.last_error) : "";
    body.append(el("tr", {},
      el("td", {}, el("strong", { text: name }), el("div", { class: "muted small", text: w.url || "" })),
      el("td", { text: w.cosigned_size ? w.cosigned_size.toLocaleString("en") : "—" }),
      el("td", { text: w.cosigned_time ? age(w.cosigned_time) : "—", title: w.cosigned_time ? utc(w.cosigned_time) : "" }),
      el("td", {}, here, " ", errs)));
  }
}

async function renderChart(history) {
  const box = $("chart");
  const pts = [];
  let bad = 0;
  for (const h of history) {
    try {
      const cp = await openCheckpoint(h.checkpoint, state.logKey);
      if (cp.size !== h.size) throw new VerificationError("size differs from its note");
      pts.push({ size: cp.size, time: h.time, ok: true });
    } catch (e) {
      bad++;
      pts.push({ size: h.size, time: h.time, ok: false });
    }
  }
  if (bad) alarm(`${bad} stored checkpoint(s) in the history do not carry a valid log signature.`);
  const timed = pts.filter((p) => p.time !== null);
  const W = 1100, H = 260, L = 64, R = 16, T = 12, B = 34;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "entries over time");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  if (timed.length < 2) {
    add("text", { x: L, y: H / 2 }, "not enough timed checkpoints yet to draw a chart");
    box.replaceChildren(svg);
    return;
  }
  const t0 = timed[0].time, t1 = timed[timed.length - 1].time;
  const maxSize = Math.max(...timed.map((p) => p.size), 1);
  const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1)) * (W - L - R);
  const y = (n) => H - B - (n / maxSize) * (H - T - B);
  add("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B });
  add("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B });
  for (const f of [0, 0.5, 1]) {
    const n = Math.round(maxSize * f);
    add("text", { x: L - 6, y: y(n) + 4, "text-anchor": "end" }, n.toLocaleString("en"));
  }
  add("text", { x: L, y: H - 10 }, utc(t0));
  add("text", { x: W - R, y: H - 10, "text-anchor": "end" }, utc(t1));
  add("polyline", { class: "line", points: timed.map((p) => `${x(p.time).toFixed(1)},${y(p.size).toFixed(1)}`).join(" ") });
  for (const p of timed) {
    const c = add("circle", { class: p.ok ? "dot" : "dot bad", cx: x(p.time).toFixed(1), cy: y(p.size).toFixed(1), r: 3 });
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = `${p.size.toLocaleString("en")} entries at ${utc(p.time)}${p.ok ? "" : " — SIGNATURE INVALID"}`;
    c.append(tip);
  }
  box.replaceChildren(svg);
}

function showLookup(...nodes) {
  $("lookup-out").replaceChildren(el("div", { class: "result" }, ...nodes));
}

async function lookup(q) {
  q = q.trim();
  try {
    let d;
    if (/^(0|[1-9][0-9]*)$/.test(q)) d = await api(`/v1/proof/inclusion?index=${q}`);
    else d = await api(`/v1/proof/inclusion?leaf_hash=${encodeURIComponent(q)}`);
    const cp = await checkpoint(d.checkpoint);
    const entry = new Uint8Array(await (await fetch(`/v1/entries/${d.index}`)).arrayBuffer());
    const lh = await leafHash(entry);
    if (d.leaf_hash !== undefined && d.leaf_hash !== b64encode(lh)) {
      throw new VerificationError("the entry does not hash to the leaf hash asked for");
    }
    await verifyInclusion(d.index, cp.size, lh, d.inclusion_proof.map((h) => b64decode(h, 32)), cp.root);
    const info = [el("div", {}, badge("ok", "verified"), ` entry ${d.index} is in the tree of size ${cp.size}`),
      el("div", { class: "mono small", text: `leaf hash ${b64encode(lh)}` })];
    try {
      const leaf = await parseLeaf(entry);
      info.push(el("div", { class: "small", text: `SCIM leaf: logged ${utc(leaf.ts)}, tenant ref ${b64encode(leaf.tn)}` }));
    } catch {
      info.push(el("div", { class: "small muted", text: `${entry.length} bytes (not a SCIM leaf)` }));
    }
    showLookup(...info);
  } catch (e) {
    showLookup(badge(e instanceof VerificationError ? "bad" : "warn", e instanceof VerificationError ? `FAILED: ${e.message}` : e.message));
    if (e instanceof VerificationError) alarm(`Look-up of ${q}: ${e.message}`);
  }
}

async function verifyReceipt() {
  try {
    const b = parseTlogProof($("receipt").value.replace(/\r\n/g, "\n"));
    const lh = b64decode($("receipt-leaf").value.trim(), 32);
    const cp = await checkpoint(b.note);
    await verifyInclusion(b.index, cp.size, lh, b.proof, cp.root);
    const [wk, wt] = witnessText(cp);
    showLookup(el("div", {}, badge("ok", "receipt verified"), ` index ${b.index} in the tree of size ${cp.size} `, badge(wk, wt)));
  } catch (e) {
    showLookup(badge("bad", `FAILED: ${e.message}`));
  }
}

// --- auditor view -------------------------------------------------------------------------

async function signIn(token, remember) {
  state.token = token;
  try {
    const t = await api("/v1/scim/tenant-ref", { auth: true });
    state.tenant = t.tenant;
    state.tn = b64decode(t.tn, 16);
  } catch (e) {
    state.token = null;
    sessionStorage.removeItem("tlog.console.token");
    throw e;
  }
  if (remember) sessionStorage.setItem("tlog.console.token", token);
  $("token").value = "";
  $("signin-card").hidden = true;
  $("audit-body").hidden = false;
  const out = el("button", { type: "button", class: "ghost", text: "Sign out" });
  out.addEventListener("click", signOut);
  $("whoami").replaceChildren(el("span", { text: `auditor of ${state.tenant}` }), out);
}

function signOut() {
  state.token = null;
  state.tenant = null;
  sessionStorage.removeItem("tlog.console.token");
  state.rows = [];
  $("results").querySelector("tbody").replaceChildren();
  $("audit-body").hidden = true;
  $("signin-card").hidden = false;
  $("detail").hidden = true;
  $("timeline").hidden = true;
  $("whoami").replaceChildren();
}

function readFilters(form) {
  const f = {};
  for (const [k, v] of new FormData(form)) {
    if (v === "") continue;
    if (k === "since" || k === "until") f[k] = String(Date.parse(v + "Z"));
    else f[k] = v;
  }
  return f;
}

// Every check for one search result; returns {checks: [[name, ok|warn|bad, detail]], status}.
async function verifyResult(r, filters) {
  const checks = [];
  const add = (name, kind, detail) => checks.push([name, kind, detail]);
  try {
    const cp = await checkpoint(r.checkpoint);
    add("Checkpoint signature (Ed25519)", "ok", `${state.logKey.name}, tree size ${cp.size}`);
    const [wk, wt] = witnessText(cp);
    add("Witness cosignatures", wk, wt);
    add("Consistency with earlier checkpoints", "ok", cp.consistency);
    const leafBytes = b64decode(r.leaf);
    const leaf = await parseLeaf(leafBytes);
    r._ts = leaf.ts;
    const lh = await leafHash(leafBytes);
    if (b64encode(lh) !== r.leaf_hash) throw new VerificationError("the leaf does not hash to leaf_hash");
    if (r.tree_size !== cp.size) throw new VerificationError("tree_size differs from the checkpoint");
    await verifyInclusion(r.index, cp.size, lh, r.inclusion_proof.map((h) => b64decode(h, 32)), cp.root);
    add("Inclusion (RFC 6962, SHA-256)", "ok", `index ${r.index} under root ${b64encode(cp.root).slice(0, 16)}…`);
    if (!equal(leaf.tn, state.tn)) throw new VerificationError("the leaf belongs to another tenant");
    if ((filters.since && leaf.ts < Number(filters.since)) || (filters.until && leaf.ts >= Number(filters.until))) {
      throw new VerificationError("result outside the requested time range");
    }
    if (r.erased) {
      if ("event" in r || "nonce" in r) throw new VerificationError("an erased result carries a body");
      add("Body", "warn", "erased (crypto-shredded): no body exists any more; leaf and inclusion verified");
    } else {
      const nonce = b64decode(r.nonce, 32);
      await verifyCommitment(leaf, r.event, nonce);
      add("Commitment (HMAC-SHA256 over det-CBOR body)", "ok", `matches the leaf (${b64encode(leaf.c).slice(0, 16)}…)`);
      const attested = await verifyEffect(leaf, r.effect, nonce);
      if (r.effect) {
        add("Effect (derived by the log)", attested ? "ok" : "warn", attested
          ? `committed in the leaf (e ${b64encode(leaf.e).slice(0, 16)}…) and matches`
          : "not committed in this leaf (logged before effects were committed): the log's unattested reading");
      }
      const ev = r.event;
      if (ev.tenant !== state.tenant) throw new VerificationError("the body belongs to another tenant");
      const who = await verifyActor(ev, r.actor);
      r._actor = who.actor;
      r._unlinked = who.unlinked;
      if (who.unlinked) add("Actor", "warn", "unlinked: the actor was erased; the event names no one");
      else if (ev.actor && "pid" in ev.actor) add("Actor (sealed under the actor's keys)", "ok", "opens the event's actor.sd");
      const actual = { rid: ev.rid, xid: ev.xid, actor: who.actor ? who.actor.id : undefined, outcome: ev.outcome, req: ev.corr && ev.corr.req };
      for (const [k, v] of Object.entries(actual)) {
        if (filters[k] !== undefined && filters[k] !== v) throw new VerificationError(`the result does not match the ${k} filter`);
      }
      const acts = [...(ev.acts || []), ...((r.effect && r.effect.acts) || [])];
      if (filters.action && !acts.some((a) => a.a === filters.action)) {
        throw new VerificationError("the result does not match the action filter");
      }
    }
    return { checks, status: "ok" };
  } catch (e) {
    add("Verification", "bad", e.message);
    return { checks, status: "bad" };
  }
}

// Who acted, for display: the verified actor's id (and name), "(unlinked)" once erased.
function actorText(r) {
  if (r.erased) return "";
  if (r._unlinked) return `${(r.event.actor && r.event.actor.kind) || "actor"} (unlinked)`;
  const a = r._actor || {};
  const who = a.id || a.client_id || a.kind || "";
  return a.name && a.name !== who ? `${who} (${a.name})` : who;
}

function resultRow(row) {
  const r = row.r;
  const ev = r.event || {};
  const proof = row.status === "ok" ? badge("ok", "verified") : badge("bad", "FAILED");
  const tr = el("tr", { "data-index": String(r.index) },
    el("td", { class: "mono small", text: utc(r._ts) }),
    el("td", { text: String(r.index) }),
    el("td", { text: r.erased ? "—" : ev.op }),
    el("td", { text: r.erased ? "—" : ev.rt }),
    el("td", { class: "small", text: r.erased ? "(erased)" : ev.rid || ev.xid || "" }),
    el("td", { class: "small", text: actorText(r) }),
    el("td", {}, r.erased ? badge("pending", "erased") : badge(ev.outcome === "success" ? "ok" : "warn", ev.outcome)),
    el("td", { class: "small", text: r.erased ? "" : (ev.acts || []).map((a) => a.a).join(", ") }),
    el("td", {}, proof));
  if (row.status !== "ok") tr.classList.add("failed");
  tr.addEventListener("click", () => showDetail(row, tr));
  return tr;
}

function showDetail(row, tr) {
  state.selected = row;
  for (const x of $("results").querySelectorAll("tr.selected")) x.classList.remove("selected");
  if (tr) tr.classList.add("selected");
  $("detail").hidden = false;
  $("checks").replaceChildren(...row.checks.map(([name, kind, detail]) =>
    el("li", {}, badge(kind, kind === "ok" ? "✓" : kind === "bad" ? "✗ FAILED" : "!"), el("span", { text: name }),
      el("span", { class: "detail", text: detail }))));
  const r = row.r;
  $("body").textContent = r.erased ? "(erased: the body was crypto-shredded)"
    : JSON.stringify(r.event, null, 2) + (r._unlinked ? "\n\nactor: unlinked (the actor was erased)"
      : r.actor ? "\n\nactor (sealed under the actor's keys, verified):\n" + JSON.stringify(r._actor, null, 2) : "");
  $("body").classList.toggle("unverified", row.status !== "ok");
  $("body-warning").hidden = row.status === "ok";
  $("timeline-btn").disabled = r.erased || !r.event.rid;
}

async function search(filters, cursor) {
  const q = new URLSearchParams(filters);
  if (cursor) q.set("cursor", cursor);
  const d = await api(`/v1/scim/events?${q}`, { auth: true });
  const top = await checkpoint(d.checkpoint).catch((e) => {
    alarm(`Search answer: ${e.message}`);
    return null;
  });
  const rows = [];
  for (const r of d.results) {
    const v = await verifyResult(r, filters);
    if (v.status === "bad") alarm(`Event at index ${r.index}: ${v.checks[v.checks.length - 1][2]}`);
    rows.push({ r, ...v });
  }
  return { rows, next: d.next, top };
}

async function runSearch(cursor) {
  const body = $("results").querySelector("tbody");
  if (!cursor) {
    state.rows = [];
    body.replaceChildren();
    $("detail").hidden = true;
  }
  $("results-summary").textContent = "searching…";
  try {
    const { rows, next } = await search(state.filters, cursor);
    state.rows.push(...rows);
    state.next = next;
    for (const row of rows) body.append(resultRow(row));
    const bad = state.rows.filter((x) => x.status !== "ok").length;
    $("results-summary").replaceChildren(
      `${state.rows.length} event(s) `,
      bad ? badge("bad", `${bad} FAILED verification`) : badge("ok", "all verified in this browser"));
    $("more").hidden = !next;
    $("export-csv").disabled = $("export-evidence").disabled = state.rows.length === 0;
  } catch (e) {
    $("results-summary").replaceChildren(badge("bad", e.message));
    if (e instanceof VerificationError) alarm(`Search: ${e.message}`);
  }
}

async function timeline(rid) {
  $("timeline").hidden = false;
  $("timeline-title").textContent = `Timeline of ${rid}`;
  const list = $("timeline-list");
  list.replaceChildren(el("li", { text: "loading…" }));
  const items = [];
  let cursor = null;
  for (let page = 0; page < 20; page++) {
    const { rows, next } = await search({ rid, limit: "100" }, cursor);
    items.push(...rows);
    if (!next) break;
    cursor = next;
  }
  list.replaceChildren(...items.map((row) => {
    const ev = row.r.event || {};
    const what = (ev.acts || []).map((a) => a.a).join(", ") || `${ev.op} (${ev.outcome})`;
    const li = el("li", {},
      el("div", { class: "when", text: `${utc(row.r._ts)} · index ${row.r.index}` }),
      el("div", {}, el("strong", { text: what }), " by ", el("span", { text: actorText(row.r) || "?" }), " ",
        row.status === "ok" ? badge("ok", "verified") : badge("bad", "FAILED")));
    if (row.status !== "ok") li.classList.add("failed");
    return li;
  }));
}

// --- export ---------------------------------------------------------------------------------

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function recordExport(sink, rows) {
  const bodies = rows.filter((x) => !x.r.erased).length;
  return api("/v1/scim/exports", {
    method: "POST", auth: true, headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sink, events: rows.length, bodies, erased: rows.length - bodies }),
  });
}

function csvCell(v) {
  let s = v === undefined || v === null ? "" : String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s; // no formulas in spreadsheets
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

async function exportCsv() {
  const rows = state.rows;
  await recordExport("console-csv", rows);
  const head = ["log_time", "index", "eid", "leaf_hash", "tree_size", "op", "rt", "rid", "xid",
    "actor", "outcome", "actions", "req", "verified"];
  const lines = [head.join(",")];
  for (const { r, status } of rows) {
    const ev = r.event || {};
    lines.push([utc(r._ts), r.index, r.eid, r.leaf_hash, r.tree_size, ev.op, ev.rt, ev.rid, ev.xid,
      r._unlinked ? "(unlinked)" : r._actor && r._actor.id, r.erased ? "erased" : ev.outcome, (ev.acts || []).map((a) => a.a).join(" "),
      ev.corr && ev.corr.req, status === "ok" ? "yes" : "NO"].map(csvCell).join(","));
  }
  download(`tlog-${state.tenant}-events.csv`, "text/csv", lines.join("\r\n") + "\r\n");
}

async function exportEvidence() {
  const good = state.rows.filter((x) => x.status === "ok");
  if (good.length !== state.rows.length) {
    alarm("Evidence export leaves out the events that failed verification.");
  }
  // Fresh inclusion proofs, all against one checkpoint so the bundle shows one history: the
  // newest quorum-cosigned one if it covers every event, else the largest verified here.
  let cp = state.trusted;
  if (state.cosigned && good.every((x) => x.r.index < state.cosigned.size)) cp = state.cosigned;
  const events = [];
  for (const { r } of good) {
    const d = await api(`/v1/proof/inclusion?index=${r.index}&tree_size=${cp.size}`);
    const c2 = await checkpoint(d.checkpoint);
    const proof = d.inclusion_proof.map((h) => b64decode(h, 32));
    await verifyInclusion(r.index, c2.size, b64decode(r.leaf_hash, 32), proof, c2.root);
    const e = { index: r.index, eid: r.eid, leaf: r.leaf, leaf_hash: r.leaf_hash, erased: !!r.erased,
      tlog_proof: formatTlogProof(r.index, proof, d.checkpoint) };
    if (!r.erased) {
      e.event = r.event;
      e.nonce = r.nonce;
      if (r.effect && (await parseLeaf(b64decode(r.leaf))).e) e.effect = r.effect; // committed (e)
    }
    events.push(e);
  }
  const rec = await recordExport("console-evidence", good);
  const bundle = {
    format: "tlog-scim-evidence@v1", origin: state.logKey.name, vkey: state.logKey.vkey,
    policy: state.summary.policy, tenant: state.tenant, tn: b64encode(state.tn),
    exported: Date.now(), access: rec.access, events,
  };
  download(`tlog-${state.tenant}-evidence.json`, "application/json", JSON.stringify(bundle, null, 1) + "\n");
}

// --- wiring -----------------------------------------------------------------------------------

function show(view) {
  $("view-log").hidden = view !== "log";
  $("view-audit").hidden = view !== "audit";
  $("tab-log").classList.toggle("active", view === "log");
  $("tab-audit").classList.toggle("active", view === "audit");
  location.hash = view === "audit" ? "#audit" : "#log";
}

function guard(fn) {
  return async (ev) => {
    if (ev && ev.preventDefault) ev.preventDefault();
    try {
      await fn(ev);
    } catch (e) {
      if (e instanceof VerificationError) alarm(e.message);
      else $("results-summary").textContent = e.message;
    }
  };
}

async function main() {
  $("tab-log").addEventListener("click", () => show("log"));
  $("tab-audit").addEventListener("click", () => show("audit"));
  $("lookup").addEventListener("submit", guard(() => lookup($("lookup-q").value)));
  $("receipt-go").addEventListener("click", guard(verifyReceipt));
  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await signIn($("token").value.trim(), $("remember").checked);
    } catch (e) {
      $("signin").append(el("div", { class: "badge bad", text: `sign-in failed: ${e.message}` }));
    }
  });
  $("search").addEventListener("submit", guard(async () => {
    state.filters = readFilters($("search"));
    await runSearch(null);
  }));
  $("more").addEventListener("click", guard(() => runSearch(state.next)));
  $("timeline-btn").addEventListener("click", guard(() => timeline(state.selected.r.event.rid)));
  $("export-csv").addEventListener("click", guard(exportCsv));
  $("export-evidence").addEventListener("click", guard(exportEvidence));
  show(location.hash === "#audit" ? "audit" : "log");
  try {
    await loadLog();
  } catch (e) {
    alarm(`Loading the log: ${e.message}`);
  }
  if (state.token) {
    try {
      await signIn(state.token, true);
    } catch {
      /* the stored token expired or was revoked: sign in again */
    }
  }
  document.body.dataset.ready = "1";
}

main();
