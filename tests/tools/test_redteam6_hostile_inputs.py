"""Red team 6: hostile files given to the offline verifiers.

* A proof, evidence bundle, certificate or policy file is read up to its format's bound and
  no further: a sparse 1 TiB file was read whole (``MemoryError``, a traceback) before the
  parser's own size check could refuse it.
* A policy's quorum is evaluated once per group, in definition order: a long chain of
  groups overflowed the stack (``RecursionError``, a traceback) and groups sharing members
  (``group gN 2 gN-1 gN-2``) took time exponential in their number (a hang).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from client.formats.cosignature import CosignatureSigner
from client.tools.cli import main
from tests.support import ROOT

OTHER = CosignatureSigner("witness.example.com/w2", bytes(32)).vkey()


def _sparse(path: Path, size: int = 1 << 40) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _one_line_refusal(err: str) -> None:
    assert "Traceback" not in err and "Error:" not in err.split(":", 1)[0]
    assert err.count("\n") == 1 and len(err) < 500, err


def test_a_huge_proof_file_is_refused_unread(
    e2e: dict[str, str], tmp_path: Path, entry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = _sparse(tmp_path / "big.tlog-proof")
    rc = main(["verify", str(big), "--vkey", e2e["log_vkey"], "--entry", str(entry)])
    err = capsys.readouterr().err
    assert rc == 2 and "PROOF DOES NOT VERIFY" in err and "larger than" in err
    _one_line_refusal(err)


def test_a_huge_entry_or_policy_file_is_refused_unread(
    e2e: dict[str, str], tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = _sparse(tmp_path / "big")
    assert main(["verify", str(bundle), "--vkey", e2e["log_vkey"], "--entry", str(big)]) == 2
    _one_line_refusal(capsys.readouterr().err)
    assert main(["verify", str(bundle), "--policy", str(big), "--leaf-hash", "x"]) == 1
    err = capsys.readouterr().err
    assert "bad policy" in err and "larger than" in err
    _one_line_refusal(err)


def test_huge_evidence_and_certificate_files_are_refused_unread(
    e2e: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = _sparse(tmp_path / "big.json")
    vk = e2e["log_vkey"]
    assert main(["scim", "verify-evidence", str(big), "--vkey", vk]) in (1, 2)
    _one_line_refusal(capsys.readouterr().err)
    assert main(["scim", "erasure", "verify", str(big), "--vkey", vk]) == 2
    _one_line_refusal(capsys.readouterr().err)


def _chain_policy(e2e: dict[str, str], n: int) -> str:
    """``g0 any w1 w2``, then ``gI any gI-1`` up to ``n`` groups deep."""
    lines = [f"log {e2e['log_vkey']}", f"witness w1 {e2e['witness_vkey']}", f"witness w2 {OTHER}"]
    lines.append("group g0 any w1 w2")
    lines += [f"group g{i} any g{i - 1}" for i in range(1, n)]
    return "\n".join([*lines, f"quorum g{n - 1}"]) + "\n"


def test_a_deep_chain_of_groups_is_evaluated(
    e2e: dict[str, str],
    bundle: Path,
    entry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = tmp_path / "policy"
    policy.write_text(_chain_policy(e2e, 5000))
    assert main(["verify", str(bundle), "--policy", str(policy), "--entry", str(entry)]) == 0
    assert "quorum 'g4999' met" in capsys.readouterr().out
    # The same chain rooted on the other witness only: the quorum is not met.
    policy.write_text(_chain_policy(e2e, 5000).replace("g0 any w1 w2", "g0 any w2"))
    assert main(["verify", str(bundle), "--policy", str(policy), "--entry", str(entry)]) == 3
    _one_line_refusal(capsys.readouterr().err)


def test_groups_sharing_members_are_evaluated_once_each(
    e2e: dict[str, str], bundle: Path, entry: Path, tmp_path: Path
) -> None:
    """A ladder ``gI 2 gI-1 gI-2`` of 80 groups: evaluated naively, about 10**16 steps. Run
    in a child so that a regression ends the test (its timeout) instead of hanging it."""
    lines = [f"log {e2e['log_vkey']}", f"witness w1 {e2e['witness_vkey']}", f"witness w2 {OTHER}"]
    lines += ["group g0 any w1 w2", "group g1 any w1 w2"]
    lines += [f"group g{i} 2 g{i - 1} g{i - 2}" for i in range(2, 80)]
    policy = tmp_path / "policy"
    policy.write_text("\n".join([*lines, "quorum g79"]) + "\n")
    cmd = [sys.executable, "-m", "client.tools.cli", "verify", str(bundle)]
    cmd += ["--policy", str(policy), "--entry", str(entry)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "quorum 'g79' met" in done.stdout
