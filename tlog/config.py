"""One frozen configuration object per program, every default defined once.

:class:`ServeConfig` is everything ``tlog serve`` (and the store commands) run with;
:class:`client.adapters.proxy_config.ProxyConfig` (defined beside the proxy, with the same
:func:`~client.runtime.settings.setting` fields) is everything ``tlog scim-proxy`` runs
with. Their field defaults are the only defaults: the command line, the environment and the
TOML configuration file only fill them in, in this order of precedence (highest first)::

    --flag  >  environment variable  >  --config FILE (TOML)  >  field default

Every field gets, derived from its name:

* a TOML key (``max_backlog = 100000``); a field holding a dataclass (``limits``, ``scim``)
  is a TOML table (``[limits]`` with ``max_entry_bytes = 4096``);
* a flag (``--max-backlog``; ``--limits-max-entry-bytes`` in a table; booleans get
  ``--name``, or ``--no-name`` when they default to true);
* an environment variable (``TLOG_MAX_BACKLOG``, ``TLOG_LIMITS_MAX_ENTRY_BYTES``; the
  proxy's start with ``TLOG_PROXY_``), shown in ``--help``.

**Adding a setting is one line**: a field with its default and help text::

    read_timeout: float = setting(30.0, "seconds to read a request body")

(in a table class such as :class:`tlog.limits.ScimLimits`, a plain
``max_refs: int = 1000  # ids per request`` does the same without importing this module: the
trailing comment is the help text). ``flag=`` or ``env=`` override a
derived name (kept for names that predate this module), ``choices=`` restricts values. The
program then reads ``config.read_timeout``; nothing else changes. Types understood: ``int``,
``float``, ``str``, ``bool``, ``Path`` and ``X | None`` of those. Unknown TOML keys, values of
the wrong type and unparsable environment values are errors (:class:`ConfigError`), so a typo
cannot silently fall back to a default. Relative paths in a configuration file are relative
to that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import linecache
import os
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from client.adapters.proxy_config import ProxyConfig
from client.runtime.server_limits import ServerLimits
from client.runtime.settings import LOG_FORMATS, LOG_LEVELS, setting, table
from tlog.backend import DEFAULT_MAP_SIZE, DEFAULT_VERIFY_LIMIT
from tlog.limits import Limits, ScimLimits

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ConfigError",
    "ProxyConfig",
    "ServeConfig",
    "add_arguments",
    "describe",
    "from_sources",
    "load_toml",
    "setting",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file, environment variable or flag value is unusable."""


