"""vectors/c2sp-end-to-end.json, reproduced byte for byte.

One deterministic log (Ed25519 seed 00..1f, origin scim-log.example.com/audit), one witness
(seed 20..3f) and 300 entries ``scim-event-0 .. scim-event-299``. Ed25519 is deterministic,
so signing the same text with the same seed must give the very same bytes as Go did.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.cosignature import CosignatureSigner, CosignatureVerifier, cosigned_message
from client.formats.merkle import (
    VerificationError,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    proof_from_ranges,
    root_of_range,
    verify_consistency,
    verify_inclusion,
)
from client.formats.note import (
    Ed25519Signer,
    Ed25519Verifier,
    FormatError,
    Signature,
    b64decode_strict,
    b64encode,
    open_note,
    parse_note,
    sign_note,
)
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import (
    Tile,
    TileHashReader,
    decode_entry_bundle,
    encode_entry_bundle,
    entry_bundles_for_size,
    tiles_for_size,
)
from tests.conftest import VECTORS
from tests.formats import oracle

E2E: dict[str, Any] = json.loads((VECTORS / "c2sp-end-to-end.json").read_text())
ORIGIN: str = E2E["origin"]
ENTRIES = [f"scim-event-{i}".encode() for i in range(300)]
LEAF_HASHES = [leaf_hash(e) for e in ENTRIES]
TIME = E2E["cosignature_time"]


@cache
def _perfect(level: int, index: int) -> bytes:
    """The oracle's hash of the perfect subtree (level, index) of the 300-entry tree."""
    chunk = ENTRIES[index << level : (index + 1) << level]
    assert len(chunk) == 1 << level
    return oracle.mth(chunk)


def _log_signer() -> Ed25519Signer:
    return Ed25519Signer(ORIGIN, bytes.fromhex(E2E["log_seed_hex"]))


def _witness_signer() -> CosignatureSigner:
    return CosignatureSigner(E2E["witness_name"], bytes.fromhex(E2E["witness_seed_hex"]))


def _checkpoint_text(size: int) -> str:
    return Checkpoint(ORIGIN, size, root_of_range(LEAF_HASHES[:size])).text()


def test_seeds_are_the_documented_ones() -> None:
    assert bytes.fromhex(E2E["log_seed_hex"]) == bytes(range(32))
    assert bytes.fromhex(E2E["witness_seed_hex"]) == bytes(range(32, 64))


def test_roots() -> None:
    assert b64encode(root_of_range(LEAF_HASHES)) == E2E["root_300_b64"]
    assert b64encode(root_of_range(LEAF_HASHES[:100])) == E2E["root_100_b64"]
    assert b64encode(oracle.mth(ENTRIES)) == E2E["root_300_b64"]


def test_log_vkey() -> None:
    signer = _log_signer()
    assert signer.vkey() == E2E["log_vkey"]
    assert "+" in E2E["log_vkey"].split("+", 2)[2]  # base64 with '+': must not split there
    verifier = Ed25519Verifier.from_vkey(E2E["log_vkey"])
    assert verifier.public_key == signer.public_key
    assert verifier.key_id == signer.key_id == 0xD55B5A85
    assert verifier.vkey() == E2E["log_vkey"]


def test_log_skey_round_trip() -> None:
    signer = _log_signer()
    again = Ed25519Signer.from_skey(signer.skey())
    assert again.vkey() == E2E["log_vkey"]
    assert again.skey() == signer.skey()


def test_checkpoint_300_from_signing() -> None:
    text = _checkpoint_text(300)
    assert sign_note(text, [_log_signer()]) == E2E["checkpoint_300"]
    cp, note = open_checkpoint(
        E2E["checkpoint_300"], [Ed25519Verifier.from_vkey(E2E["log_vkey"])], origin=ORIGIN
    )
    assert cp == Checkpoint(ORIGIN, 300, b64decode_strict(E2E["root_300_b64"]))
    assert note.text == text


def test_witness_vkey() -> None:
    signer = _witness_signer()
    assert signer.vkey() == E2E["witness_vkey"]
    verifier = CosignatureVerifier.from_vkey(E2E["witness_vkey"])
    assert verifier.key_id == signer.key_id == 0x969980CF
    assert verifier.public_key == signer.public_key
    assert CosignatureSigner.from_skey(signer.skey()).vkey() == E2E["witness_vkey"]


def test_cosignature_line() -> None:
    text = _checkpoint_text(300)
    assert cosigned_message(text, TIME) == E2E["cosignature_signed_message"].encode()
    sig = _witness_signer().cosign(text, TIME)
    assert sig.line() == E2E["cosignature_line"]
    assert CosignatureVerifier.timestamp(sig) == TIME == 1700000000
    raw = b64decode_strict(E2E["cosignature_line"].split(" ")[2].rstrip("\n"))
    assert raw[:4] == bytes.fromhex("969980cf")
    assert raw[4:12] == bytes.fromhex("000000006553f100")


