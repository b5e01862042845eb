"""The ``tlog-witness`` configuration file (TOML). Every key, once::

    name = "witness.example.com/w1"   # cosigner name; must equal the key file's name
    key_file = "witness.key"          # PRIVATE+KEY+<name>+<id>+<b64(0x04||seed)>, mode 0600
    mldsa_key_file = "witness-mldsa.key"  # optional: also cosign with ML-DSA-44 (0x06 seed)
    state_db = "witness.db"           # SQLite state (created if missing)
    listen = "127.0.0.1:7380"         # host:port for `serve` ("[::1]:7380" for IPv6)
    gossip_interval = 300             # optional, seconds between gossip rounds (default 300)
    missing_proof_rounds = 3          # optional, rounds a log may refuse a proof (default 3)
    http_timeout = 10                 # optional, seconds for outgoing requests (default 10)
    header_timeout = 10               # optional, seconds to send a request head (default 10)
    idle_timeout = 30                 # optional, seconds a keep-alive may idle (default 30)
    body_timeout = 10                 # optional, seconds to send a request body (default 10)
    write_timeout = 30                # optional, seconds a response may stay unread (default 30)
    state_timeout = 60                # optional, seconds a request waits on the state (default 60)
    max_connections = 512             # optional, connections + requests before 503s
    log_lists = ["https://example.org/logs.txt"]  # optional logs/v0 lists `serve` pulls
    log_list_interval = 3600          # optional, seconds between pulls (default 3600)

    [[log]]                           # one table per witnessed log
    origin = "scim-log.example.com/audit"
    vkey = "scim-log.example.com/audit+d55b5a85+AQ..."   # Ed25519 (0x01) or ML-DSA-44 (0x06)
    url = "https://scim-log.example.com/audit"            # optional: enables polling/proofs
    poll_interval = 60                                    # optional, seconds (default 60)

    [[peer]]                          # other witnesses to gossip with
    name = "w2"                       # label used in reports
    vkey = "witness2.example.com+...+BA..."              # its cosignature key (0x04 or 0x06)
    url = "https://witness2.example.com"                 # its monitoring prefix

Relative paths are relative to the configuration file. Unknown keys are errors (a typo must
not silently disable a check). Trust: the log vkeys decide what the witness cosigns; peers
are not trusted at all, their checkpoints only count if the log signed them.
"""

from __future__ import annotations

import difflib
import logging
import os
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.formats.cosignature import (
    CosignatureSigner,
    MLDSACosignatureSigner,
    cosignature_verifier,
)
from client.formats.note import FormatError
from client.witness.core import WitnessedLog
from client.witness.loglist import log_verifier
from client.witness.monitor import Peer
from client.witness.server import ServerLimits

__all__ = ["ConfigError", "KeyFileUnreadable", "WitnessConfig", "load_signer"]

logger = logging.getLogger("client.witness")


class ConfigError(ValueError):
    """The configuration file or the key file is unusable."""


class KeyFileUnreadable(ConfigError):
    """The key file cannot be read (missing, permissions): ``check`` can do without it."""


_TOP = {
    "name",
    "key_file",
    "mldsa_key_file",
    "state_db",
    "listen",
    "gossip_interval",
    "missing_proof_rounds",
    "http_timeout",
    "header_timeout",
    "idle_timeout",
    "body_timeout",
    "write_timeout",
    "state_timeout",
    "max_connections",
    "log_lists",
    "log_list_interval",
    "log",
    "peer",
}
_LOG = {"origin", "vkey", "url", "poll_interval"}
_PEER = {"name", "vkey", "url"}


def _take(table: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    if key not in table:
        if default is None:
            raise ConfigError(f"{where}: missing {key!r}")
        return default
    value = table[key]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        hints = [
            f"{k} (did you mean {close[0]}?)" if close else k
            for k in unknown
            for close in [difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.75)]
        ]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}")


