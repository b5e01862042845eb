"""The ``tlog-client`` command: audit a log, verify an offline proof.

::

    tlog-client audit <log URL> --vkey VKEY [--policy FILE] [--state FILE] [--workers N]
    tlog-client verify <bundle file|-> --vkey VKEY [--policy FILE] (--entry FILE | --leaf-hash B64)
                       [--event FILE --nonce B64]

``verify --event``: the entry is a SCIM leaf ``{v, ts, tn, c}``; the event body (its JSON form,
as ``tlog-client scim show`` prints it under ``event``, or its deterministic CBOR) must be the
one the leaf commits to, ``c == HMAC-SHA256(nonce, det_cbor(event))``.

``--vkey`` may be left out when ``--policy`` lists exactly one log key that fits (for
``audit``: the log whose URL is the one given, or the only log; for ``verify``: the only log
for the bundle's origin).

Exit codes (the same for both commands):

== ==========================================================================================
0  verified
1  usage error, unreadable input or state file, network or HTTP error, interrupted: nothing
   was proven either way (an interrupted audit keeps its progress and resumes next time)
2  verification failed: bad or missing log signature, wrong origin, bad cosignature, root
   mismatch, inconsistent or rolled-back checkpoint, a tile that differs from the entries,
   malformed data from the log, or a proof bundle that does not verify or parse
3  everything verified except the witness quorum required by ``--policy``
== ==========================================================================================
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import httpx

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import (
    Ed25519Verifier,
    FormatError,
    b64decode_strict,
    b64encode,
    parse_note,
)
from client.formats.policy import Policy
from client.formats.proof_bundle import MAX_BUNDLE_SIZE, TlogProof
from client.formats.tiles import MAX_ENTRY_SIZE
from client.net.core import http_client
from client.net.logclient import (
    LogClient,
    LogClientError,
    QuorumNotMet,
    VerifiedBundle,
    verify_tlog_proof,
)
from client.runtime.logs import one_line
from client.tools.auditor import Auditor, AuditResult, StateError

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_OK", "EXIT_QUORUM", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILED = 2
EXIT_QUORUM = 3

PROG = "tlog-client"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; 2 means "verification failed" here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _err(msg: str) -> None:
    print(f"{PROG}: {one_line(msg)}", file=sys.stderr)


class TerminalProgress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        width = 30
        fill = int(width * done / total) if total else width
        bar = "#" * fill + "-" * (width - fill)
        sys.stderr.write(f"\raudit [{bar}] {done:,}/{total:,} entries {pct:5.1f}% {rate:,.0f}/s ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _read_policy(path: str | None) -> Policy | None:
    if path is None:
        return None
    try:
        return Policy.parse(read_input(path, MAX_POLICY_SIZE))
    except OSError as exc:
        raise UsageError(f"cannot read policy {path}: {exc.strerror or exc}") from None
    except FormatError as exc:
        raise UsageError(f"bad policy {path}: {exc}") from None


def _log_key(vkey: str | None, policy: Policy | None, *, url: str | None = None) -> Ed25519Verifier:
    if vkey is not None:
        try:
            return Ed25519Verifier.from_vkey(vkey)
        except FormatError as exc:
            raise UsageError(f"bad --vkey: {exc}") from None
    if policy is None:
        raise UsageError("--vkey is required (or a --policy that lists the log)")
    logs = list(policy.logs)
    if url is not None and len(logs) > 1:
        logs = [lg for lg in logs if (lg.url or "").rstrip("/") == url.rstrip("/")]
    if len(logs) != 1:
        raise UsageError("--vkey is required: the policy does not single out one log key")
    return logs[0].verifier


# --- audit ---------------------------------------------------------------------------------


def _describe_audit(r: AuditResult, policy: Policy | None, stateful: bool = True) -> list[str]:
    cp = r.checkpoint
    lines = [
        f"verified {cp.origin} at tree size {cp.size}",
        f"  root      {b64encode(cp.root_hash)}",
    ]
    if not stateful:
        lines.append(
            "  the whole tree was recomputed; without --state FILE nothing is remembered, so "
            "this run cannot tell whether the log rewrote what an earlier run verified"
        )
    elif r.previous_size is None:
        lines.append("  first audit of this log: the whole tree was recomputed")
    else:
        lines.append(
            f"  consistent with size {r.previous_size} verified before "
            "(log's consistency proof and recomputed tree)"
        )
    if r.resumed_from is not None:
        lines.append(f"  resumed an interrupted audit at size {r.resumed_from}")
    rate = r.entries / r.seconds if r.seconds > 0 else 0.0
    lines.append(
        f"  {r.entries:,} new entries in {r.bundles:,} bundles, {r.tiles:,} hash tiles compared, "
        f"{r.seconds:.2f} s ({rate:,.0f} entries/s)"
    )
    if policy is not None:
        names = ", ".join(sorted(cp.cosigners)) or "none"
        lines.append(f"  cosigned by: {names} (quorum {policy.quorum!r} met)")
    return lines


def cmd_audit(args: argparse.Namespace, http: httpx.Client | None) -> int:
    policy = _read_policy(args.policy)
    verifier = _log_key(args.vkey, policy, url=args.url)
    own = http is None
    if http is None:
        http = http_client(
            timeout=args.timeout,
            headers={"User-Agent": "tlog-client"},
            limits=httpx.Limits(max_connections=2 * args.workers + 2),
        )
    try:
        try:
            client = LogClient(args.url, verifier, policy=policy, http=http)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        progress = TerminalProgress() if sys.stderr.isatty() and not args.quiet else None
        auditor = Auditor(
            client,
            state_path=Path(args.state) if args.state else None,
            workers=args.workers,
            progress=progress,
        )
        try:
            result = auditor.run()
        except KeyboardInterrupt:
            _err("interrupted" + ("; progress saved, run again to resume" if args.state else ""))
            return EXIT_ERROR
    finally:
        if own:
            http.close()
    for line in _describe_audit(result, policy, stateful=bool(args.state)):
        print(one_line(line))
    return EXIT_OK


# --- verify --------------------------------------------------------------------------------


# The largest files the offline commands read: a policy, an entry (with --event, the event).
MAX_POLICY_SIZE = 1 << 20
MAX_EVENT_FILE_SIZE = 1 << 20


def read_input(path: str, limit: int) -> bytes:
    """The bytes of file ``path`` (``-``: standard input), read up to ``limit`` bytes; a
    larger file is a :class:`FormatError`, refused without reading it all (a proof or a
    certificate comes from anyone: a sparse 1 TiB file or an endless pipe is no crash)."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{path} is larger than {limit} bytes")
    return data