@dataclass(frozen=True)
class ServeConfig:
    """``tlog serve``: the log server, its store and its HTTP side."""

    data: Path = setting(Path("tlog-data"), "data directory: log.key, scim-master.key, db/ (LMDB)")
    database: str | None = setting(
        None,
        "where the log is stored: unset for the embedded LMDB store in <data>/db, or a "
        "postgresql://user@host/dbname URL (several tlog serve processes may share one); "
        "keys stay in --data",
    )
    replication: str = setting(
        "sync",
        "with --database: how a commit survives the loss of the database's primary. sync: "
        "refuse to start unless the primary replicates synchronously (a synchronous standby "
        "streams now) and acknowledge nothing before a standby has it; managed: a managed "
        "service guarantees that (not checked); none: one database server, no failover",
        choices=("sync", "managed", "none"),
    )
    init: bool = setting(
        True,
        "create a store, signing key and SCIM master key when the data directory holds no "
        "store (turn off in production, so that a wrong --data fails)",
    )
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "TCP port to listen on")
    forwarded_allow_ips: str = setting(
        "",
        "comma-separated IP addresses or networks (CIDR) of the reverse proxies whose "
        "X-Forwarded-For/X-Forwarded-Proto are believed (the client address in the access "
        "log); empty: no forwarding header counts, from anyone; '*': everyone (never "
        "behind nothing but a proxy you run)",
    )
    origin: str | None = setting(
        None,
        "log origin (default: the key's name, or localhost/tlog-demo for a new key); "
        "never change it",
    )
    key: Path | None = setting(None, "signing key file (default <data>/log.key)")
    scim_master_key: Path | None = setting(
        None, "SCIM master key file (default <data>/scim-master.key)"
    )
    batch_size: int = setting(1024, "most entries per commit")
    batch_age_ms: float = setting(2.0, "longest wait for a batch to fill (ms)")
    max_backlog: int = setting(100_000, "entries waiting before submissions get 503")
    witnesses: Path | None = setting(
        None, "witness policy file (tlog-policy) to push checkpoints to"
    )
    witness_interval: float = setting(1.0, "seconds between add-checkpoint requests to one witness")
    witness_max_backoff: float = setting(
        30.0, "longest wait before retrying a failing witness (seconds)"
    )
    switch_interval_ms: float = setting(
        0.5, "Python thread switch interval (GIL handoff latency), ms"
    )
    demo_token: bool = setting(
        True, "write a demo submitter token (demo-submitter.token) when creating a store"
    )
    access_log: bool = setting(False, "log every request (redacted) at INFO")
    log_level: str = setting("info", "logging level", choices=LOG_LEVELS)
    log_format: str = setting(
        "text", "log line format (json: one JSON object a line)", choices=LOG_FORMATS
    )
    checkpoint_file: Path | None = setting(
        None,
        "where the last published checkpoint is remembered outside the store "
        "(default <data>/last-checkpoint)",
    )
    map_size: int = setting(
        DEFAULT_MAP_SIZE,
        "LMDB map size in bytes (address space, not disk use); doubled when a write finds it full",
    )
    verify_limit: int = setting(
        DEFAULT_VERIFY_LIMIT,
        "walk data.mdb with LMDB's structural verifier at start when it is at most this many "
        "bytes (0: never)",
    )
    scim_expiry_interval: float = setting(
        3600.0, "seconds between retention expiry runs of the SCIM store (0: never)"
    )
    bucket: str | None = setting(
        None,
        "S3-compatible bucket to publish tiles, entry bundles and the checkpoint to, as "
        "s3://bucket/prefix (needs tlog[s3]; credentials from AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY or boto3's other sources)",
    )
    bucket_endpoint: str | None = setting(
        None, "endpoint URL of the S3-compatible store (default: AWS S3)"
    )
    bucket_region: str | None = setting(None, "region of the bucket (default: boto3's)")
    storage_timeout: float = setting(
        10.0,
        "seconds a request waits for the store (a read or its commit) before it gets "
        "503 'store has not answered'",
    )
    read_threads: int = setting(4, "threads that run storage reads off the event loop")
    lock_dir: Path | None = setting(
        None,
        "directory on a memory file system for LMDB's lock file (db/lock.mdb becomes a "
        "symlink to it), so a frozen or stalled data disk cannot block reads; default: "
        "/dev/shm or $XDG_RUNTIME_DIR (tlog-<uid>), else the store directory, with a warning",
    )
    server: ServerLimits = table(ServerLimits, "connection limits and timeouts", flat=True)
    limits: Limits = table(Limits, "request limits of the log API")
    scim: ScimLimits = table(ScimLimits, "limits of the SCIM event endpoints")

    @property
    def key_path(self) -> Path:
        return self.key if self.key is not None else self.data / "log.key"

    @property
    def scim_master_key_path(self) -> Path:
        from tlog.scim.keys import MASTER_KEY_FILE

        return (
            self.scim_master_key
            if self.scim_master_key is not None
            else self.data / MASTER_KEY_FILE
        )


ENV_PREFIX: dict[type[Any], str] = {ServeConfig: "TLOG_", ProxyConfig: "TLOG_PROXY_"}
# Names that predate this module (Dockerfile, docs): kept as they were.
_LEGACY_ENV = {
    (ServeConfig, "data"): "TLOG_DATA",
    (ServeConfig, "host"): "TLOG_HOST",
    (ServeConfig, "port"): "TLOG_PORT",
    (ServeConfig, "origin"): "TLOG_ORIGIN",
    (ServeConfig, "key"): "TLOG_KEY",
    (ServeConfig, "witnesses"): "TLOG_WITNESSES",
}


# --- the fields, flattened ---------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    path: tuple[str, ...]  # ("limits", "max_entry_bytes")
    kind: type[Any]  # int, float, str, bool, Path
    optional: bool
    default: Any
    help: str
    flag: str
    env: str
    choices: tuple[str, ...] | None

    @property
    def dest(self) -> str:
        return "cfg__" + "__".join(self.path)

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _kind(hint: Any) -> tuple[type[Any], bool]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported setting type {hint!r}")
        return rest[0], True
    return hint, False


_COMMENTS: dict[type[Any], dict[str, str]] = {}
_COMMENT_RE = re.compile(r"(?m)^\s+(\w+):[^#\n]*#\s*(.+)$")


