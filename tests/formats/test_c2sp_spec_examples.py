"""vectors/c2sp-spec-examples.json: the examples printed in the C2SP specifications."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import cosigned_message
from client.formats.note import Ed25519Verifier, key_id, open_note, parse_note
from client.formats.tiles import (
    Tile,
    decode_entry_bundle,
    encode_entry_bundle,
    entry_bundles_for_size,
    format_index,
    parse_index,
    parse_tile_path,
    tiles_for_size,
)
from tests.conftest import VECTORS

DATA: dict[str, Any] = json.loads((VECTORS / "c2sp-spec-examples.json").read_text())


def _paths(tiles: list[Tile]) -> list[str]:
    return [t.path() for t in tiles]


# --- signed-note -----------------------------------------------------------------------------


def test_signed_note_example() -> None:
    ex = DATA["signed_note"]
    assert ex["valid"] is True
    verifier = Ed25519Verifier.from_vkey(ex["vkey"])
    assert verifier.name == "example.com/foo"
    assert verifier.key_id == 0x530D903A
    assert key_id("example.com/foo", 0x01, verifier.public_key) == 0x530D903A
    assert verifier.vkey() == ex["vkey"]

    note = open_note(ex["note"], [verifier])
    assert note.text == ex["signed_text"]
    assert [(s.name, s.key_id) for s in note.verified] == [("example.com/foo", 0x530D903A)]
    assert note.format() == ex["note"]


def test_signed_note_example_as_bytes() -> None:
    ex = DATA["signed_note"]
    note = open_note(ex["note"].encode(), [Ed25519Verifier.from_vkey(ex["vkey"])])
    assert note.text == ex["signed_text"]


# --- tlog-checkpoint -------------------------------------------------------------------------


def test_checkpoint_example() -> None:
    note = parse_note(DATA["checkpoint_example"])
    cp = Checkpoint.parse(note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.text() == note.text
    (sig,) = note.signatures
    assert sig.name == cp.origin
    assert f"{sig.key_id:08x}" == DATA["checkpoint_example_key_id_hex"]
    assert len(sig.raw) == 64
    assert note.format() == DATA["checkpoint_example"]


# --- tlog-cosignature ------------------------------------------------------------------------


def test_cosignature_signed_message_example() -> None:
    text = parse_note(DATA["checkpoint_example"]).text
    want = DATA["cosignature_example_signed_message"].encode()
    assert cosigned_message(text, 1679315147) == want


# --- tlog-tiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("n,path", sorted((int(k), v) for k, v in DATA["tile_index_paths"].items()))
def test_tile_index_path(n: int, path: str) -> None:
    assert format_index(n) == path
    assert parse_index(path) == n
    assert parse_tile_path(f"tile/0/{path}") == Tile(0, n)
    assert parse_tile_path(f"tile/entries/{path}.p/7") == Tile(-1, n, 7)


@pytest.mark.parametrize("size", [256, 300])
def test_tiles_for_size(size: int) -> None:
    want = DATA["tiles_for_size"][str(size)]
    assert _paths(tiles_for_size(size)) + _paths(entry_bundles_for_size(size)) == want
    assert [parse_tile_path(p).path() for p in want] == want


def test_tiles_for_size_70000() -> None:
    spec = DATA["tiles_for_size"]
    tiles = tiles_for_size(70000)
    level0_full = [t for t in tiles if t.level == 0 and t.width == 256]
    assert len(level0_full) == spec["70000_level0_full_count"] == 273
    assert [t.index for t in level0_full] == list(range(273))
    rest = [t for t in tiles if not (t.level == 0 and t.width == 256)]
    assert _paths(rest) == spec["70000_hash_tiles_not_level0_full"]
    bundles = entry_bundles_for_size(70000)
    assert len(bundles) == 274
    assert bundles[-1].path() == spec["70000_entry_bundle_last"]
    assert all(b.width == 256 for b in bundles[:-1])


def test_entry_bundle_example() -> None:
    ex = DATA["entry_bundle_example"]
    entries = [e.encode() for e in ex["entries"]]
    bundle = bytes.fromhex(ex["bundle_hex"])
    assert encode_entry_bundle(entries) == bundle
    assert decode_entry_bundle(bundle) == entries
    assert decode_entry_bundle(bundle, count=3) == entries
