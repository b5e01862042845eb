"""The configuration of ``tlog scim-proxy`` (:mod:`client.adapters.proxy`), alone.

It imports none of the proxy (no HTTP client, no outbox, no middleware), so that ``tlog``,
which builds every command's options at each start (``tlog serve``, ``tlog token``,
``tlog --help``), does not load the proxy's modules to describe its settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from client.runtime.server_limits import ServerLimits
from client.runtime.settings import LOG_FORMATS, LOG_LEVELS, setting, table

__all__ = ["ProxyConfig"]


@dataclass(frozen=True)
class ProxyConfig:
    """``tlog scim-proxy``: the auditing reverse proxy in front of a SCIM service provider.

    Every default is defined here once; ``tlog scim-proxy`` fills the fields in from flags,
    ``TLOG_PROXY_*`` environment variables and ``--config FILE`` (:mod:`tlog.config`)."""

    upstream: str | None = setting(
        None, "SCIM base URL of the service provider, e.g. http://127.0.0.1:9000/v2 (required)"
    )
    log_url: str | None = setting(None, "base URL of the tlog server (required)", flag="--log")
    log_origin: str | None = setting(
        None, "the log's origin: refuse to start against a log with another one"
    )
    log_key: str | None = setting(
        None,
        "the log's verifier key (origin+id+key, as 'tlog serve' prints it): every receipt "
        "is verified under it, and the proxy refuses to start against a log whose checkpoint "
        "does not verify under it (required, unless --log-key-tofu)",
    )
    log_key_tofu: bool = setting(
        False,
        "trust on first use instead of --log-key: pin the key the log names at the first "
        "contact (a WARNING names it); for trials, not for production",
    )
    token_file: Path | None = setting(
        None, "file holding a submitter token bound to --tenant (required)"
    )
    tenant: str | None = setting(None, "the tenant the events belong to (required)")
    sp_id: str | None = setting(None, "this service provider's id in the events (required)")
    listen: str = setting("127.0.0.1:8081", "host:port to listen on")
    outbox: Path = setting(Path("scim-outbox.sqlite"), "SQLite outbox file")
    outbox_max_mb: float | None = setting(
        None, "cap on the outbox size in MiB; beyond it writes fail (closed: 503)"
    )
    fail_open: bool = setting(
        False,
        "pass SCIM responses through when the event cannot be recorded "
        "(default: fail closed with 503)",
    )
    durable_intents: bool = setting(
        False,
        "flush each write-ahead intent to disk before forwarding its write (one fdatasync "
        "shared by the writes in flight), so that it survives a machine crash or power "
        "loss; without it an intent survives a kill of the proxy, not of the machine",
    )
    intent_wait: float = setting(
        5.0,
        "seconds a write waits for its write-ahead intent to be in the journal before it is "
        "refused, not forwarded (503: the journal's disk stalls); also when the disk is said "
        "stalled (readyz) and how long a shutdown waits for it; above 0, at most 300",
    )
    receipt_timeout: float = setting(
        0.0,
        "seconds to wait for the log's receipt before answering (0: answer once the event "
        "is in the outbox)",
    )
    base_path: str | None = setting(
        None, "SCIM base path for the audit records (default: the upstream's path)"
    )
    preserve_host: bool = setting(
        False, "forward the client's Host header instead of the upstream's"
    )
    forwarded: bool = setting(True, "add X-Forwarded-For/-Proto/-Host")
    upstream_timeout: float = setting(60.0, "seconds per read/write on the upstream (then 504)")
    pseudonym_timeout: float = setting(
        2.0,
        "seconds to wait for the log's pseudonyms of a request's group members (then the "
        "event is recorded without them and says so)",
    )
    upstream_connections: int = setting(
        64, "requests in flight to the upstream at most; the rest wait in the proxy"
    )
    log_level: str = setting("info", "logging level", choices=LOG_LEVELS)
    log_format: str = setting(
        "text", "log line format (json: one JSON object a line)", choices=LOG_FORMATS
    )
    server: ServerLimits = table(ServerLimits, "connection limits and timeouts", flat=True)

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "upstream",
        "log_url",
        "token_file",
        "tenant",
        "sp_id",
    )
