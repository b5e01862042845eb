"""tlog.config: one frozen object per program, defaults once, file < env < flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.support import tlog_cli
from tlog.cli import main, parser
from tlog.config import (
    ConfigError,
    ProxyConfig,
    ServeConfig,
    describe,
    from_args,
    from_sources,
    items,
    load_toml,
)
from tlog.http import Limits
from tlog.scim.service import ScimLimits


def serve_args(*argv: str) -> ServeConfig:
    args = parser().parse_args(["serve", *argv])
    return from_args(ServeConfig, args, env={})


def test_defaults_are_the_dataclass_defaults() -> None:
    cfg = serve_args()
    assert cfg == ServeConfig()
    assert cfg.limits == Limits() and cfg.scim == ScimLimits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "tlog.toml"
    f.write_text(
        'port = 9000\nhost = "127.0.0.2"\nmax_backlog = 5\ndata = "store"\n'
        "[limits]\nmax_entry_bytes = 4096\n[scim]\nmax_batch_events = 7\n"
    )
    cfg = from_sources(ServeConfig, file=f, env={})
    assert (cfg.port, cfg.host, cfg.max_backlog) == (9000, "127.0.0.2", 5)
    assert cfg.data == tmp_path / "store"  # relative to the file
    assert cfg.limits.max_entry_bytes == 4096
    assert cfg.limits.max_batch_entries == Limits().max_batch_entries
    assert cfg.scim.max_batch_events == 7
    env = {"TLOG_PORT": "9001", "TLOG_LIMITS_MAX_ENTRY_BYTES": "100", "TLOG_ACCESS_LOG": "yes"}
    cfg = from_sources(ServeConfig, file=f, env=env)
    assert (cfg.port, cfg.limits.max_entry_bytes, cfg.access_log) == (9001, 100, True)
    args = parser().parse_args(
        [
            "serve",
            "--config",
            str(f),
            "--port",
            "9002",
            "--limits-max-entry-bytes",
            "200",
            "--no-demo-token",
        ]
    )
    cfg = from_args(ServeConfig, args, env=env)
    assert (cfg.port, cfg.limits.max_entry_bytes, cfg.demo_token) == (9002, 200, False)
    assert cfg.host == "127.0.0.2" and cfg.scim.max_batch_events == 7


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("prot = 1\n", r"unknown setting \(did you mean port\?\)"),
        ('listen = "127.0.0.1:80"\n', r"unknown setting \(tlog serve calls it host and port\)"),
        ("zzz = 1\n", r"unknown setting \(tlog config check FILE prints every setting"),
        ('port = "80"\n', "must be a int"),
        ("[limits]\nmax_entry_byte = 1\n", r"did you mean limits\.max_entry_bytes\?"),
        ("access_log = 1\n", "must be a bool"),
        ('log_level = "loud"\n', "not one of"),
        ("max_backlog = -1\n", "negative"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_files_are_errors(tmp_path: Path, text: str, why: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=why):
        load_toml(ServeConfig, f)


def test_bad_env_is_an_error() -> None:
    with pytest.raises(ConfigError, match="TLOG_PORT"):
        from_sources(ServeConfig, env={"TLOG_PORT": "eighty"})
    with pytest.raises(ConfigError, match="TLOG_ACCESS_LOG"):
        from_sources(ServeConfig, env={"TLOG_ACCESS_LOG": "maybe"})


def test_every_setting_has_flag_env_and_help_shown() -> None:
    help_text = parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for it in items(ServeConfig):
        assert it.flag in help_text, it.flag
        assert it.env in help_text, it.env
        assert it.help
    # Legacy environment names still work.
    assert {it.env for it in items(ServeConfig)} >= {"TLOG_DATA", "TLOG_PORT", "TLOG_ORIGIN"}
    proxy = {it.env for it in items(ProxyConfig)}
    assert "TLOG_PROXY_UPSTREAM" in proxy


def test_describe_round_trips(tmp_path: Path) -> None:
    cfg = from_sources(ServeConfig, env={"TLOG_PORT": "1234", "TLOG_SCIM_MAX_SCAN": "9"})
    f = tmp_path / "all.toml"
    f.write_text(describe(cfg))
    assert from_sources(ServeConfig, file=f, env={}) == dataclasses.replace(
        cfg, data=tmp_path / cfg.data
    )


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text("port = 9100\n[limits]\nmax_batch_entries = 50\n")
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "port = 9100" in out and "max_batch_entries = 50" in out and "[scim]" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = 1\n")
    assert main(["config", "check", str(bad)]) == 1
    assert "unknown setting" in capsys.readouterr().err
    proxy = tmp_path / "proxy.toml"
    proxy.write_text('upstream = "http://127.0.0.1:9000/v2"\nlisten = "127.0.0.1:8099"\n')
    assert main(["config", "check", "--program", "scim-proxy", str(proxy)]) == 0


def test_proxy_needs_its_required_settings(tmp_path: Path) -> None:
    r = tlog_cli("scim-proxy", "--tenant", "acme", timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert "--upstream" in r.stderr and "--sp-id" in r.stderr and "--tenant" not in r.stderr


def _settings_classes(cls: type) -> list[type]:
    found = [cls]
    for f in dataclasses.fields(cls):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            found += _settings_classes(f.default_factory)
    return found


def test_help_comments_read_as_from_the_parsed_source() -> None:
    # tlog.config reads a settings class's `# help` comments from its lines in the module
    # file, not through inspect.getsource (which compiles the whole module at every start):
    # the same texts, for every settings class of both programs.
    import inspect
    import re

    from tlog.config import _comments

    classes = _settings_classes(ServeConfig) + _settings_classes(ProxyConfig)
    assert {ScimLimits, Limits} <= set(classes)
    pattern = re.compile(r"(?m)^\s+(\w+):[^#\n]*#\s*(.+)$")
    with_comments = 0
    for cls in classes:
        expected = {m[1]: m[2].strip() for m in pattern.finditer(inspect.getsource(cls))}
        assert _comments(cls) == expected, cls
        with_comments += bool(expected)
    assert with_comments >= 2
