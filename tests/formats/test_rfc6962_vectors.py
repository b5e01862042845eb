"""vectors/rfc6962.json: roots, proofs, the signed checkpoint and the verifier inputs.

The tree's leaf i is the ASCII text of ``str(i)``. Each proof is checked twice: the verifier
accepts it, and :func:`client.formats.merkle.proof_from_ranges` regenerates it byte for byte from
the leaves (node selection and hashing kept apart, as in transparency-dev/merkle).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.merkle import (
    EMPTY_ROOT,
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
    key_id,
    open_note,
    sign_note,
)
from tests.conftest import VECTORS
from tests.formats import oracle

DATA: dict[str, Any] = json.loads((VECTORS / "rfc6962.json").read_text())
LEAVES = [bytes.fromhex(h) for h in DATA["leaves_hex"]]
CHECKPOINT: dict[str, Any] = DATA["checkpoint"]
CT: dict[str, Any] = DATA["rfc6962_ct_testdata"]
CT_LEAVES = [bytes.fromhex(h) for h in CT["leaves_hex"]]


def _node_reader(leaves: list[bytes]) -> Any:
    """``node(level, index)`` for proof_from_ranges, computed by the oracle from the leaves."""

    @cache
    def node(level: int, index: int) -> bytes:
        chunk = leaves[index << level : (index + 1) << level]
        assert len(chunk) == 1 << level, "asked for a subtree that is not perfect"
        return oracle.mth(chunk)

    return node


NODE = _node_reader(LEAVES)


def _hexes(hashes: list[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


# --- the tree ------------------------------------------------------------------------------


def test_shape() -> None:
    assert len(LEAVES) == 70
    assert [r["tree_size"] for r in DATA["roots"]] == list(range(1, 71))
    assert len(DATA["inclusion"]) == 100
    assert len(DATA["consistency"]) == 154
    assert bytes.fromhex(DATA["empty_tree_root"]) == EMPTY_ROOT == root_of_range([])
    assert LEAVES[10] == b"10"


def test_leaf_hashes() -> None:
    assert [leaf_hash(d).hex() for d in LEAVES] == DATA["leaf_hashes"]


@pytest.mark.parametrize("case", DATA["roots"], ids=lambda c: f"size{c['tree_size']}")
def test_root(case: dict[str, Any]) -> None:
    n = case["tree_size"]
    want = bytes.fromhex(case["root"])
    assert root_of_range([leaf_hash(d) for d in LEAVES[:n]]) == want
    assert proof_from_ranges([(0, n)], NODE) == [want]
    assert oracle.mth(LEAVES[:n]) == want  # the oracle agrees with the vectors too


@pytest.mark.parametrize(
    "case", DATA["inclusion"], ids=lambda c: f"index{c['index']}-size{c['tree_size']}"
)
def test_inclusion_proof(case: dict[str, Any]) -> None:
    index, size = case["index"], case["tree_size"]
    leaf = bytes.fromhex(case["leaf_hash"])
    root = bytes.fromhex(case["root"])
    proof = [bytes.fromhex(h) for h in case["proof"]]
    assert bytes.fromhex(case["leaf_hex"]) == LEAVES[index]
    assert leaf_hash(LEAVES[index]) == leaf
    assert root == bytes.fromhex(DATA["roots"][size - 1]["root"])

    verify_inclusion(index, size, leaf, proof, root)
    assert _hexes(proof_from_ranges(inclusion_ranges(index, size), NODE)) == case["proof"]
    assert _hexes(oracle.path(index, LEAVES[:size])) == case["proof"]


@pytest.mark.parametrize(
    "case",
    DATA["consistency"],
    ids=lambda c: f"{c['old_size']}-to-{c['new_size']}",
)
def test_consistency_proof(case: dict[str, Any]) -> None:
    old, new = case["old_size"], case["new_size"]
    old_root, new_root = bytes.fromhex(case["old_root"]), bytes.fromhex(case["new_root"])
    proof = [bytes.fromhex(h) for h in case["proof"]]
    assert old_root == bytes.fromhex(DATA["roots"][old - 1]["root"])
    assert new_root == bytes.fromhex(DATA["roots"][new - 1]["root"])

    verify_consistency(old, new, old_root, new_root, proof)
    assert _hexes(proof_from_ranges(consistency_ranges(old, new), NODE)) == case["proof"]
    assert _hexes(oracle.proof(old, LEAVES[:new])) == case["proof"]


# --- the 8-leaf RFC 6962 test tree, and the SPECS.md §c.1 worked proofs -----------------------


@pytest.mark.parametrize("case", CT["roots"], ids=lambda c: f"size{c['tree_size']}")
def test_ct_testdata_root(case: dict[str, Any]) -> None:
    n = case["tree_size"]
    hashes = [leaf_hash(d) for d in CT_LEAVES[:n]]
    assert root_of_range(hashes).hex() == case["root"]
    assert oracle.mth(CT_LEAVES[:n]).hex() == case["root"]


def test_ct_testdata_size1_root_is_leaf_hash_of_empty_string() -> None:
    assert CT_LEAVES[0] == b""
    assert CT["roots"][0]["root"] == leaf_hash(b"").hex()


# RFC 6962 §2.1.3: in the 7-leaf tree, PATH(d0) = [b, h, l] and PROOF(3) = [c, d, g, l].
SPEC_7_LEAF = {
    ("path", 0): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e",
    ],
    ("proof", 3): [
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e",
    ],
    ("proof", 4): ["837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e"],
    ("proof", 6): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}


@pytest.mark.parametrize("kind,m", list(SPEC_7_LEAF), ids=lambda v: str(v))
def test_spec_seven_leaf_proofs(kind: str, m: int) -> None:
    want = SPEC_7_LEAF[(kind, m)]
    leaves = CT_LEAVES[:7]
    node = _node_reader(leaves)
    root7 = oracle.mth(leaves)
    if kind == "path":
        got = proof_from_ranges(inclusion_ranges(m, 7), node)
        verify_inclusion(m, 7, leaf_hash(leaves[m]), got, root7)
        assert _hexes(oracle.path(m, leaves)) == want
    else:
        got = proof_from_ranges(consistency_ranges(m, 7), node)
        verify_consistency(m, 7, oracle.mth(leaves[:m]), root7, got)
        assert _hexes(oracle.proof(m, leaves)) == want
    assert _hexes(got) == want


# --- the signed checkpoint -----------------------------------------------------------------


def _pem_verifier(name: str, pem: str) -> Ed25519Verifier:
    key = load_pem_public_key(pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    return Ed25519Verifier(name, key.public_bytes_raw())


def _checkpoint_verifiers() -> dict[str, Ed25519Verifier]:
    name = CHECKPOINT["key_name"]
    return {
        "vkey": Ed25519Verifier.from_vkey(CHECKPOINT["vkey"]),
        "pem": _pem_verifier(name, CHECKPOINT["public_key_pem"]),
        "raw": Ed25519Verifier(name, bytes.fromhex(CHECKPOINT["public_key_hex"])),
    }


@pytest.mark.parametrize("form", ["vkey", "pem", "raw"])
def test_checkpoint_verifies(form: str) -> None:
    verifier = _checkpoint_verifiers()[form]
    assert verifier.key_id == int(CHECKPOINT["key_id_hex"], 16)
    assert verifier.vkey() == CHECKPOINT["vkey"]
    cp, note = open_checkpoint(CHECKPOINT["text"], [verifier], origin=CHECKPOINT["origin"])
    assert cp == Checkpoint(
        CHECKPOINT["origin"], CHECKPOINT["tree_size"], bytes.fromhex(CHECKPOINT["root"])
    )
    assert cp.root_hash == bytes.fromhex(DATA["roots"][69]["root"])
    assert [(s.name, s.key_id) for s in note.verified] == [(verifier.name, verifier.key_id)]
    assert note.format() == CHECKPOINT["text"]


def test_checkpoint_key_id_rule() -> None:
    pub = bytes.fromhex(CHECKPOINT["public_key_hex"])
    assert f"{key_id(CHECKPOINT['key_name'], 0x01, pub):08x}" == CHECKPOINT["key_id_hex"]


def test_checkpoint_skey() -> None:
    signer = Ed25519Signer.from_skey(CHECKPOINT["skey_go_note"])
    assert signer.name == CHECKPOINT["key_name"]
    assert signer.public_key.hex() == CHECKPOINT["public_key_hex"]
    assert signer.skey() == CHECKPOINT["skey_go_note"]
    assert signer.vkey() == CHECKPOINT["vkey"]
    from_seed = Ed25519Signer(signer.name, bytes.fromhex(CHECKPOINT["ed25519_seed_hex"]))
    assert from_seed.skey() == CHECKPOINT["skey_go_note"]
    # Ed25519 is deterministic: the key from the skey re-signs the very same bytes.
    text = open_note(CHECKPOINT["text"], [signer.verifier()]).text
    assert sign_note(text, [signer]) == CHECKPOINT["text"]


def test_checkpoint_wrong_key_name_is_unknown() -> None:
    other = Ed25519Verifier("other.example/log", bytes.fromhex(CHECKPOINT["public_key_hex"]))
    with pytest.raises(VerificationError):
        open_checkpoint(CHECKPOINT["text"], [other])


def test_checkpoint_wrong_origin_rejected() -> None:
    with pytest.raises(VerificationError):
        open_checkpoint(
            CHECKPOINT["text"], [_checkpoint_verifiers()["vkey"]], origin="example.com/other"
        )


# --- verifier_inputs: a small end-to-end verifier over the vectors' own input shapes -------


def _verifier_for(public_key: str, key_name: str) -> Ed25519Verifier:
    if public_key.startswith("-----BEGIN"):
        return _pem_verifier(key_name, public_key)
    if "+" in public_key:
        return Ed25519Verifier.from_vkey(public_key)
    return Ed25519Verifier(key_name, bytes.fromhex(public_key))


def _verify_input(inp: dict[str, Any]) -> None:
    """Everything the input carries must check out; the proof must be about the checkpoint."""
    key_name = inp.get("key_name", CHECKPOINT["origin"])
    cp = None
    if "checkpoint" in inp:
        verifier = _verifier_for(inp["public_key"], key_name)
        cp, _ = open_checkpoint(inp["checkpoint"], [verifier], origin=CHECKPOINT["origin"])
    if "index" in inp:
        if "leaf_hex" in inp:
            leaf = leaf_hash(bytes.fromhex(inp["leaf_hex"]))
        else:
            leaf = bytes.fromhex(inp["leaf_hash"])
        size, root = inp["tree_size"], bytes.fromhex(inp["root"])
        if cp is not None and (cp.size, cp.root_hash) != (size, root):
            raise VerificationError("the proof is not about the signed checkpoint")
        verify_inclusion(inp["index"], size, leaf, [bytes.fromhex(h) for h in inp["proof"]], root)
    if "consistency" in inp:
        assert cp is not None
        c = inp["consistency"]
        verify_consistency(
            c["old_size"],
            cp.size,
            bytes.fromhex(c["old_root"]),
            cp.root_hash,
            [bytes.fromhex(h) for h in c["proof"]],
        )


def test_verifier_inputs_cover_both_outcomes() -> None:
    outcomes = {v["expect"] for v in DATA["verifier_inputs"]}
    assert outcomes == {"pass", "fail"}


@pytest.mark.parametrize("case", DATA["verifier_inputs"], ids=lambda c: c["name"])
def test_verifier_input(case: dict[str, Any]) -> None:
    if case["expect"] == "pass":
        _verify_input(case["input"])
    else:
        with pytest.raises((VerificationError, FormatError)):
            _verify_input(case["input"])
