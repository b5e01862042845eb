"""The search filters an auditor's commands take (``tlog-client scim search|show|verify|export``
and ``scim stream``), declared once: the same flags, the same help and the same reading.

* ``--rid --xid --actor --action --outcome --req``: exact values the log's search index holds;
* ``--ref ID [--ref-rt RT]``: events that *name* the subject ``RT/ID`` (default ``User``)
  without being about it: the groups it was added to or removed from, the users it manages.
  The log turns the id into the tenant's pseudonym (the events hold only that), so an
  auditor searches with the id the service provider uses;
* ``--since/--until`` (not for ``stream``, whose cursor says where it is): the events' public
  log time, as milliseconds since the epoch, an ISO 8601 date or time (``2026-12-01``,
  ``2026-12-01T09:30``, ``2026-12-01T09:30:00+01:00``; without an offset: UTC), or a span
  back from now (``90s``, ``30m``, ``24h``, ``7d``, ``2w``).
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["EXACT", "add_filter_args", "filters_of", "iso_ms", "parse_when"]

EXACT = ("rid", "xid", "actor", "action", "outcome", "req")

_SPAN = re.compile(r"([1-9][0-9]{0,8})([smhdw])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Log times are milliseconds that fit the leaf's uint64; an ISO year is at most 9999.
_MAX_MS = (1 << 63) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_when(text: str, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch of a ``--since``/``--until`` value (see the module's
    text); ValueError with what was expected for anything else."""
    s = text.strip()
    if s.isascii() and s.isdigit():
        ms = int(s)
        if ms > _MAX_MS:
            raise ValueError(f"{text!r}: milliseconds out of range")
        return ms
    span = _SPAN.fullmatch(s)
    if span is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(now - int(span.group(1)) * _UNIT_MS[span.group(2)], 0)
    try:
        when = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give milliseconds since the epoch, an ISO 8601 date or "
            "time (2026-12-01, 2026-12-01T09:30Z), or a span back from now (30m, 24h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # In integers: timestamp() * 1000, a float, lost a millisecond now and then, and a time
    # printed by iso_ms must read back as the same millisecond.
    delta = when - _EPOCH
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if ms < 0:
        raise ValueError(f"{text!r} is before 1970")
    return ms


def iso_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds of a log time in ms (what the auditor's commands
    print; :func:`parse_when` reads it back)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _when(text: str) -> int:
    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_filter_args(p: argparse.ArgumentParser, *, times: bool = True) -> None:
    """Add the filter flags to ``p`` (``times=False``: without ``--since/--until``)."""
    for f in EXACT:
        p.add_argument(f"--{f}", help=f"only events with this {f}")
    p.add_argument(
        "--ref",
        metavar="ID",
        help="only events naming the subject with this id (of --ref-rt) without being about "
        "it: its groups' member changes, its reports' manager changes",
    )
    p.add_argument(
        "--ref-rt", default=None, metavar="RT", help="resource type of --ref (default User)"
    )
    if times:
        when = "ms since the epoch, ISO 8601 (UTC unless an offset is given) or a span (24h, 7d)"
        p.add_argument("--since", type=_when, help=f"only events logged at or after this: {when}")
        p.add_argument("--until", type=_when, help=f"only events logged before this: {when}")


def filters_of(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :meth:`client.net.scim_audit.ScimAuditClient.search` that
    ``args`` sets; ``--ref-rt`` without ``--ref`` is a usage error (ValueError)."""
    out: dict[str, Any] = {f: getattr(args, f) for f in EXACT if getattr(args, f) is not None}
    if args.ref is not None:
        out["ref"] = args.ref
        if args.ref_rt is not None:
            out["ref_rt"] = args.ref_rt
    elif args.ref_rt is not None:
        raise ValueError("--ref-rt needs --ref")
    for n in ("since", "until"):
        v = getattr(args, n, None)
        if v is not None:
            out[n] = v
    return out
