"""mend12: ``tlog/cli.py`` names each group of settings a command takes once (module
constants) instead of repeating ``add_arguments(only={...})`` sets. Every command's parser
takes exactly the options it took before, in the same order (the lists below were read from
main's parser before the change), with the same destinations; ``serve`` and ``scim-proxy``
take every setting of their configuration, as before."""

from __future__ import annotations

import argparse

from tlog.cli import parser
from tlog.config import ProxyConfig, ServeConfig, items

# Read from main's parser (3161eb3) before the change: the option strings of each command
# (positionals as <dest>), "=dest" where the destination is not the flag's own name.
OFFLINE = [
    "--config",
    "--data=cfg__data",
    "--database=cfg__database",
    "--replication=cfg__replication",
    "--origin=cfg__origin",
    "--key=cfg__key",
    "--scim-master-key=cfg__scim_master_key",
    "--checkpoint-file=cfg__checkpoint_file",
]
BEFORE: dict[str, list[str]] = {
    "tlog": ["--version"],
    "tlog keygen": ["--config", "--data=cfg__data", "--key=cfg__key", "--origin"],
    "tlog token": [],
    "tlog token create": [
        "--config",
        "--data=cfg__data",
        "--database=cfg__database",
        "--role",
        "--tenant",
        "--name",
        "--person",
        "--ttl",
        "--out",
    ],
    "tlog token list": ["--config", "--data=cfg__data", "--database=cfg__database"],
    "tlog token revoke": [
        "--config",
        "--data=cfg__data",
        "--database=cfg__database",
        "<token_id>",
        "-y/--yes",
    ],
    "tlog log-entry": [
        "--config",
        "--data=cfg__data",
        "--origin=cfg__origin",
        "--key=cfg__key",
        "--witness-interval=cfg__witness_interval",
        "--contact",
    ],
    # recover: the offline tools' settings with --witnesses before --checkpoint-file
    "tlog recover": [
        *OFFLINE[:-1],
        "--witnesses=cfg__witnesses",
        OFFLINE[-1],
        "--from=source",
        "--checkpoint",
    ],
    "tlog reapply-erasures": [*OFFLINE, "<certificates>"],
    "tlog reseal-actors": [*OFFLINE, "--batch"],
    "tlog fsck": ["--config", "--data=cfg__data", "--database=cfg__database"],
    "tlog backup": [
        "--config",
        "--data=cfg__data",
        "--database=cfg__database",
        "<dest>",
        "--no-verify=verify",
    ],
    "tlog migrate": ["--from=source", "--to=dest", "--restart"],
    "tlog config": [],
    "tlog config check": ["<file>", "--program"],
}


def _shown(a: argparse.Action) -> str:
    if not a.option_strings:
        return f"<{a.dest}>"
    own = a.option_strings[-1].lstrip("-").replace("-", "_")
    return "/".join(a.option_strings) + ("" if a.dest == own else f"={a.dest}")


def _commands(p: argparse.ArgumentParser, name: str, out: dict[str, list[str]]) -> None:
    shown = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, sp in a.choices.items():
                _commands(sp, f"{name} {sub}", out)
        elif not isinstance(a, argparse._HelpAction):
            shown.append(_shown(a))
    out[name] = shown


def _every_setting(cls: type) -> list[str]:
    out = ["--config"]
    for it in items(cls):
        own = it.flag.lstrip("-").replace("-", "_")
        out.append(it.flag + ("" if it.dest == own else f"={it.dest}"))
    return out


def test_every_command_takes_the_options_it_took_before() -> None:
    got: dict[str, list[str]] = {}
    _commands(parser(), "tlog", got)
    assert got.pop("tlog serve") == _every_setting(ServeConfig)
    assert got.pop("tlog scim-proxy") == _every_setting(ProxyConfig)
    assert got == BEFORE
