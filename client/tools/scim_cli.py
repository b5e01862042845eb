"""``tlog-client scim search|show|verify|export|verify-evidence``: an auditor's commands.

::

    tlog-client scim search URL --vkey VKEY [--token-file F] [filters] [--limit N] [--json]
    tlog-client scim show   URL --vkey VKEY [--token-file F] [filters]
    tlog-client scim verify URL --vkey VKEY [--token-file F] [filters]
    tlog-client scim export URL --vkey VKEY [--token-file F] [filters] --out BUNDLE.json
    tlog-client scim verify-evidence BUNDLE.json (--vkey VKEY | --policy FILE) [--tenant-ref TN]

Filters (:mod:`client.tools.filters`): ``--rid --xid --actor --action --outcome --req``,
``--ref ID [--ref-rt RT]`` (events naming that subject: its groups' member changes) and
``--since/--until`` (the events' public log time: ms, ISO 8601 or a span back from now such as
``24h``). The token is an auditor token of one tenant
(``--token-file``, else ``TLOG_TOKEN``).

Nothing the server says is trusted: every result goes through
:class:`client.net.scim_audit.ScimAuditClient` (log signature and origin, consistency with every
checkpoint seen in the run, inclusion of the leaf, the tenant ref, and the commitment
``c = HMAC(nonce, det_cbor(event))`` of each decrypted body). ``search`` prints one line per
verified event, ``show`` the decrypted bodies as JSON lines, ``verify`` checks every
matching event (with a progress bar on a terminal) and prints a summary. ``export`` writes a
``tlog-scim-evidence@v1`` bundle (:mod:`client.scim.evidence`: each event with its leaf, body,
nonce and a ``c2sp.org/tlog-proof@v1`` receipt from ``GET /v1/bundle/<index>``, verified
before it is written), file mode 0600; an outside auditor checks it offline with only the
log's public key: ``verify-evidence`` (also spelled ``verify-bundle``), for a bundle from
``export`` and from the console's "Export evidence" alike.

Every page an auditor reads is recorded by the log as an access event (visible to the
tenant's other auditors). Exit codes: 0 verified, 1 usage/network/HTTP error, 2 verification
failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Verifier, FormatError, b64decode_strict, b64encode
from client.formats.policy import Policy
from client.formats.proof_bundle import TlogProof
from client.formats.text import json_line, one_line
from client.net.core import HTTPFailure, http_client
from client.net.scim_audit import AuditedEvent, ScimAuditClient, ScimAuditError
from client.scim.event import actor_to_json, event_to_json
from client.scim.evidence import MAX_EVIDENCE_SIZE, describe, verify_evidence
from client.tools.cli import MAX_POLICY_SIZE, read_input
from client.tools.filters import add_filter_args, filters_of, iso_ms

__all__ = ["register"]

EXIT_OK, EXIT_ERROR, EXIT_FAILED = 0, 1, 2


class _Usage(Exception):
    pass


def read_secret(path: str | None, env: str, what: str) -> str | None:
    """A secret from its file (stripped; unreadable or empty is a ValueError), else from the
    environment variable ``env``, else None. Secrets never come from the command line."""
    if path is not None:
        try:
            value = Path(path).read_text("utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read {what} file {path}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{what} file {path} is empty")
        return value
    return os.environ.get(env) or None


def _token(path: str | None) -> str:
    try:
        token = read_secret(path, "TLOG_TOKEN", "token")
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    if token is None:
        raise _Usage("an auditor token is required: --token-file or TLOG_TOKEN")
    return token


class _Progress:
    """Events verified so far, on one stderr line (a terminal only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.n = 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def tick(self) -> None:
        self.n += 1
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            sys.stderr.write(f"\rverified {self.n:,} events ({rate:,.0f}/s) ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\rverified {self.n:,} events{' ' * 12}\n")


def _client(args: argparse.Namespace) -> ScimAuditClient:
    return ScimAuditClient(
        args.url,
        _token(args.token_file),
        args.vkey,
        http=getattr(args, "http", None),
        timeout=args.timeout,
    )


def _events(client: ScimAuditClient, args: argparse.Namespace) -> Iterator[AuditedEvent]:
    limit = getattr(args, "limit", None)
    n = 0
    for ev in client.search_all(**filters_of(args)):
        yield ev
        n += 1
        if limit is not None and n >= limit:
            return


def _acts(acts: Any) -> list[str]:
    return [a["a"] for a in acts] if isinstance(acts, list) else []


def _actions(ev: AuditedEvent) -> str:
    """The event's actions as the request stated them (intent), then, where the log derived
    another reading against the resource's state (effect), ``=> `` those: e.g. an Okta PUT
    ``user.update => user.activate``. An effect the leaf does not commit to is marked."""
    e = ev.event or {}
    said = _acts(e.get("acts"))
    text = ",".join(said) or "-"
    if ev.effect is not None:
        did = _acts(ev.effect.get("acts"))
        if did and did != said:
            text += " => " + ",".join(did) + ("" if ev.effect_attested else " (unattested)")
    return text


def actor_text(ev: AuditedEvent) -> str:
    """Who acted, for a line: ``kind:id`` (and the name), or ``kind:(unlinked)`` once the
    actor was erased (the event then names no one: docs/design.md, "Actors")."""
    if ev.event is None:
        return "-"
    kind = ev.event["actor"].get("kind", "?")
    actor = ev.who
    if actor is None:
        return f"{kind}:(unlinked)"
    who = actor.get("id") or actor.get("client_id") or "-"
    name = actor.get("name")
    return f"{kind}:{who}" + (f" ({name})" if name and name != who else "")


def _part(ev: AuditedEvent) -> tuple[str, int, int] | None:
    """A part of a request split into linked events (``x.part`` of ``x.parts``): its
    request id, part number and count; None for any other event."""
    e = ev.event or {}
    x = e.get("x")
    if not isinstance(x, dict):
        return None
    part, parts = x.get("part"), x.get("parts")
    if type(part) is not int or type(parts) is not int or parts < 2 or not 0 <= part < parts:
        return None
    return str(e.get("corr", {}).get("req", "-")), part, parts


_MISSING_NAMED = 10  # missing parts a line names before it counts the rest


class _Parts:
    """The parts of split requests a search met: at its end, each request some of whose
    parts it did not meet is named on stderr as incomplete (it never reads as whole)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], set[int]] = {}

    def add(self, ev: AuditedEvent) -> None:
        p = _part(ev)
        if p is not None:
            self.seen.setdefault((p[0], p[2]), set()).add(p[1])

    def report(self) -> None:
        for (req, parts), got in self.seen.items():
            if len(got) >= parts:
                continue
            # the first few missing only: x.parts is the submitter's word, up to 2**53
            # (red team 20: a million parts named a million numbers on one line)
            missing = [str(i + 1) for i in itertools.islice(
                (i for i in range(parts) if i not in got), _MISSING_NAMED
            )]  # fmt: skip
            if parts - len(got) > _MISSING_NAMED:
                missing.append(f"... ({parts - len(got)} in all)")
            if missing:
                print(
                    one_line(
                        f"tlog-client: request {req} is incomplete: part(s) {', '.join(missing)} "
                        f"of its {parts} not found (search --req {req} for all of its events; "
                        "parts missing there never reached the log: what the request did is "
                        "not all recorded)"
                    ),
                    file=sys.stderr,
                )


def _line(ev: AuditedEvent) -> str:
    if ev.event is None:
        return f"{ev.index:>10}  {iso_ms(ev.leaf.ts)}  (erased)  leaf {b64encode(ev.leaf_hash)}"
    e = ev.event
    p = _part(ev)
    return (
        f"{ev.index:>10}  {iso_ms(ev.leaf.ts)}  {e.get('op', '?'):8} {e.get('outcome', '?'):8}"
        f" {e.get('rt', '?')}/{e.get('rid', '-')}  {_actions(ev)}"
        f"  by {actor_text(ev)}  req {e.get('corr', {}).get('req', '-')}"
        + ("" if p is None else f" part {p[1] + 1} of {p[2]}")
    )


def cmd_search(args: argparse.Namespace) -> int:
    parts = _Parts()
    with _client(args) as c:
        for ev in _events(c, args):
            parts.add(ev)
            if args.json:
                print(json_line(json.dumps(_summary(ev), ensure_ascii=False)))
            else:
                print(one_line(_line(ev)))
    parts.report()
    return EXIT_OK


def _summary(ev: AuditedEvent) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": ev.index,
        "leaf_hash": b64encode(ev.leaf_hash),
        "ts": ev.leaf.ts,
        "tree_size": ev.tree_size,
        "erased": ev.erased,
        "leaf": b64encode(ev.leaf.encode()),
    }
    if ev.event is not None:
        out["event"] = json.loads(event_to_json(ev.event))
        out["origin"] = ev.origin
        # Who acted, verified against the event's actor.sd when it is a pseudonym; None
        # (with actor_unlinked) once the actor was erased.
        out["actor"] = None if ev.who is None else actor_to_json(ev.who)
        if ev.who is None:
            out["actor_unlinked"] = True
    if ev.effect is not None:  # the log's reading of what the request did (its state)
        out["effect"] = ev.effect
        out["effect_attested"] = ev.effect_attested
    if ev.nonce is not None:  # with leaf and event: `tlog-client verify --event --nonce`
        out["nonce"] = b64encode(ev.nonce)
    return out


def cmd_show(args: argparse.Namespace) -> int:
    parts = _Parts()
    with _client(args) as c:
        for ev in _events(c, args):
            parts.add(ev)
            print(json_line(json.dumps(_summary(ev), ensure_ascii=False, sort_keys=True)))
    parts.report()
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr.isatty() and not args.quiet)
    bodies = erased = 0
    sizes: set[int] = set()
    with _client(args) as c:
        for ev in _events(c, args):
            progress.tick()
            sizes.add(ev.tree_size)
            if ev.erased:
                erased += 1
            else:
                bodies += 1
    progress.done()
    print(
        f"verified {bodies + erased} events ({bodies} bodies with their commitments, "
        f"{erased} erased): signatures, consistency, inclusion, tenant"
    )
    if sizes:
        print(f"  checkpoints at tree sizes {min(sizes)}..{max(sizes)}, all consistent")
    return EXIT_OK


def _receipt(
    c: ScimAuditClient, http: httpx.Client, base: str, ev: AuditedEvent, verifier: Ed25519Verifier
) -> str:
    r = http.get(f"{base}/v1/bundle/{ev.index}", params={"tree_size": ev.tree_size})
    if r.status_code != 200:
        raise ScimAuditError(r.status_code, r.text[:200])
    proof = TlogProof.parse(r.text)
    cp, _ = proof.verify(verifier, leaf=ev.leaf_hash)
    if proof.index != ev.index or cp.root_hash != ev.checkpoint.root_hash:
        raise VerificationError(f"the receipt for index {ev.index} is not for the verified tree")
    return r.text


def cmd_export(args: argparse.Namespace) -> int:
    out_path = Path(args.out)
    if out_path.exists():
        raise _Usage(f"{out_path} exists; not overwriting it")
    verifier = Ed25519Verifier.from_vkey(args.vkey)
    own = getattr(args, "http", None) is None
    http = args.http if not own else http_client(timeout=args.timeout)
    progress = _Progress(sys.stderr.isatty() and not args.quiet)
    events: list[dict[str, Any]] = []
    tenant = None
    try:
        with ScimAuditClient(
            args.url, _token(args.token_file), args.vkey, http=http, timeout=args.timeout
        ) as c:
            tn = c.tenant_ref()
            base = args.url.rstrip("/")
            for ev in _events(c, args):
                e: dict[str, Any] = {
                    "index": ev.index,
                    "leaf": b64encode(ev.leaf.encode()),
                    "leaf_hash": b64encode(ev.leaf_hash),
                    "erased": ev.erased,
                    "tlog_proof": _receipt(c, http, base, ev, verifier),
                }
                if ev.event is not None and ev.nonce is not None:
                    e["eid"] = ev.event["eid"]
                    e["event"] = json.loads(event_to_json(ev.event))
                    e["nonce"] = b64encode(ev.nonce)
                    tenant = ev.event["tenant"]
                events.append(e)
                progress.tick()
    finally:
        if own:
            http.close()
    progress.done()
    doc = {
        "format": "tlog-scim-evidence@v1",
        "origin": verifier.name,
        "vkey": args.vkey,
        "policy": None,
        "tenant": tenant if tenant is not None else (args.tenant or ""),
        "tn": b64encode(tn),
        "exported": int(time.time() * 1000),
        "events": events,
    }
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    print(
        f"exported {len(events)} verified events to {out_path} (mode 0600); check it "
        f"offline with: tlog-client scim verify-evidence {out_path} --vkey {args.vkey}"
    )
    return EXIT_OK


def _run(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except _Usage as exc:
            print(f"tlog-client: error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except (VerificationError, FormatError) as exc:
            print(f"tlog-client: VERIFICATION FAILED: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_FAILED
        except ScimAuditError as exc:
            print(f"tlog-client: error: the log answered {one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except (httpx.HTTPError, HTTPFailure, OSError, ValueError) as exc:
            print(f"tlog-client: error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR

    return run


def cmd_verify_evidence(args: argparse.Namespace) -> int:
    """Check an evidence bundle offline (from ``export`` or the console's "Export evidence")."""
    try:
        policy = Policy.parse(read_input(args.policy, MAX_POLICY_SIZE)) if args.policy else None
        if args.vkey is not None:
            verifier = Ed25519Verifier.from_vkey(args.vkey)
        elif policy is not None and len(policy.logs) == 1:
            verifier = policy.logs[0].verifier
        else:
            raise ValueError("--vkey is required (or a --policy that lists exactly one log)")
        data = read_input(args.bundle, MAX_EVIDENCE_SIZE)
        tn = b64decode_strict(args.tenant_ref, size=16) if args.tenant_ref else None
    except (OSError, ValueError) as exc:
        print(f"tlog-client: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    try:
        report = verify_evidence(data, verifier, policy, tenant_ref=tn)
    except (VerificationError, FormatError) as exc:
        print(f"tlog-client: EVIDENCE DOES NOT VERIFY: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    for line in describe(report):
        print(one_line(line))
    return EXIT_OK


def register(scim: Any) -> None:
    """Add the auditor commands to the ``tlog-client scim`` subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("url", help="the log's base URL")
        p.add_argument("--vkey", required=True, help="the log's verifier key")
        p.add_argument("--token-file", help="file holding an auditor token (else TLOG_TOKEN)")
        p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
        add_filter_args(p)

    s = scim.add_parser("search", help="list a tenant's verified events, one line each")
    common(s)
    s.add_argument("--limit", type=int, help="stop after this many events")
    s.add_argument("--json", action="store_true", help="one JSON object per event")
    s.set_defaults(run=_run(cmd_search))

    sh = scim.add_parser("show", help="print verified, decrypted event bodies (JSON lines)")
    common(sh)
    sh.add_argument("--limit", type=int, help="stop after this many events")
    sh.set_defaults(run=_run(cmd_show))

    v = scim.add_parser("verify", help="verify every matching event and summarise")
    common(v)
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(run=_run(cmd_verify))

    e = scim.add_parser(
        "export",
        help="write an evidence bundle an outside auditor verifies "
        "offline with only the log's public key",
    )
    common(e)
    e.add_argument("--out", required=True, help="bundle file to create (mode 0600)")
    e.add_argument("--tenant", help="tenant name to record when every event is erased")
    e.add_argument("--limit", type=int, help="stop after this many events")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_run(cmd_export))

    v = scim.add_parser(
        "verify-evidence",
        aliases=["verify-bundle"],
        help="verify an evidence bundle (from export or the console) offline",
        description="Check every receipt, leaf, tenant ref and commitment of a "
        "tlog-scim-evidence@v1 bundle against the log key (and witness policy).",
    )
    v.add_argument("bundle", help="the evidence .json file, or - for standard input")
    v.add_argument("--vkey", help="the log's verifier key")
    v.add_argument("--policy", help="c2sp.org/tlog-policy file: witness keys and quorum")
    v.add_argument("--tenant-ref", help="the tenant's tn (base64) to require")
    v.set_defaults(run=cmd_verify_evidence)