def _read_input(path: str, limit: int) -> bytes:
    try:
        return read_input(path, limit)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _bundle_key(data: bytes, policy: Policy) -> Ed25519Verifier:
    """The policy's key for the bundle's origin (the bundle is parsed, not yet verified)."""
    cp = Checkpoint.parse(parse_note(TlogProof.parse(data).checkpoint_note).text)
    keys = policy.log_verifiers(cp.origin)
    if not keys:
        raise VerificationError(f"the policy lists no log for origin {cp.origin!r}")
    if len(keys) > 1:
        raise UsageError(f"the policy lists several keys for {cp.origin!r}: give --vkey")
    key = keys[0]
    if not isinstance(key, Ed25519Verifier):  # pragma: no cover - policy logs are Ed25519
        raise UsageError("the policy's log key is not an Ed25519 key")
    return key


def _describe_bundle(
    vb: VerifiedBundle, verifier: Ed25519Verifier, policy: Policy | None
) -> list[str]:
    cp = vb.checkpoint
    lines = [
        "verified c2sp.org/tlog-proof@v1",
        f"  origin    {cp.origin}",
        f"  tree size {cp.size}",
        f"  index     {vb.index}",
        f"  leaf hash {b64encode(vb.leaf_hash)}",
        f"  root      {b64encode(cp.root_hash)}",
        f"  log key   {verifier.name}+{verifier.key_id:08x}",
    ]
    if policy is None:
        others = len(parse_note(cp.note).signatures) - 1
        lines.append(f"  witnesses not checked (no --policy; {others} other signature line(s))")
    else:
        names = ", ".join(sorted(cp.cosigners)) or "none"
        lines.append(f"  cosigned by: {names} (quorum {policy.quorum!r} met)")
    return lines


def _check_body(entry: bytes, event_path: str, nonce_b64: str) -> str:
    """The SCIM leaf ``entry`` commits to the event in ``event_path`` under the nonce."""
    from client.scim.cbor import EventFormatError
    from client.scim.event import decode_event, event_from_json
    from client.scim.leaf import NONCE_SIZE, verify_commitment

    raw = _read_input(event_path, MAX_EVENT_FILE_SIZE)
    try:
        nonce = b64decode_strict(nonce_b64, size=NONCE_SIZE)
    except FormatError as exc:
        raise UsageError(f"bad --nonce: {exc}") from None
    try:
        # Deterministic CBOR starts with a map header; the JSON form with '{' or blanks.
        event = decode_event(raw) if raw[:1] and 0xA0 <= raw[0] <= 0xBF else event_from_json(raw)
    except EventFormatError as exc:
        raise UsageError(f"{event_path} is not a SCIM event: {exc}") from None
    try:
        verify_commitment(entry, event, nonce)
    except EventFormatError as exc:
        raise VerificationError(f"the entry is not a SCIM leaf: {exc}") from None
    return f"  body      commitment matches event {event.get('eid')} ({event.get('op')})"