def test_cosigned_checkpoint_verifies() -> None:
    cosigned = E2E["checkpoint_300"] + E2E["cosignature_line"]
    log = Ed25519Verifier.from_vkey(E2E["log_vkey"])
    witness = CosignatureVerifier.from_vkey(E2E["witness_vkey"])
    note = open_note(cosigned, [log, witness])
    assert [s.name for s in note.verified] == [ORIGIN, E2E["witness_name"]]
    # The cosignature alone is enough for a client that only trusts the witness.
    assert [s.name for s in open_note(cosigned, [witness]).verified] == [E2E["witness_name"]]
    # A cosignature at another time is a different signature: it must not verify.
    moved = _witness_signer().cosign(_checkpoint_text(300), TIME + 1)
    relabelled = Signature(moved.name, moved.key_id, TIME.to_bytes(8, "big") + moved.raw[8:])
    with pytest.raises(VerificationError):
        open_note(E2E["checkpoint_300"] + relabelled.line(), [log, witness])


def _add_checkpoint_body(old_size: int, proof: list[bytes], checkpoint: str) -> str:
    """tlog-witness add-checkpoint: ``old N``, proof lines, blank line, checkpoint note."""
    return f"old {old_size}\n" + "".join(b64encode(h) + "\n" for h in proof) + "\n" + checkpoint


def test_add_checkpoint_body_old_100() -> None:
    proof = proof_from_ranges(consistency_ranges(100, 300), _perfect)
    assert proof == oracle.proof(100, ENTRIES)
    body = _add_checkpoint_body(100, proof, E2E["checkpoint_300"])
    assert body == E2E["add_checkpoint_body_old_100"]
    verify_consistency(
        100,
        300,
        b64decode_strict(E2E["root_100_b64"]),
        b64decode_strict(E2E["root_300_b64"]),
        proof,
    )


def test_add_checkpoint_body_parses_back() -> None:
    head, _, note = E2E["add_checkpoint_body_old_100"].partition("\n\n")
    old_line, *proof_lines = head.split("\n")
    assert old_line == "old 100"
    proof = [b64decode_strict(h, size=32) for h in proof_lines]
    cp, _ = open_checkpoint(note, [Ed25519Verifier.from_vkey(E2E["log_vkey"])], origin=ORIGIN)
    verify_consistency(100, cp.size, b64decode_strict(E2E["root_100_b64"]), cp.root_hash, proof)


def test_tlog_proof_bundle_format() -> None:
    proof = proof_from_ranges(inclusion_ranges(5, 300), _perfect)
    assert proof == oracle.path(5, ENTRIES)
    bundle = TlogProof(5, tuple(proof), E2E["checkpoint_300"] + E2E["cosignature_line"])
    assert bundle.format() == E2E["tlog_proof_index_5"]


def test_tlog_proof_bundle_parse_and_verify() -> None:
    bundle = TlogProof.parse(E2E["tlog_proof_index_5"])
    assert bundle.index == 5
    assert bundle.extra is None
    assert bundle.checkpoint_note == E2E["checkpoint_300"] + E2E["cosignature_line"]
    assert TlogProof.parse(E2E["tlog_proof_index_5"].encode()) == bundle
    assert bundle.format() == E2E["tlog_proof_index_5"]

    log = Ed25519Verifier.from_vkey(E2E["log_vkey"])
    witness = CosignatureVerifier.from_vkey(E2E["witness_vkey"])
    leaf = bytes.fromhex(E2E["leaf_hash_5_hex"])
    assert leaf_hash(b"scim-event-5") == leaf

    cp, note = bundle.verify(log, entry=b"scim-event-5", extra_verifiers=[witness])
    assert cp.size == 300
    assert [s.name for s in note.verified] == [ORIGIN, E2E["witness_name"]]
    cp2, _ = bundle.verify(log, leaf=leaf)
    assert cp2 == cp
    verify_inclusion(5, 300, leaf, list(bundle.inclusion_proof), cp.root_hash)


def test_tlog_proof_bundle_with_extra_round_trips() -> None:
    bundle = TlogProof.parse(E2E["tlog_proof_index_5"])
    with_extra = TlogProof(5, bundle.inclusion_proof, bundle.checkpoint_note, b"\x00opaque\xff")
    text = with_extra.format()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra AG9wYXF1Zf8=\nindex 5\n")
    assert TlogProof.parse(text) == with_extra
    with_extra.verify(Ed25519Verifier.from_vkey(E2E["log_vkey"]), entry=b"scim-event-5")


