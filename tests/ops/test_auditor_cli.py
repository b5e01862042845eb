"""tlog-client scim search/show/verify/export/verify-bundle against the in-process log."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from client.tools.cli import main
from tests.scim_service.conftest import URL, Harness, user_event
from tests.scim_service.conftest import harness as scim_harness  # noqa: F401


@pytest.fixture
def logged(scim_harness: Harness, tmp_path: Path) -> tuple[Harness, Path]:  # noqa: F811
    h = scim_harness
    for i, outcome in enumerate(("success", "failure", "success")):
        ev = user_event(rid=f"u-{i}", req=f"req-{i}", outcome=outcome)
        assert h.post_event(ev).status_code == 200
    tok = tmp_path / "auditor.token"
    tok.write_text(h.tok["aud1"] + "\n")
    return h, tok


def run(h: Harness, tok: Path, *args: str) -> int:
    return main(
        ["scim", args[0], URL, "--vkey", h.vkey, "--token-file", str(tok), *args[1:]], http=h.client
    )


def test_search_show_verify(
    logged: tuple[Harness, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    h, tok = logged
    assert run(h, tok, "search") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "patch" in lines[0] and "u-0" in lines[0]
    assert run(h, tok, "search", "--outcome", "failure") == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert run(h, tok, "show", "--rid", "u-2") == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(shown) == 1 and shown[0]["event"]["rid"] == "u-2"
    assert shown[0]["erased"] is False
    assert run(h, tok, "verify") == 0
    out = capsys.readouterr().out
    assert "verified " in out and " erased): signatures" in out  # access events count too


def test_wrong_key_fails_verification(
    logged: tuple[Harness, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    h, tok = logged
    from client.formats.note import Ed25519Signer

    other = Ed25519Signer(h.signer.origin, bytes(32)).verifier().vkey()
    code = main(["scim", "verify", URL, "--vkey", other, "--token-file", str(tok)], http=h.client)
    assert code == 2
    assert "VERIFICATION FAILED" in capsys.readouterr().err


def test_export_and_verify_bundle_offline(
    logged: tuple[Harness, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h, tok = logged
    out = tmp_path / "evidence.json"
    assert run(h, tok, "export", "--out", str(out)) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert run(h, tok, "export", "--out", str(out)) == 1  # never overwritten
    capsys.readouterr()
    # Offline: no HTTP client at all, only the log's public key.
    assert main(["scim", "verify-bundle", str(out), "--vkey", h.vkey]) == 0
    assert "3 with bodies" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    doc["events"][1]["event"]["outcome"] = "success"  # rewrite history
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    assert main(["scim", "verify-bundle", str(bad), "--vkey", h.vkey]) == 2


def test_verify_checks_a_body_against_its_commitment(
    logged: tuple[Harness, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`scim show` gives leaf, event and nonce; `tlog-client verify --event --nonce` proves
    offline that the proven entry commits to exactly that body, and refuses any other."""
    import base64

    h, tok = logged
    assert run(h, tok, "show", "--rid", "u-2") == 0
    shown = json.loads(capsys.readouterr().out)
    bundle = tmp_path / "e.tlog-proof"
    bundle.write_text(h.client.get(f"/v1/bundle/{shown['index']}").text)
    leaf = tmp_path / "leaf"
    leaf.write_bytes(base64.b64decode(shown["leaf"]))
    body = tmp_path / "event.json"
    body.write_text(json.dumps(shown["event"]))
    args = ["verify", str(bundle), "--vkey", h.vkey, "--entry", str(leaf)]
    assert main([*args, "--event", str(body), "--nonce", shown["nonce"]]) == 0
    assert "commitment matches event" in capsys.readouterr().out

    forged = dict(shown["event"], rid="u-0")  # another account, same everything else
    body.write_text(json.dumps(forged))
    assert main([*args, "--event", str(body), "--nonce", shown["nonce"]]) == 2
    assert "does not match the leaf commitment" in capsys.readouterr().err
    body.write_text(json.dumps(shown["event"]))
    other_nonce = base64.b64encode(bytes(32)).decode()
    assert main([*args, "--event", str(body), "--nonce", other_nonce]) == 2
    assert main([*args, "--event", str(body)]) == 1  # --nonce missing: usage error