def cmd_verify(args: argparse.Namespace) -> int:
    policy = _read_policy(args.policy)
    data = _read_input(args.bundle, MAX_BUNDLE_SIZE)
    entry: bytes | None = None
    leaf: bytes | None = None
    if (args.event is None) != (args.nonce is None):
        raise UsageError("--event and --nonce go together")
    if args.event is not None and args.entry is None:
        raise UsageError("--event needs --entry (the leaf bytes the commitment is in)")
    if args.entry is not None:
        entry = _read_input(args.entry, MAX_ENTRY_SIZE)
    else:
        try:
            leaf = b64decode_strict(args.leaf_hash, size=32)
        except FormatError as exc:
            raise UsageError(f"bad --leaf-hash: {exc}") from None
    if args.vkey is None and policy is not None:
        verifier = _bundle_key(data, policy)
    else:
        verifier = _log_key(args.vkey, policy)
    vb = verify_tlog_proof(data, verifier, policy=policy, entry=entry, leaf=leaf)
    lines = _describe_bundle(vb, verifier, policy)
    if args.event is not None and entry is not None:
        lines.append(_check_body(entry, args.event, args.nonce))
    for line in lines:
        print(one_line(line))
    return EXIT_OK


# --- main ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog=PROG,
        description="Verify a transparency log: full audits and offline tlog-proof bundles.",
        epilog="exit codes: 0 verified, 1 usage/network/IO error, 2 verification failed, "
        "3 witness quorum not met",
    )
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    a = sub.add_parser(
        "audit",
        help="download and check every entry and hash tile up to the latest checkpoint",
        description="Verify the latest checkpoint, recompute the whole tree from the entry "
        "bundles, compare every hash tile, and check consistency with the previous run.",
    )
    a.add_argument("url", help="the log's base URL (where /checkpoint and /tile/ are)")
    a.add_argument("--vkey", help="the log's verifier key (name+keyid+base64)")
    a.add_argument("--policy", help="c2sp.org/tlog-policy file: witness keys and quorum")
    a.add_argument(
        "--state", help="JSON state file: remembers the verified tree, resumes interrupted runs"
    )
    a.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    a.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v = sub.add_parser(
        "verify",
        help="verify a c2sp.org/tlog-proof@v1 bundle offline",
        description="Check a tlog-proof bundle: log signature, origin, witness quorum "
        "(with --policy) and the inclusion of the entry.",
    )
    v.add_argument("bundle", help="the .tlog-proof file, or - for standard input")
    v.add_argument("--vkey", help="the log's verifier key (name+keyid+base64)")
    v.add_argument("--policy", help="c2sp.org/tlog-policy file: witness keys and quorum")
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--entry", help="file holding the entry bytes the proof is for")
    g.add_argument("--leaf-hash", help="the entry's RFC 6962 leaf hash, base64")
    v.add_argument(
        "--event",
        help="SCIM event body (JSON, as `scim show` prints it, or det-CBOR): check that the "
        "entry (a SCIM leaf) commits to it",
    )
    v.add_argument("--nonce", help="the event's commitment nonce, base64 (with --event)")
    sc = sub.add_parser("scim", help="SCIM event service: auditor commands")
    scim = sc.add_subparsers(dest="scim_cmd", required=True, parser_class=_Parser)
    from client.tools.stream import register as register_stream

    register_stream(scim)  # stream (client/tools/stream.py)
    from client.tools.scim_cli import register as register_audit

    register_audit(scim)  # search, show, verify, export, verify-evidence (= verify-bundle)
    from client.tools.officer import register as register_officer

    register_officer(scim)  # erasure request|list|status|approve|certificate|verify
    return ap


def main(argv: Sequence[str] | None = None, *, http: httpx.Client | None = None) -> int:
    """Run the command; returns the exit code. ``http`` replaces the HTTP client (tests)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    run = getattr(args, "run", None)
    args.http = http  # the auditor commands use it (tests pass a TestClient)
    if run is not None:  # subcommands that bring their own runner (client/tools/stream.py)
        return int(run(args))
    try:
        if args.cmd == "audit":
            if args.workers < 1:
                raise UsageError("--workers must be at least 1")
            return cmd_audit(args, http)
        return cmd_verify(args)
    except UsageError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except QuorumNotMet as exc:
        _err(f"WITNESS QUORUM NOT MET: {exc}")
        return EXIT_QUORUM
    except (VerificationError, FormatError) as exc:
        what = "LOG FAILED VERIFICATION" if args.cmd == "audit" else "PROOF DOES NOT VERIFY"
        _err(f"{what}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            _err(f"note: {note}")
        return EXIT_FAILED
    except StateError as exc:
        _err(f"error: state file: {exc}")
        return EXIT_ERROR
    except LogClientError as exc:
        _err(f"error: cannot reach the log: {exc}")
        return EXIT_ERROR
    except OSError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
