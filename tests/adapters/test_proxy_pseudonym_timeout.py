"""``tlog scim-proxy --pseudonym-timeout``: how long a request waits for its group members'
pseudonyms at the log (then its event is recorded without them and says so). It was fixed at
2 s; a loaded machine or a distant log needs more. A value that is no wait at all is refused
at start-up, before anything is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.adapters.proxy import ProxySettings
from client.adapters.proxy_config import ProxyConfig
from tests.support import tlog_cli


# 1e10 (red team 27): finite, but past what the lookup's socket timeout takes
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e10"])
def test_a_pseudonym_timeout_that_is_no_wait_is_refused(tmp_path: Path, value: str) -> None:
    token = tmp_path / "token"
    token.write_text("t0k\n")
    token.chmod(0o600)
    # a process of its own, with a timeout: were the value accepted, the proxy would serve
    r = tlog_cli(
        "scim-proxy",
        "--upstream",
        "http://127.0.0.1:9/v2",
        "--log",
        "http://127.0.0.1:9",
        "--token-file",
        str(token),
        "--tenant",
        "acme",
        "--sp-id",
        "sp",
        "--log-key-tofu",
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
        "--pseudonym-timeout",
        value,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    # a negative number is refused by the option parser itself (every number setting), the
    # rest by the proxy's start-up check
    assert "--pseudonym-timeout" in r.stderr and "must" in r.stderr, r.stderr
    assert not (tmp_path / "outbox.sqlite").exists()


def test_the_default_is_the_old_fixed_wait() -> None:
    assert ProxyConfig().pseudonym_timeout == 2.0
    assert ProxySettings("u", "l", "t", "a", "s").pseudonym_timeout == 2.0