@pytest.mark.parametrize("entry", [b"scim-event-4", b"scim-event-6", b"scim-event-5 "])
def test_tlog_proof_bundle_wrong_entry(entry: bytes) -> None:
    bundle = TlogProof.parse(E2E["tlog_proof_index_5"])
    with pytest.raises(VerificationError):
        bundle.verify(Ed25519Verifier.from_vkey(E2E["log_vkey"]), entry=entry)


def test_tile_paths_300() -> None:
    paths = [t.path() for t in tiles_for_size(300) + entry_bundles_for_size(300)]
    assert paths == E2E["tiles_for_size_300"]


# --- tiles: write them from the leaf hashes, read them back through TileHashReader -----------


def _build_tiles(size: int) -> dict[str, bytes]:
    tiles: dict[str, bytes] = {}
    for tile in tiles_for_size(size):
        first = tile.index * 256
        hashes = [_perfect(8 * tile.level, first + i) for i in range(tile.width)]
        tiles[tile.path()] = b"".join(hashes)
    for bundle in entry_bundles_for_size(size):
        first = bundle.index * 256
        tiles[bundle.path()] = encode_entry_bundle(ENTRIES[first : first + bundle.width])
    return tiles


def _reader(size: int) -> tuple[TileHashReader, list[str]]:
    tiles = _build_tiles(size)
    fetched: list[str] = []

    def fetch(tile: Tile) -> bytes:
        fetched.append(tile.path())
        return tiles[tile.path()]

    return TileHashReader(size, fetch), fetched


def test_tiles_300_level0_is_the_leaf_hashes_from_the_entry_bundles() -> None:
    tiles = _build_tiles(300)
    assert sorted(tiles) == sorted(E2E["tiles_for_size_300"])
    entries = decode_entry_bundle(tiles["tile/entries/000"], 256) + decode_entry_bundle(
        tiles["tile/entries/001.p/44"], 44
    )
    assert entries == ENTRIES
    leaf_hashes = [leaf_hash(e) for e in entries]
    assert tiles["tile/0/000"] + tiles["tile/0/001.p/44"] == b"".join(leaf_hashes)
    assert tiles["tile/1/000.p/1"] == root_of_range(leaf_hashes[:256])


def test_tiles_300_give_the_root() -> None:
    reader, fetched = _reader(300)
    (root,) = proof_from_ranges([(0, 300)], reader.node)
    assert b64encode(root) == E2E["root_300_b64"]
    assert set(fetched) <= set(E2E["tiles_for_size_300"])


def test_tiles_300_give_every_inclusion_proof() -> None:
    reader, fetched = _reader(300)
    root = b64decode_strict(E2E["root_300_b64"])
    for index in range(300):
        ranges = inclusion_ranges(index, 300)
        proof = proof_from_ranges(ranges, reader.node)
        assert proof == proof_from_ranges(ranges, _perfect), index
        verify_inclusion(index, 300, LEAF_HASHES[index], proof, root)
    want = TlogProof.parse(E2E["tlog_proof_index_5"]).inclusion_proof
    assert tuple(proof_from_ranges(inclusion_ranges(5, 300), reader.node)) == want
    assert set(fetched) <= {p for p in E2E["tiles_for_size_300"] if "entries" not in p}


def test_tiles_300_give_every_consistency_proof() -> None:
    reader, _ = _reader(300)
    root = b64decode_strict(E2E["root_300_b64"])
    for old in range(1, 301):
        ranges = consistency_ranges(old, 300)
        proof = proof_from_ranges(ranges, reader.node)
        assert proof == proof_from_ranges(ranges, _perfect), old
        verify_consistency(old, 300, root_of_range(LEAF_HASHES[:old]), root, proof)
    body = E2E["add_checkpoint_body_old_100"].partition("\n\n")[0].split("\n")[1:]
    assert [b64encode(h) for h in proof_from_ranges(consistency_ranges(100, 300), reader.node)] == (
        body
    )


def test_tile_reader_rejects_bad_tiles() -> None:
    tiles = _build_tiles(300)

    def short(tile: Tile) -> bytes:
        return tiles[tile.path()][:-1]

    with pytest.raises(FormatError):
        TileHashReader(300, short).node(0, 0)
    reader, _ = _reader(300)
    with pytest.raises(FormatError):
        reader.node(0, 300)  # beyond the tree
    with pytest.raises(FormatError):
        reader.node(9, 0)  # 512 leaves: not a subtree of a 300-leaf tree


def test_checkpoint_note_is_strictly_formed() -> None:
    note = parse_note(E2E["checkpoint_300"])
    assert note.text == _checkpoint_text(300)
    assert len(note.signatures) == 1