def _tables(
    doc: dict[str, Any], name: str, allowed: set[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``[[name]]`` array of tables, each checked for unknown keys, with its label."""
    raw = doc.get(name, [])
    if not isinstance(raw, list):
        raise ConfigError(f"config: '{name}' must be an array of tables ([[{name}]])")
    for i, t in enumerate(raw):
        where = f"{name} #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: must be a table")
        _check_keys(t, allowed, where)
        yield where, t


def _url(value: str, where: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url must start with http:// or https://")
    return value.rstrip("/")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ConfigError("listen must be host:port")
    host = host.removeprefix("[").removesuffix("]")
    port = int(port_s)
    if port > 65535:
        raise ConfigError("listen port out of range")
    return host, port


def _log_lists(doc: dict[str, Any], base: Path) -> tuple[str, ...]:
    """``log_lists``: http(s) URLs, or files relative to the configuration file."""
    raw = doc.get("log_lists", [])
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError("config: 'log_lists' must be an array of non-empty strings")
    return tuple(x if x.startswith(("http://", "https://")) else str(base / x) for x in raw)


def load_signer(path: Path) -> CosignatureSigner:
    """Read a cosignature key file; warn if others can read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileUnreadable(f"cannot read key file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("key file %s is accessible by group/others (mode %o)", path, mode & 0o777)
    try:
        return CosignatureSigner.from_skey(text)
    except FormatError as exc:
        raise ConfigError(f"key file {path}: {exc}") from None


@dataclass(frozen=True)
class WitnessConfig:
    name: str
    key_file: Path
    state_db: Path
    listen: tuple[str, int]
    logs: tuple[WitnessedLog, ...]
    peers: tuple[Peer, ...]
    gossip_interval: float = 300.0
    missing_proof_rounds: int = 3
    http_timeout: float = 10.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    mldsa_key_file: Path | None = None
    log_lists: tuple[str, ...] = ()
    log_list_interval: float = 3600.0

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WitnessConfig:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
        return cls.from_dict(doc, base=p.resolve().parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path) -> WitnessConfig:
        _check_keys(doc, _TOP, "config")
        name = _take(doc, "name", str, "config")
        key_file = base / _take(doc, "key_file", str, "config")
        state_db = base / _take(doc, "state_db", str, "config")
        listen = _listen(_take(doc, "listen", str, "config"))
        gossip_interval = _take(doc, "gossip_interval", float, "config", 300.0)
        rounds = _take(doc, "missing_proof_rounds", int, "config", 3)
        timeout = _take(doc, "http_timeout", float, "config", 10.0)
        if gossip_interval <= 0 or timeout <= 0 or rounds < 1:
            raise ConfigError("config: intervals must be positive, missing_proof_rounds >= 1")
        list_interval = _take(doc, "log_list_interval", float, "config", 3600.0)
        if list_interval <= 0:
            raise ConfigError("config: 'log_list_interval' must be positive")
        d = ServerLimits()
        try:
            limits = ServerLimits(
                header_timeout=_take(doc, "header_timeout", float, "config", d.header_timeout),
                idle_timeout=_take(doc, "idle_timeout", int, "config", d.idle_timeout),
                body_timeout=_take(doc, "body_timeout", float, "config", d.body_timeout),
                write_timeout=_take(doc, "write_timeout", float, "config", d.write_timeout),
                max_connections=_take(doc, "max_connections", int, "config", d.max_connections),
                state_timeout=_take(doc, "state_timeout", float, "config", d.state_timeout),
            )
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None

        logs: list[WitnessedLog] = []
        for where, t in _tables(doc, "log", _LOG):
            origin = _take(t, "origin", str, where)
            try:
                verifier = log_verifier(_take(t, "vkey", str, where))
            except FormatError as exc:
                raise ConfigError(f"{where}: vkey: {exc}") from None
            if verifier.name != origin:
                logger.warning(
                    "%s: key name %r differs from origin %r", where, verifier.name, origin
                )
            url = _url(_take(t, "url", str, where), where) if "url" in t else None
            interval = _take(t, "poll_interval", float, where, 60.0)
            if interval <= 0:
                raise ConfigError(f"{where}: poll_interval must be positive")
            if any(lg.origin == origin for lg in logs):
                raise ConfigError(f"{where}: duplicate origin {origin!r}")
            logs.append(WitnessedLog(origin, (verifier,), url, interval))

        peers: list[Peer] = []
        for where, t in _tables(doc, "peer", _PEER):
            pname = _take(t, "name", str, where)
            try:
                pv = cosignature_verifier(_take(t, "vkey", str, where))
            except FormatError as exc:
                raise ConfigError(f"{where}: vkey: {exc}") from None
            purl = _url(_take(t, "url", str, where), where)
            if any(pr.name == pname for pr in peers):
                raise ConfigError(f"{where}: duplicate peer name {pname!r}")
            peers.append(Peer(pname, pv, purl))
        return cls(
            name,
            key_file,
            state_db,
            listen,
            tuple(logs),
            tuple(peers),
            gossip_interval,
            rounds,
            timeout,
            limits,
            base / _take(doc, "mldsa_key_file", str, "config") if "mldsa_key_file" in doc else None,
            _log_lists(doc, base),
            list_interval,
        )

    def extra_signers(self) -> tuple[MLDSACosignatureSigner, ...]:
        """The ML-DSA-44 cosigning key, if configured (same name and checks as the main key)."""
        if self.mldsa_key_file is None:
            return ()
        try:
            text = self.mldsa_key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyFileUnreadable(f"cannot read key file {self.mldsa_key_file}: {exc}") from None
        try:
            s = MLDSACosignatureSigner.from_skey(text)
        except FormatError as exc:
            raise ConfigError(f"key file {self.mldsa_key_file}: {exc}") from None
        self._check_own_key(s.name, s.public_key)
        return (s,)

    def _check_own_key(self, name: str, public_key: bytes) -> None:
        if name != self.name:
            raise ConfigError(f"key file is for {name!r}, config name is {self.name!r}")
        if any(p.verifier.public_key == public_key for p in self.peers):
            raise ConfigError("a peer has this witness's own key")
        for lg in self.logs:
            if any(getattr(v, "public_key", None) == public_key for v in lg.verifiers):
                raise ConfigError(
                    f"the witness key is log {lg.origin!r}'s own key (same private key); "
                    "generate a separate witness key with `tlog-witness keygen`"
                )

    def signer(self) -> CosignatureSigner:
        s = load_signer(self.key_file)
        self._check_own_key(s.name, s.public_key)
        return s
