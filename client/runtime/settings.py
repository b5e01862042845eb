"""How a program's configuration object declares its settings: one field, its default, its help.

:func:`setting` and :func:`table` only attach metadata to a dataclass field; the machinery
that turns such a class into flags, environment variables and TOML keys is
:mod:`tlog.config`'s (``tlog serve``, ``tlog scim-proxy``). They live here so that a
program in ``client/`` (the SCIM proxy's :class:`client.adapters.proxy.ProxyConfig`) can
define its configuration object beside its code without importing the server.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "setting", "table"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    env: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A configuration field: its default (defined here only) and its help text."""
    meta: dict[str, Any] = {"help": help}
    if flag is not None:
        meta["flag"] = flag
    if env is not None:
        meta["env"] = env
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


def table(cls: type[Any], help: str, *, flat: bool = False) -> Any:
    """A field holding a nested dataclass of settings: a TOML table. ``flat``: its flags and
    environment variables carry no table prefix (``--header-timeout``, not
    ``--server-header-timeout``)."""
    return field(default_factory=cls, metadata={"help": help, "table": True, "flat": flat})