def _class_source(cls: type[Any]) -> str:
    """The source of a module-level class: its ``class`` line and every line after it up to
    the first one that starts at the left margin. ``inspect.getsource`` finds the same lines
    by compiling the whole module file to a syntax tree, ~15 ms a class at every start of
    every ``tlog`` command (each builds the options of all); a nested class still takes
    that way."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if "." in cls.__qualname__ or not path:
        return inspect.getsource(cls)
    lines = linecache.getlines(path)
    head = re.compile(rf"class {re.escape(cls.__qualname__)}\b")
    start = next((i for i, line in enumerate(lines) if head.match(line)), None)
    if start is None:
        return inspect.getsource(cls)
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0].isspace()):
        end += 1
    return "".join(lines[start:end])


def _comments(cls: type[Any]) -> dict[str, str]:
    """``name: type = default  # help`` comments of a settings class, as help texts. Read
    once per class: every command's parser (``tlog --version`` builds them all) asks again
    for the same classes."""
    if cls in _COMMENTS:
        return _COMMENTS[cls]
    try:
        src = _class_source(cls)
    except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
        src = ""
    found = {m[1]: m[2].strip() for m in _COMMENT_RE.finditer(src)}
    _COMMENTS[cls] = found
    return found


def _items(cls: type[Any], prefix: tuple[str, ...] = (), flat: bool = False) -> list[_Item]:
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    out: list[_Item] = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        kind, optional = _kind(hints[f.name])
        if dataclasses.is_dataclass(kind):
            out += _items(kind, (*prefix, f.name), bool(f.metadata.get("flat")))
            continue
        path = (*prefix, f.name)
        named = path[-1:] if flat else path
        dashed = "-".join(named).replace("_", "-")
        if kind is bool and f.default is True:
            flag = f"--no-{dashed}"
        else:
            flag = f"--{dashed}"
        default = f.default
        if default is dataclasses.MISSING:
            raise TypeError(f"setting {f.name} has no default")
        out.append(
            _Item(
                path=path,
                kind=kind,
                optional=optional,
                default=default,
                help=str(f.metadata.get("help") or comments.get(f.name, f.name.replace("_", " "))),
                flag=str(f.metadata.get("flag", flag)),
                env=str(f.metadata.get("env", "_".join(named).upper())),
                choices=f.metadata.get("choices"),
            )
        )
    return out


def items(cls: type[Any]) -> list[_Item]:
    """Every setting of ``cls`` with its TOML key, flag and environment variable."""
    prefix = ENV_PREFIX.get(cls, "TLOG_")
    out = []
    for it in _items(cls):
        env = _LEGACY_ENV.get((cls, it.path[0])) if len(it.path) == 1 else None
        out.append(dataclasses.replace(it, env=env or prefix + it.env))
    return out


# --- values --------------------------------------------------------------------------------


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_text(it: _Item, text: str, where: str) -> Any:
    try:
        if it.kind is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true or false")
        if it.kind is int:
            return int(text.replace("_", ""))
        if it.kind is float:
            return float(text)
        if it.kind is Path:
            return Path(text)
        return text
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _from_toml(it: _Item, value: Any, where: str, base: Path) -> Any:
    kind = it.kind
    if kind is float and type(value) is int:
        value = float(value)
    if kind is Path:
        if type(value) is not str:
            raise ConfigError(f"{where}: must be a string (a path)")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if type(value) is not kind:
        raise ConfigError(f"{where}: must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _check(it: _Item, value: Any, where: str) -> Any:
    if it.choices is not None and value is not None and value not in it.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(it.choices)}")
    if it.kind in (int, float) and value is not None and value < 0:
        raise ConfigError(f"{where}: must not be negative")
    return value


# Names other programs use for what tlog calls otherwise.
_OTHER_NAMES = {"listen": "host and port", "bind": "host and port", "address": "host and port"}


def _did_you_mean(p: tuple[str, ...], known: typing.Mapping[tuple[str, ...], Any]) -> str:
    """`` (did you mean ...?)`` for a misspelt or foreign setting name, else a pointer to
    the list of settings."""
    if p[-1] in _OTHER_NAMES:
        return f" (tlog serve calls it {_OTHER_NAMES[p[-1]]})"
    # the names of the same table, compared by their last part (a shared prefix says nothing)
    siblings = {q[-1]: ".".join(q) for q in known if q[:-1] == p[:-1]}
    close = difflib.get_close_matches(p[-1], list(siblings), n=2, cutoff=0.75)
    if close:
        return f" (did you mean {' or '.join(siblings[c] for c in close)}?)"
    return " (tlog config check FILE prints every setting of a valid file; tlog serve --help)"


def load_toml(cls: type[Any], path: Path) -> dict[tuple[str, ...], Any]:
    """The settings a TOML file sets, checked (unknown keys and wrong types are errors)."""
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {it.path: it for it in items(cls)}
    tables = {it.path[0] for it in known.values() if len(it.path) > 1}
    base = path.resolve().parent
    out: dict[tuple[str, ...], Any] = {}

    def walk(d: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for k, v in d.items():
            p = (*prefix, k)
            where = f"{path}: {'.'.join(p)}"
            if isinstance(v, dict) and not prefix and k in tables:
                walk(v, p)
                continue
            it = known.get(p)
            if it is None:
                raise ConfigError(f"{where}: unknown setting{_did_you_mean(p, known)}")
            out[p] = _check(it, _from_toml(it, v, where, base), where)

    walk(doc, ())
    return out


def _build(cls: type[T], values: dict[tuple[str, ...], Any]) -> T:
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    flat: dict[str, Any] = {}
    for path, v in values.items():
        if len(path) == 1:
            flat[path[0]] = v
        else:
            nested.setdefault(path[0], {})[path[1:]] = v
    hints = typing.get_type_hints(cls)
    for name, sub in nested.items():
        flat[name] = _build(hints[name], sub)
    return cls(**flat)


def from_sources(
    cls: type[T],
    *,
    file: Path | None = None,
    env: typing.Mapping[str, str] | None = None,
    flags: dict[tuple[str, ...], Any] | None = None,
) -> T:
    """``cls`` filled in from a TOML file, then the environment, then flags."""
    values: dict[tuple[str, ...], Any] = {}
    if file is not None:
        values.update(load_toml(cls, file))
    env = os.environ if env is None else env
    for it in items(cls):
        if it.env in env and env[it.env] != "":
            where = f"environment variable {it.env}"
            values[it.path] = _check(it, _from_text(it, env[it.env], where), where)
    for path, v in (flags or {}).items():
        values[path] = v
    return _build(cls, values)


# --- argparse ------------------------------------------------------------------------------


def _default_text(it: _Item) -> str:
    if it.default is None:
        return ""
    if it.kind is bool:
        return "; default on, this flag turns it off" if it.default else "; default off"
    return f"; default {it.default}"


def add_arguments(
    p: argparse.ArgumentParser,
    cls: type[Any],
    *,
    only: typing.Collection[str] | None = None,
    config_flag: bool = True,
) -> None:
    """Add a flag for every setting of ``cls`` (or those named in ``only``), each help text
    naming its environment variable and default; plus ``--config FILE``."""
    prefix = ENV_PREFIX.get(cls, "TLOG_")
    if config_flag:
        p.add_argument(
            "--config",
            type=Path,
            default=argparse.SUPPRESS,
            metavar="FILE",
            help=f"TOML configuration file (env {prefix}CONFIG); flags and environment "
            "variables override it",
        )
    g = p.add_argument_group("settings")
    for it in items(cls):
        if only is not None and it.key not in only:
            continue
        text = f"{it.help} (env {it.env}{_default_text(it)})"
        if it.kind is bool:
            g.add_argument(
                it.flag,
                dest=it.dest,
                action="store_const",
                const=not it.default,
                default=argparse.SUPPRESS,
                help=text,
            )
            continue

        def conv(s: str, it: _Item = it) -> Any:
            try:
                return _check(it, _from_text(it, s, it.flag), it.flag)
            except ConfigError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        g.add_argument(
            it.flag,
            dest=it.dest,
            type=conv,
            default=argparse.SUPPRESS,
            help=text,
            metavar=it.path[-1].upper(),
            choices=it.choices,
        )


def from_args(
    cls: type[T], args: argparse.Namespace, env: typing.Mapping[str, str] | None = None
) -> T:
    """The configuration for parsed ``args`` (flags added by :func:`add_arguments`)."""
    env = os.environ if env is None else env
    prefix = ENV_PREFIX.get(cls, "TLOG_")
    file: Path | None = getattr(args, "config", None)
    if file is None and env.get(prefix + "CONFIG"):
        file = Path(env[prefix + "CONFIG"])
    flags = {it.path: getattr(args, it.dest) for it in items(cls) if hasattr(args, it.dest)}
    return from_sources(cls, file=file, env=env, flags=flags)


def describe(config: Any) -> str:
    """The whole configuration as TOML (what ``tlog config check`` prints)."""
    lines: list[str] = []
    tables: dict[str, list[str]] = {}
    for it in items(type(config)):
        v: Any = config
        for part in it.path:
            v = getattr(v, part)
        if v is None:
            text = f"# {it.path[-1]} = (unset)"
        else:
            text = f"{it.path[-1]} = {_toml_value(v)}"
        if len(it.path) == 1:
            lines.append(text)
        else:
            tables.setdefault(it.path[0], []).append(text)
    for name, body in tables.items():
        lines += ["", f"[{name}]", *body]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    import json

    return json.dumps(str(v))
