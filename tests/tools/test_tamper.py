"""A log that lies fails the audit with exit 2 (3 for a missing witness quorum), and the
state file keeps the last checkpoint that did verify."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import leaf_hash, root_of_range
from client.formats.note import parse_note
from client.formats.tiles import decode_entry_bundle, encode_entry_bundle
from client.tools.cli import main

from .conftest import ORIGIN, SEED, URL, Server, flip, resign, serve

WITNESS = CosignatureSigner("witness.example/w1", bytes(range(50, 82)))


def _state_size(path: Path) -> int:
    return int(json.loads(path.read_text())["checkpoint"]["size"])


def _change_entry(body: bytes) -> bytes:
    entries = decode_entry_bundle(body)
    entries[3] = entries[3] + b"!"
    return encode_entry_bundle(entries)


TAMPERED_TILES: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "entry bundle": ("/tile/entries/002", _change_entry),
    "full level-0 hash tile": ("/tile/0/001", lambda b: flip(b, 100)),
    "partial level-0 hash tile": ("/tile/0/003.p/232", lambda b: flip(b, 31)),
    "partial level-1 hash tile": ("/tile/1/000.p/3", lambda b: flip(b, 64)),
    "truncated hash tile": ("/tile/0/000", lambda b: b[:-32]),
    "entry bundle with an extra entry": ("/tile/entries/001", lambda b: b + b"\x00\x01x"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED_TILES))
def test_tampered_tile_fails_the_audit(
    server: Server, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add(1000)  # tiles 0/000..002, 0/003.p/232, 1/000.p/3
    path, fn = TAMPERED_TILES[case]
    server.tamper.rewrite[path] = fn
    assert server.audit(tmp_path / "s.json") == 2
    assert path in server.tamper.seen
    err = capsys.readouterr().err
    assert "LOG FAILED VERIFICATION" in err and path.split("/")[2] in err


def test_consistently_rewritten_entries_fail_on_the_root(server: Server, tmp_path: Path) -> None:
    """Bundle and level-0 tile agree with each other, but not with the signed root."""
    server.add(600)
    server.tamper.rewrite["/tile/entries/001"] = _change_entry

    def matching_tile(body: bytes) -> bytes:
        entries = server.log.entry_bundle(1, 256, server.log.latest.size)
        changed = decode_entry_bundle(_change_entry(entries))
        return b"".join(leaf_hash(e) for e in changed)

    server.tamper.rewrite["/tile/0/001"] = matching_tile
    state = tmp_path / "s.json"
    assert server.audit(state) == 2
    # No progress survives a failed audit: the next run starts again from scratch.
    assert json.loads(state.read_text())["progress"] is None


def test_failure_on_a_second_run_keeps_the_verified_state(server: Server, tmp_path: Path) -> None:
    server.add(500)
    state = tmp_path / "s.json"
    assert server.audit(state) == 0
    server.add(300, tag="b")
    server.tamper.rewrite["/tile/entries/002"] = _change_entry
    assert server.audit(state) == 2
    assert _state_size(state) == 500
    del server.tamper.rewrite["/tile/entries/002"]
    assert server.audit(state) == 0
    assert _state_size(state) == 800


def test_checkpoint_signed_by_another_key(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add(300)
    server.tamper.rewrite["/checkpoint"] = lambda b: resign(b.decode()).encode()
    assert server.audit(tmp_path / "s.json") == 2
    assert "LOG FAILED VERIFICATION" in capsys.readouterr().err


def test_checkpoint_with_another_origin(tmp_path: Path, database: str | None) -> None:
    from client.formats.note import Ed25519Signer, sign_note

    with serve(tmp_path / "log", database=database) as server:
        server.add(10)
        # Signed by the pinned key, but the origin line is not the key name.
        key = Ed25519Signer("audit.example/log", bytes(range(32)))
        text = parse_note(server.note).text.replace("audit.example/log", "other.example/log", 1)
        server.tamper.rewrite["/checkpoint"] = lambda b: sign_note(text, [key]).encode()
        assert server.audit(None) == 2


def test_rolled_back_checkpoint_on_the_second_run(server: Server, tmp_path: Path) -> None:
    server.add(400)
    old = server.note
    server.add(400, tag="b")
    state = tmp_path / "s.json"
    assert server.audit(state) == 0
    server.tamper.rewrite["/checkpoint"] = lambda b: old.encode()
    assert server.audit(state) == 2
    assert _state_size(state) == 800


@pytest.mark.parametrize("size", [300, 700, 900])
def test_forked_log_on_the_second_run(
    tmp_path: Path, size: int, database: str | None, new_database: Callable[[], str | None]
) -> None:
    """Another tree signed by the same key: smaller (rollback), same size, or larger."""
    state = tmp_path / "s.json"
    with serve(tmp_path / "a", database=database) as a:
        a.add(700)
        assert a.audit(state) == 0
    with serve(tmp_path / "b", database=new_database()) as b:
        b.add(size, tag="fork")
        assert b.audit(state) == 2
    assert _state_size(state) == 700


def test_forked_tiles_only_log(
    tmp_path: Path, database: str | None, new_database: Callable[[], str | None]
) -> None:
    """Without the JSON API, consistency comes from tiles and the recomputed tree."""
    state = tmp_path / "s.json"
    with serve(tmp_path / "a", database=database) as a:
        a.add(700)
        a.tamper.block.append("/v1/")
        assert a.audit(state) == 0
        a.tamper.block.clear()
        a.add(100, tag="more")
        a.tamper.block.append("/v1/")
        a.tamper.seen.clear()
        assert a.audit(state) == 0
        assert "/v1/proof/consistency" in a.tamper.seen  # asked, got 404, used tiles
    with serve(tmp_path / "b", database=new_database()) as b:
        b.add(1000, tag="fork")
        b.tamper.block.append("/v1/")
        assert b.audit(state) == 2
    assert _state_size(state) == 800


def test_consistency_proof_that_lies(server: Server, tmp_path: Path) -> None:
    server.add(300)
    state = tmp_path / "s.json"
    assert server.audit(state) == 0
    server.add(300, tag="b")

    def bad_proof(body: bytes) -> bytes:
        doc = json.loads(body)
        doc["consistency_proof"] = doc["consistency_proof"][::-1]
        return json.dumps(doc).encode()

    server.tamper.rewrite["/v1/proof/consistency"] = bad_proof
    assert server.audit(state) == 2


def _policy(server: Server, quorum: str = "w1") -> str:
    return (
        f"log {server.vkey}\n"
        f"witness w1 {WITNESS.vkey()}\n"
        f"witness w2 {CosignatureSigner('witness.example/w2', bytes(32)).vkey()}\n"
        "group both all w1 w2\n"
        f"quorum {quorum}\n"
    )


def _cosign(body: bytes, signer: CosignatureSigner = WITNESS) -> bytes:
    note = body.decode()
    return (note + signer.cosign(parse_note(note).text, 1_700_000_000).line()).encode()


def test_witness_quorum(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.add(300)
    policy = tmp_path / "policy"
    policy.write_text(_policy(server))
    state = tmp_path / "s.json"
    assert server.audit(state, "--policy", str(policy)) == 3  # not cosigned
    assert not state.exists() or json.loads(state.read_text())["checkpoint"] is None
    assert "QUORUM" in capsys.readouterr().err
    server.tamper.rewrite["/checkpoint"] = _cosign
    assert server.audit(state, "--policy", str(policy)) == 0
    assert "cosigned by: w1 (quorum 'w1' met)" in capsys.readouterr().out
    # 2 of 2 needed, only w1 cosigned.
    policy.write_text(_policy(server, quorum="both"))
    assert server.audit(state, "--policy", str(policy)) == 3
    # --vkey may be left out: the policy lists exactly one log.
    policy.write_text(_policy(server))
    assert main(["audit", URL, "--policy", str(policy)], http=server.http) == 0


def test_bad_cosignature_fails(server: Server, tmp_path: Path) -> None:
    server.add(10)
    policy = tmp_path / "policy"
    policy.write_text(_policy(server))

    def bad(body: bytes) -> bytes:
        good = _cosign(body).decode()
        head, _, line = good.rstrip("\n").rpartition("\n")
        return (
            head + "\n" + line[:-6] + ("AAAA==" if not line.endswith("AAAA==") else "BBBB==") + "\n"
        ).encode()

    server.tamper.rewrite["/checkpoint"] = bad
    assert server.audit(None, "--policy", str(policy)) == 2


def test_unreachable_log_is_exit_1(tmp_path: Path) -> None:
    from client.formats.note import Ed25519Signer

    vkey = Ed25519Signer(ORIGIN, SEED).vkey()
    assert main(["audit", "http://127.0.0.1:9", "--vkey", vkey, "--timeout", "2"]) == 1
    assert main(["audit", "http://127.0.0.1:9"]) == 1  # no key
    assert main(["audit"]) == 1  # usage
    assert main(["audit", "http://x", "--vkey", "nonsense"]) == 1


def test_gzip_is_transparent(server: Server) -> None:
    """Entry bundles come gzip-compressed when asked for; the client reads them either way."""
    server.add(300)
    r = server.http.get("/tile/entries/000", headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert len(decode_entry_bundle(r.content)) == 256
    raw = server.http.get("/tile/entries/000", headers={"Accept-Encoding": "identity"})
    assert gzip.decompress(gzip.compress(raw.content)) == r.content
    assert root_of_range([leaf_hash(e) for e in decode_entry_bundle(r.content)])
