"""``tlog-client scim erasure ...``: the privacy officers' workflow.

::

    tlog-client scim erasure request URL --tenant T --rt User (--rid ID | --xid ID | --user-name N)
                                         --reason CODE
    tlog-client scim erasure list URL [--all]
    tlog-client scim erasure status URL ID
    tlog-client scim erasure approve URL ID
    tlog-client scim erasure certificate URL ID [--out FILE] [--vkey VKEY]
    tlog-client scim erasure verify FILE --vkey VKEY       # offline, no token, no network

The officer's token comes from ``--token-file`` or ``TLOG_TOKEN`` (never the command line).
``certificate --vkey`` verifies what it saves; ``verify`` checks a saved certificate offline
(:func:`client.scim.erasure.verify_certificate`).

Exit codes: 0 done / verified; 1 usage, network or HTTP error; 2 does not verify.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from client.formats.merkle import VerificationError
from client.formats.note import FormatError
from client.net.core import HTTPCore, Unreachable
from client.runtime.logs import one_line
from client.scim.erasure import verify_certificate
from client.tools.cli import read_input
from client.tools.filters import iso_ms
from client.tools.scim_cli import read_secret

__all__ = ["register"]

EXIT_OK, EXIT_ERROR, EXIT_FAILED = 0, 1, 2

# A certificate: a tlog-proof (at most 1 MiB), an event and a leaf; anything larger is junk.
MAX_CERTIFICATE_SIZE = 4 << 20


class _Fail(Exception):
    pass


def _token(args: argparse.Namespace) -> str:
    try:
        token = read_secret(args.token_file, "TLOG_TOKEN", "token")
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    if token is None:
        raise _Fail("a privacy-officer token is required: --token-file or TLOG_TOKEN")
    return token


# Bytes of an answer at most: a certificate or a request is a few KiB; a list of every
# request ever made (``list --all``) stays far below this.
ANSWER_LIMIT = 16 << 20


def _call(
    args: argparse.Namespace,
    http: httpx.Client | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> Any:
    """One request through :class:`client.net.core.HTTPCore`: over :func:`http_client`'s
    sockets unless ``http`` is given, so the whole answer (head included) must arrive within
    ``ANSWER_TIME_FACTOR`` times ``--timeout`` and may hold at most :data:`ANSWER_LIMIT`
    bytes; a log that drips or floods its answer is a one-line error, not a hang."""
    headers = {"Authorization": f"Bearer {_token(args)}"}
    content = None
    if body is not None:
        content = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    with HTTPCore(args.url, http, timeout=args.timeout) as core:
        try:
            r = core.send(method, path, limit=ANSWER_LIMIT, content=content, headers=headers)
        except Unreachable as exc:
            raise _Fail(f"cannot reach the log: {_one_line(exc)}") from None
        except FormatError as exc:  # larger than the limit, or not decodable
            raise _Fail(f"bad answer from the log: {_one_line(exc)}") from None
    try:
        doc = r.json()
    except FormatError:
        doc = None
    if r.status >= 400:
        reason = doc.get("error") if isinstance(doc, dict) else r.text[:200]
        raise _Fail(f"HTTP {r.status}: {_one_line(reason)}")
    return doc


def _one_line(what: object) -> str:
    return " ".join(str(what).split())


def _when(ms: object) -> str:
    return iso_ms(ms) if type(ms) is int and 0 <= ms < 253_402_300_800_000 else str(ms)  # <= 9999


def _show(st: dict[str, Any]) -> str:
    parts = [
        st["id"],
        st["state"],
        f"tenant={st['tenant']}",
        f"rt={st['rt']}",
        f"by={st.get('kind', '?')}",
        f"reason={st['reason']}",
        f"requested_by={st['requested_by']}({st.get('requester', '')})",
        f"created={_when(st['created'])}",
        f"expires={_when(st['expires'])}",
    ]
    if "approved_by" in st:
        parts.append(f"approved_by={st['approved_by']}({st.get('approver', '')})")
    return " ".join(parts)


def _request(args: argparse.Namespace, http: httpx.Client | None) -> int:
    ids = [(k, v) for k, v in (("rid", args.rid), ("xid", args.xid), ("userName", args.user_name))
           if v is not None]  # fmt: skip
    if len(ids) != 1:
        raise _Fail("name the subject with exactly one of --rid, --xid, --user-name")
    body = {"tenant": args.tenant, "rt": args.rt, ids[0][0]: ids[0][1], "reason": args.reason}
    st = _call(args, http, "POST", "/v1/scim/erasures", body)
    print(one_line(_show(st)))
    print("a second person must approve: tlog-client scim erasure approve URL " + st["id"])
    return EXIT_OK


def _list(args: argparse.Namespace, http: httpx.Client | None) -> int:
    doc = _call(args, http, "GET", "/v1/scim/erasures" + ("?state=all" if args.all else ""))
    for st in doc["erasures"]:
        print(one_line(_show(st)))
    if not doc["erasures"]:
        print("no pending erasure requests" if not args.all else "no erasure requests")
    return EXIT_OK


def _status(args: argparse.Namespace, http: httpx.Client | None) -> int:
    print(one_line(_show(_call(args, http, "GET", f"/v1/scim/erasures/{args.id}"))))
    return EXIT_OK


def _approve(args: argparse.Namespace, http: httpx.Client | None) -> int:
    st = _call(args, http, "POST", f"/v1/scim/erasures/{args.id}/approve", {})
    print(one_line(_show(st)))
    return EXIT_OK


def _describe(doc: dict[str, Any], vkey: str) -> str:
    v = verify_certificate(doc, vkey)
    return (
        f"VERIFIED erasure {v.request}: approved at {_when(v.erased_at)} in log {v.origin}, "
        f"event #{v.index} included in the signed checkpoint of size {v.tree_size}; "
        f"subject type {v.subject_rt}, reason {v.reason}, keys sha256 {v.kid_hash}, "
        f"requested by {v.requested_by}, approved by {v.approved_by}"
    )


def _certificate(args: argparse.Namespace, http: httpx.Client | None) -> int:
    doc = _call(args, http, "GET", f"/v1/scim/erasures/{args.id}/certificate")
    if args.vkey:
        print(one_line(_describe(doc, args.vkey)))
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text, "utf-8")
        print(f"certificate written to {args.out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _verify(args: argparse.Namespace, http: httpx.Client | None) -> int:
    data = read_input(args.file, MAX_CERTIFICATE_SIZE)
    try:  # a certificate comes from anyone: bytes that are no JSON are refused, not a crash
        doc = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError too
        raise FormatError(f"not JSON: {exc}") from None
    except RecursionError:
        raise FormatError("not JSON: nested too deeply") from None
    print(one_line(_describe(doc, args.vkey)))
    return EXIT_OK


def _runner(
    fn: Callable[[argparse.Namespace, httpx.Client | None], int],
) -> Callable[..., int]:
    def run(args: argparse.Namespace, http: httpx.Client | None = None) -> int:
        try:
            return fn(args, http)
        except (VerificationError, FormatError) as exc:
            print(f"DOES NOT VERIFY: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_FAILED
        except (_Fail, OSError) as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR

    return run


def register(scim: Any) -> None:
    """Add ``erasure`` to the ``tlog-client scim`` subcommands."""
    e = scim.add_parser(
        "erasure",
        help="privacy officers: request, list, approve erasures; certificates",
        description="Crypto-shredding with dual control by two people, and erasure "
        "certificates verifiable offline.",
    )
    sub = e.add_subparsers(dest="erasure_cmd", required=True)

    def online(name: str, help: str, fn: Callable[..., int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("url", help="the log's base URL")
        p.add_argument("--token-file", help="file holding the officer's token (else TLOG_TOKEN)")
        p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
        p.set_defaults(run=_runner(fn))
        return p

    r = online("request", "request the erasure of a data subject (first person)", _request)
    r.add_argument("--tenant", required=True)
    r.add_argument("--rt", default="User", help="resource type (default User)")
    r.add_argument("--rid", help="the subject's SCIM id")
    r.add_argument("--xid", help="the subject's externalId")
    r.add_argument("--user-name", help="the subject's userName (failed creates without an id)")
    r.add_argument("--reason", required=True, help="reason code, e.g. gdpr-art17")
    ls = online("list", "list pending erasure requests (who, when, expiry)", _list)
    ls.add_argument("--all", action="store_true", help="also done and expired requests")
    st = online("status", "show one erasure request", _status)
    st.add_argument("id")
    ap = online("approve", "approve a request (a second person)", _approve)
    ap.add_argument("id")
    c = online("certificate", "fetch the erasure certificate of a done request", _certificate)
    c.add_argument("id")
    c.add_argument("--out", help="write it to this file (default: standard output)")
    c.add_argument("--vkey", help="verify it against the log's verifier key before saving")
    v = sub.add_parser("verify", help="verify an erasure certificate offline")
    v.add_argument("file", help="the certificate JSON file, or - for standard input")
    v.add_argument("--vkey", required=True, help="the log's verifier key")
    v.set_defaults(run=_runner(_verify))
