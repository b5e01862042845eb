"""``tlog-client verify``: offline tlog-proof bundles, against the shared end-to-end vector."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.formats.note import Ed25519Signer, b64encode
from client.tools.cli import main


def test_vector_bundle_verifies(
    e2e: dict[str, str], bundle: Path, entry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(bundle), "--vkey", e2e["log_vkey"], "--entry", str(entry)]) == 0
    out = capsys.readouterr().out
    assert "origin    scim-log.example.com/audit" in out
    assert "tree size 300" in out and "index     5" in out
    assert "1 other signature line" in out
    leaf = b64encode(bytes.fromhex(e2e["leaf_hash_5_hex"]))
    assert main(["verify", str(bundle), "--vkey", e2e["log_vkey"], "--leaf-hash", leaf]) == 0


def test_vector_bundle_with_policy(
    e2e: dict[str, str],
    bundle: Path,
    entry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from client.formats.cosignature import CosignatureSigner

    other = CosignatureSigner("witness.example.com/w2", bytes(32)).vkey()
    policy = tmp_path / "policy"
    policy.write_text(f"log {e2e['log_vkey']}\nwitness w1 {e2e['witness_vkey']}\nquorum w1\n")
    assert main(["verify", str(bundle), "--policy", str(policy), "--entry", str(entry)]) == 0
    assert "cosigned by: w1 (quorum 'w1' met)" in capsys.readouterr().out
    policy.write_text(
        f"log {e2e['log_vkey']}\nwitness w1 {e2e['witness_vkey']}\nwitness w2 {other}\n"
        "group both all w1 w2\nquorum both\n"
    )
    assert main(["verify", str(bundle), "--policy", str(policy), "--entry", str(entry)]) == 3


def test_wrong_entry_or_key_is_rejected(
    e2e: dict[str, str], bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"scim-event-6")
    assert main(["verify", str(bundle), "--vkey", e2e["log_vkey"], "--entry", str(wrong)]) == 2
    assert "PROOF DOES NOT VERIFY" in capsys.readouterr().err
    right = tmp_path / "right"
    right.write_bytes(b"scim-event-5")
    other_key = Ed25519Signer("scim-log.example.com/audit", bytes(32)).vkey()
    assert main(["verify", str(bundle), "--vkey", other_key, "--entry", str(right)]) == 2
    other_name = Ed25519Signer("other.example/log", bytes(range(32))).vkey()
    assert main(["verify", str(bundle), "--vkey", other_name, "--entry", str(right)]) == 2


def test_every_one_byte_change_is_rejected(e2e: dict[str, str], tmp_path: Path) -> None:
    """Without a policy the witness line is an unknown signature, ignored; with one, it counts."""
    text = e2e["tlog_proof_index_5"].encode()
    witness_line = text.rindex("\u2014 witness".encode())
    entry = tmp_path / "entry"
    entry.write_bytes(b"scim-event-5")
    policy = tmp_path / "policy"
    policy.write_text(f"log {e2e['log_vkey']}\nwitness w1 {e2e['witness_vkey']}\nquorum w1\n")
    p = tmp_path / "b"
    # Every 5th byte keeps this fast; tests/client covers every byte of the parser.
    for i in range(0, len(text), 5):
        p.write_bytes(text[:i] + bytes([text[i] ^ 0x01]) + text[i + 1 :])
        with_policy = main(["verify", str(p), "--policy", str(policy), "--entry", str(entry)])
        assert with_policy in (2, 3), i
        if i < witness_line:
            assert main(["verify", str(p), "--vkey", e2e["log_vkey"], "--entry", str(entry)]) == 2


def test_unreadable_input_is_exit_1(e2e: dict[str, str], bundle: Path, tmp_path: Path) -> None:
    vk = e2e["log_vkey"]
    assert main(["verify", str(tmp_path / "missing"), "--vkey", vk, "--leaf-hash", "x"]) == 1
    assert main(["verify", str(bundle), "--vkey", vk, "--entry", str(tmp_path / "nope")]) == 1
    assert main(["verify", str(bundle), "--vkey", vk, "--leaf-hash", "not base64"]) == 1
    assert main(["verify", str(bundle), "--vkey", "garbage", "--leaf-hash", "x"]) == 1
    assert main(["verify", str(bundle), "--vkey", vk]) == 1  # needs --entry or --leaf-hash
    assert main(["verify", str(bundle), "--leaf-hash", b64encode(bytes(32))]) == 1  # no key
    assert main([]) == 1
    assert main(["--help"]) == 0
