"""A state database that cannot be opened is a clear refusal with the state exit code.

A damaged ``state.db`` (overwritten, truncated into garbage, from another program) or one in
a directory that does not exist made every ``tlog-witness`` command die with a Python
traceback and exit 1, which for ``check`` means *split-view evidence is recorded*: a cron
job alerting on ``check`` reported a split view that was not there, and the real problem (no
usable state: the witness cannot cosign) got a stack trace. Now: one ``tlog-witness: ...``
line naming the file, and exit 3 ("the stored state does not verify").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.witness.cli import EXIT_STATE, main
from tests.witness.helpers import FakeLog, events, write_config


@pytest.mark.parametrize("damage", ["garbage", "missing-directory"])
@pytest.mark.parametrize("command", ["check", "serve", "gossip", "poll"])
def test_unusable_state_is_exit_3_with_one_line(
    tmp_path: Path, damage: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, FakeLog(events(3)))
    if damage == "garbage":
        (tmp_path / "state.db").write_bytes(bytes(range(256)) * 16)
    else:
        text = cfg.read_text().replace('state_db = "state.db"', 'state_db = "gone/state.db"')
        cfg.write_text(text)
    argv = [command, "--config", str(cfg)] + (["--once"] if command in ("gossip", "poll") else [])
    assert main(argv) == EXIT_STATE
    err = capsys.readouterr().err
    assert err.startswith("tlog-witness: cannot use the state database "), err
    assert "state.db" in err and "Traceback" not in err
