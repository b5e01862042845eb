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


def test_search_names_intent_and_effect_and_finds_references(
    scim_harness: Harness,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An auditor's line shows what the request said and, where the log read the resource's
    state otherwise, what it did (an Okta-style reactivation); `show` carries the effect;
    `--ref` finds the group event that names a user only by pseudonym."""
    import base64

    from tests.scim_service.conftest import group_event

    h = scim_harness
    off = user_event("u-okta", req="r-off", active=("true", "false"))
    assert h.post_event(off).status_code == 200
    update = [{"a": "user.update", "ocsf": [3001, 3]}]
    put = user_event("u-okta", req="r-put", op="replace", acts=update)
    put["mods"] = [{"attr": "active", "new": "true"}]
    assert h.post_event(put).status_code == 200
    pids = h.client.post(
        "/v1/scim/pseudonyms", headers=h.h("sub1"), json={"refs": [{"rt": "User", "id": "u-okta"}]}
    )
    pid = base64.b64decode(pids.json()["refs"][0]["pid"])
    assert h.post_event(group_event([pid], req="r-group")).status_code == 200
    tok = tmp_path / "auditor.token"
    tok.write_text(h.tok["aud1"])

    assert run(h, tok, "search", "--rid", "u-okta") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert " user.deactivate " in lines[0] and "=>" not in lines[0]
    # the PUT (a client's own event, without the adapter's marks) left roles, entitlements
    # and the manager out: what the SP kept of them is not known (faith26), an update too
    assert " user.update => user.activate,user.update " in lines[1], lines[1]
    assert run(h, tok, "show", "--req", "r-put") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [a["a"] for a in shown["effect"]["acts"]] == ["user.activate", "user.update"]
    assert all("new" not in c for c in shown["effect"]["changes"] if c["attr"] != "active")
    assert shown["effect_attested"] is True

    assert run(h, tok, "search", "--ref", "u-okta") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "Group/g-engineering-42" in lines[0] and "r-group" in lines[0]
    assert run(h, tok, "search", "--ref", "u-okta", "--ref-rt", "Group") == 0
    assert capsys.readouterr().out == ""
    assert run(h, tok, "search", "--ref-rt", "Group") == 1
    assert "--ref-rt needs --ref" in capsys.readouterr().err


def test_since_and_until_take_iso_times_and_spans(
    logged: tuple[Harness, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    h, tok = logged  # the harness's clock: 2024-06-01T00:00:00Z and a second a tick on

    def found(*args: str) -> int:
        assert run(h, tok, "search", "--rid", "u-2", *args) == 0  # (searches are logged too)
        return capsys.readouterr().out.count("\n")

    assert found("--since", "2024-06-01") == 1
    assert found("--until", "2024-06-01") == 0  # until is exclusive
    assert found("--since", "2024-06-01T02:00:00+01:00") == 0  # 01:00Z
    assert found("--since", "2024-05-31T23:00", "--until", "2024-06-01T00:01Z") == 1
    assert found("--since", str(1_717_200_000_000 + 3_600_000)) == 0
    assert found("--since", "1h") == 0  # an hour back from now: 2024 is long ago
    assert found("--since", "9999w") == 1
    assert run(h, tok, "search", "--since", "yesterday") == 1  # a usage error
    assert "is not a time" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0", 0),
        ("1764547200000", 1_764_547_200_000),
        ("2025-12-01", 1_764_547_200_000),
        ("2025-12-01T00:00:00Z", 1_764_547_200_000),
        ("2025-12-01T01:00:00+01:00", 1_764_547_200_000),
        ("2025-12-01T00:00:01.5", 1_764_547_201_500),
        ("90s", 1_764_547_200_000 - 90_000),
        ("30m", 1_764_547_200_000 - 1_800_000),
        ("24h", 1_764_547_200_000 - 86_400_000),
        ("7d", 1_764_547_200_000 - 7 * 86_400_000),
        ("2w", 1_764_547_200_000 - 14 * 86_400_000),
    ],
)
def test_parse_when(text: str, ms: int) -> None:
    from client.tools.filters import parse_when

    assert parse_when(text, now_ms=1_764_547_200_000) == ms


@pytest.mark.parametrize("text", ["", "yesterday", "-5", "0h", "5y", "1969-12-31", "9" * 30, "1.5"])
def test_parse_when_refuses(text: str) -> None:
    from client.tools.filters import parse_when

    with pytest.raises(ValueError):
        parse_when(text, now_ms=1_764_547_200_000)


def test_a_split_request_with_a_part_missing_reads_as_incomplete(
    scim_harness: Harness,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A request split into linked parts whose last part never reached the log (the
    adapter stopped for good between two batches, a part refused) is named incomplete on
    stderr, by `search` and `show`; each line names its part. Before, its parts read as
    any events: nothing said the request was not all there."""
    from tests.scim_service.conftest import group_event

    h = scim_harness
    parts = [group_event([bytes([i]) * 16], req="r-split") for i in range(3)]
    for i, ev in enumerate(parts):
        ev["x"] = {"part": i, "parts": 3, **({"first": parts[0]["eid"]} if i else {})}
    for ev in parts[:2]:
        assert h.post_event(ev).status_code == 200
    tok = tmp_path / "auditor.token"
    tok.write_text(h.tok["aud1"])

    assert run(h, tok, "search", "--req", "r-split") == 0
    got = capsys.readouterr()
    lines = got.out.splitlines()
    assert [line.rsplit(" part ", 1)[1] for line in lines] == ["1 of 3", "2 of 3"]
    assert "request r-split is incomplete: part(s) 3 of its 3 not found" in got.err
    assert run(h, tok, "show", "--req", "r-split") == 0
    assert "request r-split is incomplete" in capsys.readouterr().err

    assert h.post_event(parts[2]).status_code == 200  # the last part comes: whole
    assert run(h, tok, "search", "--req", "r-split") == 0
    got = capsys.readouterr()
    assert len(got.out.splitlines()) == 3 and "incomplete" not in got.err
