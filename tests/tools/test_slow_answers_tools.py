"""The last clients that read a remote answer with a plain ``httpx.Client``: the privacy
officers' ``tlog-client scim erasure`` commands and ``tlog recover`` (tiles from a copy of
the log over HTTP, the witnesses' latest checkpoints). A server that drips its head or body
a byte at a time held them for as long as it liked, and an enormous answer was read whole.
They now go through :class:`client.net.core.HTTPCore` over :func:`client.net.core.
http_client` (a deadline on the whole answer, the head included, and a bound on its size):
each case ends with a clear one-line error. Each runs the call in a thread and only checks
that it ends (the servers drip until the client goes away): no timing assertion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tlog.recover
from client.formats.cosignature import CosignatureSigner
from client.formats.policy import Policy
from client.formats.tiles import Tile
from client.tools.cli import _parser
from tests.net.helpers import DRIP_BODY, DRIP_HEAD, dripping, ends
from tests.server.conftest import make_signer
from tlog.recover import RecoveryError

HUGE = 20 << 20  # bytes: beyond the officer's 16 MiB and any tile's bound
ENORMOUS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % HUGE,
    b"[" + b" " * (HUGE - 1),
)
CASES = {"dripping head": DRIP_HEAD, "dripping body": DRIP_BODY, "enormous answer": ENORMOUS}


def _officer(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    tf = tmp_path / "po.token"
    tf.write_text("tlog_" + "A" * 43 + "\n")
    args = _parser().parse_args(
        ["scim", "erasure", "list", url, "--token-file", str(tf), "--timeout", "0.3"]
    )
    code = ends(args.run, args)
    return int(code), capsys.readouterr().err  # type: ignore[call-overload]


@pytest.mark.parametrize("case", list(CASES))
def test_officer_commands_end_on_a_hostile_log(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head, drip = CASES[case]
    with dripping(head, drip, once=case == "enormous answer") as url:
        code, err = _officer(url, tmp_path, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if case == "enormous answer":
        assert "larger than" in err, err
    else:
        assert "cannot reach the log" in err, err
    assert "AAAA" not in err  # never the token


@pytest.mark.parametrize("case", list(CASES))
def test_recover_tile_reads_end_on_a_hostile_copy(case: str) -> None:
    head, drip = CASES[case]
    with dripping(head, drip, once=case == "enormous answer") as url:
        fetch, close = tlog.recover._tile_fetcher(url, timeout=0.3)

        def read() -> BaseException | None:
            try:
                fetch(Tile(0, 0))
            except Exception as exc:
                return exc
            return None

        try:
            got = ends(read)
        finally:
            close()
    assert isinstance(got, RecoveryError), got
    assert "\n" not in str(got)
    assert ("larger than" in str(got)) == (case == "enormous answer"), got


@pytest.mark.parametrize("case", list(CASES))
def test_recover_witness_reads_end_on_a_hostile_witness(
    case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A witness that drips or floods is skipped with a warning (``tlog recover`` goes on
    with the other targets) instead of holding the recovery."""
    monkeypatch.setattr(tlog.recover, "WITNESS_TIMEOUT", 0.3)
    head, drip = CASES[case]
    signer = make_signer()
    w = CosignatureSigner("w1", b"\x09" * 32)
    with dripping(head, drip, once=case == "enormous answer") as url:
        policy = Policy.parse(f"log {signer.vkey()}\nwitness w1 {w.vkey()} {url}\nquorum w1\n")
        got = ends(tlog.recover.witness_targets, policy, signer)
    assert got == []
    assert any("witness w1 could not be asked" in r.getMessage() for r in caplog.records)
