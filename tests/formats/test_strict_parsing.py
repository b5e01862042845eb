"""Strict parsing: one accepted text form per value, and the signed-note verification rules.

Rejected: leading zeros, '+', spaces, non-ASCII digits, URL-safe or unpadded base64, CRLF,
hashes that are not 32 bytes. Checkpoint variants are *re-signed* with the log key before they
are opened, so that the parser itself (not a failed signature) must refuse them.

Signed-note rules (c2sp.org/signed-note, Go note.Open, Sunlight's grease): unknown signatures
are ignored, wherever they are and whatever name they carry; a known key's duplicate or bad
signature rejects the note; more than 100 signatures reject it.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from client.formats.checkpoint import Checkpoint, open_checkpoint, parse_decimal
from client.formats.cosignature import (
    CosignatureSigner,
    CosignatureVerifier,
    cosigned_message,
)
from client.formats.merkle import EMPTY_ROOT, VerificationError
from client.formats.note import (
    MAX_SIGNATURES,
    Ed25519Signer,
    Ed25519Verifier,
    FormatError,
    Note,
    Signature,
    b64decode_strict,
    b64encode,
    open_note,
    parse_note,
    parse_vkey,
    sign_note,
)
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import (
    Tile,
    decode_entry_bundle,
    encode_entry_bundle,
    format_index,
    parse_index,
    parse_tile_path,
)
from tests.conftest import VECTORS

E2E: dict[str, Any] = json.loads((VECTORS / "c2sp-end-to-end.json").read_text())
ORIGIN: str = E2E["origin"]
ROOT_B64: str = E2E["root_300_b64"]
CHECKPOINT: str = E2E["checkpoint_300"]
TEXT = CHECKPOINT.partition("\n\n")[0] + "\n"
BUNDLE: str = E2E["tlog_proof_index_5"]
LOG_SIGNER = Ed25519Signer(ORIGIN, bytes.fromhex(E2E["log_seed_hex"]))
LOG = Ed25519Verifier.from_vkey(E2E["log_vkey"])
WITNESS_SIGNER = CosignatureSigner(E2E["witness_name"], bytes.fromhex(E2E["witness_seed_hex"]))
WITNESS = CosignatureVerifier.from_vkey(E2E["witness_vkey"])
LOG_SIG = parse_note(CHECKPOINT).signatures[0]


def resigned(text: str) -> str:
    return sign_note(text, [LOG_SIGNER])


def note_with(*sigs: Signature, text: str = TEXT) -> str:
    return Note(text, sigs).format()


def test_fixture_sanity() -> None:
    assert TEXT == f"{ORIGIN}\n300\n{ROOT_B64}\n"
    assert resigned(TEXT) == CHECKPOINT
    assert note_with(LOG_SIG) == CHECKPOINT


# --- decimals ------------------------------------------------------------------------------

BAD_DECIMALS = [
    "",
    "0300",
    "00",
    "01",
    "+300",
    "-300",
    "-0",
    " 300",
    "300 ",
    "3 00",
    "٣٠٠",  # ARABIC-INDIC DIGITS
    "３００",  # FULLWIDTH DIGITS
    "३००",  # DEVANAGARI DIGITS
    "³",  # SUPERSCRIPT THREE: isdigit() is True
    "1_000",
    "0x12c",
    "3e2",
    "300.0",
    str(2**63),
    "9" * 21,
]


@pytest.mark.parametrize("s", BAD_DECIMALS)
def test_parse_decimal_rejects(s: str) -> None:
    with pytest.raises(FormatError):
        parse_decimal(s)


@pytest.mark.parametrize("s", ["0", "1", "300", "20852163", str(2**63 - 1)])
def test_parse_decimal_accepts(s: str) -> None:
    assert str(parse_decimal(s)) == s


# --- base64 --------------------------------------------------------------------------------

BAD_BASE64 = [
    "AA",  # unpadded
    "AA=",  # short padding
    "AA===",
    "AB==",  # non-zero trailing bits: non-canonical
    "AAE",
    " AA==",
    "AA== ",
    "AA==\n",
    "A A=",
    "-_8=",  # URL-safe alphabet
    "AA==AA==",
    "ＡＡ==",
    "AA\r\n==",
]


@pytest.mark.parametrize("s", BAD_BASE64)
def test_b64decode_strict_rejects(s: str) -> None:
    with pytest.raises(FormatError):
        b64decode_strict(s)


def test_b64decode_strict_accepts_and_checks_size() -> None:
    assert b64decode_strict("AA==") == b"\x00"
    assert b64decode_strict("+/8=") == b"\xfb\xff"
    assert b64decode_strict(ROOT_B64, size=32) == b64decode_strict(ROOT_B64)
    with pytest.raises(FormatError):
        b64decode_strict(ROOT_B64, size=31)


# --- checkpoint text, re-signed ------------------------------------------------------------

ROOT_31 = b64encode(b64decode_strict(ROOT_B64)[:31])
ROOT_33 = b64encode(b64decode_strict(ROOT_B64) + b"\x00")
ROOT_URLSAFE = ROOT_B64.replace("+", "-").replace("/", "_")
ROOT_NONCANONICAL = ROOT_B64[:-2] + "h="  # 'g' -> 'h' sets one of the two unused bits

BAD_CHECKPOINT_TEXTS = {
    "size leading zero": f"{ORIGIN}\n0300\n{ROOT_B64}\n",
    "size plus": f"{ORIGIN}\n+300\n{ROOT_B64}\n",
    "size minus": f"{ORIGIN}\n-300\n{ROOT_B64}\n",
    "size leading space": f"{ORIGIN}\n 300\n{ROOT_B64}\n",
    "size trailing space": f"{ORIGIN}\n300 \n{ROOT_B64}\n",
    "size arabic-indic digits": f"{ORIGIN}\n٣٠٠\n{ROOT_B64}\n",
    "size fullwidth digits": f"{ORIGIN}\n３００\n{ROOT_B64}\n",
    "size empty": f"{ORIGIN}\n\n{ROOT_B64}\n",
    "size too large": f"{ORIGIN}\n{2**63}\n{ROOT_B64}\n",
    "root url-safe": f"{ORIGIN}\n300\n{ROOT_URLSAFE}\n",
    "root unpadded": f"{ORIGIN}\n300\n{ROOT_B64.rstrip('=')}\n",
    "root non-canonical": f"{ORIGIN}\n300\n{ROOT_NONCANONICAL}\n",
    "root 31 bytes": f"{ORIGIN}\n300\n{ROOT_31}\n",
    "root 33 bytes": f"{ORIGIN}\n300\n{ROOT_33}\n",
    "root trailing space": f"{ORIGIN}\n300\n{ROOT_B64} \n",
    "root missing": f"{ORIGIN}\n300\n",
    "empty origin": f"\n300\n{ROOT_B64}\n",
}


def test_root_variants_are_what_they_claim() -> None:
    assert ROOT_URLSAFE != ROOT_B64
    assert ROOT_B64.endswith("g=")
    assert len(b64decode_strict(ROOT_31)) == 31
    assert len(b64decode_strict(ROOT_33)) == 33


@pytest.mark.parametrize("text", BAD_CHECKPOINT_TEXTS.values(), ids=list(BAD_CHECKPOINT_TEXTS))
def test_signed_but_malformed_checkpoint_is_a_format_error(text: str) -> None:
    with pytest.raises(FormatError):
        Checkpoint.parse(text)
    with pytest.raises(FormatError):
        open_checkpoint(resigned(text), [LOG])


def test_checkpoint_extension_lines_round_trip() -> None:
    # NOT RECOMMENDED, but valid: kept verbatim, and covered by the signature.
    text = f"{ORIGIN}\n300\n{ROOT_B64}\nextension line\n"
    cp, _ = open_checkpoint(resigned(text), [LOG], origin=ORIGIN)
    assert cp.extensions == ("extension line",)
    assert cp.text() == text


def test_empty_tree_checkpoint() -> None:
    text = f"{ORIGIN}\n0\n{b64encode(EMPTY_ROOT)}\n"
    cp, _ = open_checkpoint(resigned(text), [LOG], origin=ORIGIN)
    assert (cp.size, cp.root_hash) == (0, EMPTY_ROOT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": "", "size": 1, "root_hash": EMPTY_ROOT},
        {"origin": "a\nb", "size": 1, "root_hash": EMPTY_ROOT},
        {"origin": "a", "size": -1, "root_hash": EMPTY_ROOT},
        {"origin": "a", "size": 2**63, "root_hash": EMPTY_ROOT},
        {"origin": "a", "size": 1, "root_hash": EMPTY_ROOT[:31]},
        {"origin": "a", "size": 1, "root_hash": EMPTY_ROOT + b"\x00"},
        {"origin": "a", "size": 1, "root_hash": EMPTY_ROOT, "extensions": ("",)},
    ],
)
def test_checkpoint_value_checks(kwargs: dict[str, Any]) -> None:
    with pytest.raises(FormatError):
        Checkpoint(**kwargs)


# --- signed-note framing -------------------------------------------------------------------

SIG_B64 = CHECKPOINT.rsplit(" ", 1)[1].rstrip("\n")
BAD_NOTES = {
    "CRLF everywhere": CHECKPOINT.replace("\n", "\r\n"),
    "CRLF on the signature line": CHECKPOINT[:-1] + "\r\n",
    "CRLF in the text": CHECKPOINT.replace("300\n", "300\r\n"),
    "signature url-safe": CHECKPOINT.replace(SIG_B64, SIG_B64.replace("+", "-").replace("/", "_")),
    "signature unpadded": CHECKPOINT.replace(SIG_B64, SIG_B64.rstrip("=")),
    "signature trailing space": CHECKPOINT[:-1] + " \n",
    "two spaces after the dash": CHECKPOINT.replace("— ", "—  "),
    "ASCII hyphen instead of em dash": CHECKPOINT.replace("—", "-"),
    "en dash instead of em dash": CHECKPOINT.replace("—", "–"),
    "no final newline": CHECKPOINT[:-1],
    "no blank line": CHECKPOINT.replace("\n\n", "\n"),
    "blank line after the signatures": CHECKPOINT + "\n",
    "no signatures": TEXT + "\n",
    "junk line among signatures": CHECKPOINT + "junk\n",
    "NUL in the text": CHECKPOINT.replace("300", "3\x000"),
    "DEL in the text": CHECKPOINT.replace("300", "3\x7f00"),
    "tab in the text": CHECKPOINT.replace("300", "300\t"),
    "signature of 4 bytes": note_with(Signature(ORIGIN, LOG_SIG.key_id, b"")),
    "key name with '+'": CHECKPOINT.replace(f"— {ORIGIN}", "— a+b"),
    "empty key name": CHECKPOINT.replace(f"— {ORIGIN}", "— "),
    "empty string": "",
    "only a newline": "\n",
}


@pytest.mark.parametrize("data", BAD_NOTES.values(), ids=list(BAD_NOTES))
def test_malformed_note_is_a_format_error(data: str) -> None:
    with pytest.raises(FormatError):
        parse_note(data)
    with pytest.raises(FormatError):
        open_checkpoint(data.encode(), [LOG])


@pytest.mark.parametrize("junk", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_invalid_utf8_is_a_format_error(junk: bytes) -> None:
    data = CHECKPOINT.encode().replace(b"300", b"300" + junk)
    with pytest.raises(FormatError):
        open_checkpoint(data, [LOG])


# --- grease and unknown signatures ---------------------------------------------------------


def grease(seed: int) -> tuple[Signature, Signature]:
    """Sunlight's two junk lines: one as grease.invalid, one as the log with a random key ID."""
    rng = random.Random(seed)
    other_id = rng.getrandbits(32)
    while other_id == LOG.key_id:  # pragma: no cover - 2^-32
        other_id = rng.getrandbits(32)
    return (
        Signature("grease.invalid", rng.getrandbits(32), rng.randbytes(64)),
        Signature(ORIGIN, other_id, rng.randbytes(rng.choice([16, 64, 72]))),
    )


@pytest.mark.parametrize("seed", range(4))
def test_grease_is_ignored_in_any_order(seed: int) -> None:
    cosig = WITNESS_SIGNER.cosign(TEXT, 1700000000)
    for order in itertools.permutations([LOG_SIG, *grease(seed), cosig]):
        data = note_with(*order)
        cp, note = open_checkpoint(data, [LOG], origin=ORIGIN)
        assert cp.size == 300
        assert note.verified == (LOG_SIG,)
        note = open_note(data, [LOG, WITNESS])
        assert set(note.verified) == {LOG_SIG, cosig}


def test_grease_with_the_logs_key_id_under_another_name_is_ignored() -> None:
    fake = Signature("grease.invalid", LOG.key_id, random.Random(7).randbytes(64))
    for order in ((fake, LOG_SIG), (LOG_SIG, fake)):
        assert open_note(note_with(*order), [LOG]).verified == (LOG_SIG,)


def test_only_unknown_signatures_is_rejected() -> None:
    with pytest.raises(VerificationError):
        open_checkpoint(note_with(*grease(1)), [LOG])
    cosig = WITNESS_SIGNER.cosign(TEXT, 1700000000)
    with pytest.raises(VerificationError):  # the witness alone is not the log
        open_checkpoint(note_with(cosig, *grease(2)), [LOG])


def test_no_verifiers_is_rejected() -> None:
    with pytest.raises(VerificationError):
        open_note(CHECKPOINT, [])


# --- known keys: duplicates and bad signatures ---------------------------------------------


def test_duplicate_signature_from_a_known_key_is_rejected() -> None:
    with pytest.raises(VerificationError):
        open_checkpoint(note_with(LOG_SIG, LOG_SIG), [LOG])
    with pytest.raises(VerificationError):
        open_checkpoint(note_with(LOG_SIG, *grease(3), LOG_SIG), [LOG])


@pytest.mark.parametrize(
    "raw",
    [b"\x00" * 64, LOG_SIG.raw[:-1] + bytes([LOG_SIG.raw[-1] ^ 1]), b"\x01", LOG_SIG.raw + b"\x00"],
    ids=["zeros", "last bit flipped", "1 byte", "65 bytes"],
)
def test_bad_signature_from_a_known_key_is_rejected(raw: bytes) -> None:
    bad = Signature(ORIGIN, LOG.key_id, raw)
    for order in ((bad,), (bad, LOG_SIG), (LOG_SIG, bad), (LOG_SIG, *grease(4), bad)):
        with pytest.raises(VerificationError):
            open_checkpoint(note_with(*order), [LOG])


def test_bad_cosignature_from_a_known_witness_is_rejected() -> None:
    cosig = WITNESS_SIGNER.cosign(TEXT, 1700000000)
    bad = Signature(cosig.name, cosig.key_id, cosig.raw[:-1] + bytes([cosig.raw[-1] ^ 1]))
    with pytest.raises(VerificationError):
        open_note(note_with(LOG_SIG, bad), [LOG, WITNESS])
    short = Signature(cosig.name, cosig.key_id, cosig.raw[:8])
    with pytest.raises(VerificationError):
        open_note(note_with(LOG_SIG, short), [LOG, WITNESS])
    # Without the witness key, a bad cosignature is just an unknown signature.
    assert open_note(note_with(LOG_SIG, bad), [LOG]).verified == (LOG_SIG,)


def test_cosignature_timestamp_must_fit_in_63_bits() -> None:
    cosig = WITNESS_SIGNER.cosign(TEXT, 1700000000)
    huge = Signature(cosig.name, cosig.key_id, (2**63).to_bytes(8, "big") + cosig.raw[8:])
    with pytest.raises(VerificationError):
        open_note(note_with(LOG_SIG, huge), [LOG, WITNESS])
    for ts in (-1, 2**63):
        with pytest.raises(FormatError):
            cosigned_message(TEXT, ts)


# --- the number of signatures --------------------------------------------------------------


def many_grease(n: int) -> list[Signature]:
    rng = random.Random(n)
    return [
        Signature(f"grease{i}.invalid", rng.getrandbits(32), rng.randbytes(64)) for i in range(n)
    ]


@pytest.mark.parametrize("total", [16, MAX_SIGNATURES])
def test_up_to_100_signatures_are_accepted(total: int) -> None:
    assert MAX_SIGNATURES == 100
    sigs = many_grease(total - 1)
    sigs.insert(total // 2, LOG_SIG)
    assert open_note(note_with(*sigs), [LOG]).verified == (LOG_SIG,)


def test_more_than_100_signatures_are_rejected() -> None:
    data = note_with(LOG_SIG, *many_grease(MAX_SIGNATURES))
    with pytest.raises(FormatError):
        parse_note(data)
    with pytest.raises(FormatError):
        open_checkpoint(data, [LOG])


# --- verifier keys (vkey) and signer keys (skey) -------------------------------------------

LOG_VKEY: str = E2E["log_vkey"]
_, _KID, _B64 = LOG_VKEY.split("+", 2)
BAD_VKEYS = {
    "uppercase key id": f"{ORIGIN}+{_KID.upper()}+{_B64}",
    "7 hex digits": f"{ORIGIN}+{_KID[1:]}+{_B64}",
    "9 hex digits": f"{ORIGIN}+0{_KID}+{_B64}",
    "non-hex key id": f"{ORIGIN}+{_KID[:-1]}g+{_B64}",
    "key id mismatch": f"{ORIGIN}+{int(_KID, 16) ^ 1:08x}+{_B64}",
    "other name": f"example.com/other+{_KID}+{_B64}",
    "url-safe key": f"{ORIGIN}+{_KID}+{_B64.replace('+', '-').replace('/', '_')}",
    "truncated key": f"{ORIGIN}+{_KID}+{_B64[:-4]}",
    "no key": f"{ORIGIN}+{_KID}+",
    "no key id": f"{ORIGIN}+{_B64}",
    "empty name": f"+{_KID}+{_B64}",
    "name with space": f"scim log+{_KID}+{_B64}",
    "cosignature key": E2E["witness_vkey"],
    "empty": "",
}


@pytest.mark.parametrize("vkey", BAD_VKEYS.values(), ids=list(BAD_VKEYS))
def test_bad_vkey_is_rejected(vkey: str) -> None:
    with pytest.raises(FormatError):
        Ed25519Verifier.from_vkey(vkey)


def test_ed25519_vkey_is_not_a_cosignature_vkey() -> None:
    with pytest.raises(FormatError):
        CosignatureVerifier.from_vkey(LOG_VKEY)


def test_parse_vkey_splits_at_the_first_two_plus_signs() -> None:
    # Standard base64 uses '+': the key part of this vkey contains one.
    assert "+" in _B64
    name, kid, alg, key = parse_vkey(LOG_VKEY)
    assert (name, f"{kid:08x}", alg, key) == (ORIGIN, _KID, 0x01, LOG_SIGNER.public_key)


def _seed_whose_keys_need_plus(kind: type[Ed25519Signer] | type[CosignatureSigner]) -> bytes:
    """A seed whose skey and vkey both carry '+' in their base64 (found deterministically)."""
    for i in range(256):
        s = kind("example.com/k", bytes([i]) * 32)
        if "+" in s.skey().split("+", 4)[4] and "+" in s.vkey().split("+", 2)[2]:
            return bytes([i]) * 32
    raise AssertionError("no such seed")  # pragma: no cover


def test_keys_with_plus_in_base64_round_trip() -> None:
    seed = _seed_whose_keys_need_plus(Ed25519Signer)
    log = Ed25519Signer("example.com/k", seed)
    assert Ed25519Signer.from_skey(log.skey()).vkey() == log.vkey()
    assert Ed25519Verifier.from_vkey(log.vkey()).public_key == log.public_key

    seed = _seed_whose_keys_need_plus(CosignatureSigner)
    witness = CosignatureSigner("example.com/k", seed)
    assert CosignatureSigner.from_skey(witness.skey()).vkey() == witness.vkey()
    assert CosignatureVerifier.from_vkey(witness.vkey()).public_key == witness.public_key


def test_bad_skeys_are_rejected() -> None:
    good = LOG_SIGNER.skey()
    _, _, name, kid, b64 = good.split("+", 4)
    seed = b64decode_strict(b64)[1:]
    bad = [
        good.replace("PRIVATE+KEY", "PUBLIC+KEY"),
        f"PRIVATE+KEY+{name}+{int(kid, 16) ^ 1:08x}+{b64}",
        f"PRIVATE+KEY+{name}+{kid.upper()}+{b64}",
        f"PRIVATE+KEY+{name}+{kid}+{b64encode(bytes([0x04]) + seed)}",
        f"PRIVATE+KEY+{name}+{kid}+{b64encode(bytes([0x01]) + seed[:31])}",
        f"PRIVATE+KEY+{name}+{kid}+{b64[:-1]}",
        f"PRIVATE+KEY+{name}+{kid}",
    ]
    for skey in bad:
        with pytest.raises(FormatError):
            Ed25519Signer.from_skey(skey)
    with pytest.raises(FormatError):
        CosignatureSigner.from_skey(good)  # an Ed25519 note key is not a cosigner key


# --- tlog-proof bundle ---------------------------------------------------------------------

_HEAD, _, _NOTE = BUNDLE.partition("\n\n")
_HASHES = _HEAD.split("\n")[2:]
_PLUS_HASH = next(h for h in _HASHES if "+" in h or "/" in h)


def _bundle(*head_lines: str) -> str:
    return "\n".join(head_lines) + "\n\n" + _NOTE


BAD_BUNDLES = {
    "index leading zero": _bundle("c2sp.org/tlog-proof@v1", "index 05", *_HASHES),
    "index plus": _bundle("c2sp.org/tlog-proof@v1", "index +5", *_HASHES),
    "index minus": _bundle("c2sp.org/tlog-proof@v1", "index -5", *_HASHES),
    "index two spaces": _bundle("c2sp.org/tlog-proof@v1", "index  5", *_HASHES),
    "index trailing space": _bundle("c2sp.org/tlog-proof@v1", "index 5 ", *_HASHES),
    "index fullwidth digit": _bundle("c2sp.org/tlog-proof@v1", "index ５", *_HASHES),
    "index empty": _bundle("c2sp.org/tlog-proof@v1", "index ", *_HASHES),
    "index capitalised": _bundle("c2sp.org/tlog-proof@v1", "Index 5", *_HASHES),
    "index missing": _bundle("c2sp.org/tlog-proof@v1", *_HASHES),
    "header v2": _bundle("c2sp.org/tlog-proof@v2", "index 5", *_HASHES),
    "header trailing space": _bundle("c2sp.org/tlog-proof@v1 ", "index 5", *_HASHES),
    "header missing": _bundle("index 5", *_HASHES),
    "hash url-safe": BUNDLE.replace(_PLUS_HASH, _PLUS_HASH.replace("+", "-").replace("/", "_"), 1),
    "hash unpadded": BUNDLE.replace(_HASHES[0], _HASHES[0].rstrip("="), 1),
    "hash 31 bytes": BUNDLE.replace(_HASHES[0], b64encode(b64decode_strict(_HASHES[0])[:31]), 1),
    "hash 33 bytes": BUNDLE.replace(
        _HASHES[0], b64encode(b64decode_strict(_HASHES[0]) + b"\x00"), 1
    ),
    "hash trailing space": BUNDLE.replace(_HASHES[0], _HASHES[0] + " ", 1),
    "64 hashes": _bundle("c2sp.org/tlog-proof@v1", "index 5", *([_HASHES[0]] * 64)),
    "CRLF everywhere": BUNDLE.replace("\n", "\r\n"),
    "CRLF in the head": BUNDLE.replace("index 5\n", "index 5\r\n"),
    "extra after index": _bundle("c2sp.org/tlog-proof@v1", "index 5", "extra AA==", *_HASHES),
    "extra unpadded": _bundle("c2sp.org/tlog-proof@v1", "extra AA", "index 5", *_HASHES),
    "extra url-safe": _bundle("c2sp.org/tlog-proof@v1", "extra -_8=", "index 5", *_HASHES),
    "extra twice": _bundle(
        "c2sp.org/tlog-proof@v1", "extra AA==", "extra AA==", "index 5", *_HASHES
    ),
    "two blank lines": BUNDLE.replace("\n\n", "\n\n\n", 1),
    "no blank line": BUNDLE.replace("\n\n", "\n", 1),
    "no checkpoint": _HEAD + "\n\n",
    "trailing junk": BUNDLE + "junk\n",
    "checkpoint not canonical": BUNDLE.replace("\n300\n", "\n0300\n"),
}


def test_bundle_helpers() -> None:
    assert _bundle("c2sp.org/tlog-proof@v1", "index 5", *_HASHES) == BUNDLE
    assert len(_HASHES) == 9


@pytest.mark.parametrize("data", BAD_BUNDLES.values(), ids=list(BAD_BUNDLES))
def test_malformed_bundle_is_a_format_error(data: str) -> None:
    with pytest.raises(FormatError):
        TlogProof.parse(data)
    with pytest.raises(FormatError):
        TlogProof.parse(data.encode())


def test_bundle_with_no_hashes_parses() -> None:
    # Size-1 trees have empty proofs; the format allows zero hash lines.
    bundle = TlogProof.parse(_bundle("c2sp.org/tlog-proof@v1", "index 0"))
    assert bundle.inclusion_proof == ()
    with pytest.raises(VerificationError):
        bundle.verify(LOG, entry=b"scim-event-0")


def test_bundle_verify_needs_exactly_one_of_entry_or_leaf() -> None:
    bundle = TlogProof.parse(BUNDLE)
    with pytest.raises(ValueError):
        bundle.verify(LOG)
    with pytest.raises(ValueError):
        bundle.verify(LOG, entry=b"scim-event-5", leaf=b"\x00" * 32)


def test_bundle_from_another_log_key_is_rejected() -> None:
    bundle = TlogProof.parse(BUNDLE)
    other = Ed25519Signer(ORIGIN, bytes(32)).verifier()
    with pytest.raises(VerificationError):
        bundle.verify(other, entry=b"scim-event-5")
    with pytest.raises(VerificationError):  # the witness is not the log
        bundle.verify(WITNESS, entry=b"scim-event-5", extra_verifiers=[LOG])
    with pytest.raises(VerificationError):
        bundle.verify(LOG, entry=b"scim-event-5", origin="example.com/other")


# --- tile paths and entry bundles ----------------------------------------------------------

BAD_TILE_PATHS = [
    "",
    "tile/",
    "tile/0",
    "tile/0/",
    "/tile/0/000",
    "tile/0/000/",
    "tile/00/000",
    "tile/+0/000",
    "tile/-1/000",
    "tile/64/000",
    "tile/٠/000",
    "tile/0/0",
    "tile/0/00",
    "tile/0/0000",
    "tile/0/+00",
    "tile/0/ 00",
    "tile/0/１２３",
    "tile/0/x000/000",
    "tile/0/x001/23",
    "tile/0/x1234/000",
    "tile/0/X001/000",
    "tile/0/001/000",
    "tile/0/x001",
    "tile/0/001.p/0",
    "tile/0/001.p/256",
    "tile/0/001.p/044",
    "tile/0/001.p/+44",
    "tile/0/001.p/",
    "tile/0/001.p/44 ",
    "tile/0/001.p/٤٤",
    "tile/0/001.p/1000",
    "tile/0/001.q/44",
    "tile/data/000",
    "tile/entries/000.p/256",
    "tile/entries/x000/000",
    "tile/8/0/000",
]


@pytest.mark.parametrize("path", BAD_TILE_PATHS)
def test_bad_tile_path_is_rejected(path: str) -> None:
    with pytest.raises(FormatError):
        parse_tile_path(path)


@pytest.mark.parametrize(
    "tile",
    [Tile(0, 0), Tile(0, 1, 44), Tile(1, 0, 1), Tile(-1, 273, 112), Tile(63, 10**12), Tile(5, 999)],
)
def test_tile_path_round_trip(tile: Tile) -> None:
    assert parse_tile_path(tile.path()) == tile


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 999_999, 1_000_000, 1_234_067, 2**40])
def test_index_round_trip(n: int) -> None:
    assert parse_index(format_index(n)) == n


def test_format_index_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_index(-1)


def test_entry_bundle_truncations_are_rejected() -> None:
    entries = [b"scim-event-0", b"", b"x" * 300]
    data = encode_entry_bundle(entries)
    assert decode_entry_bundle(data, count=3) == entries
    for n in range(len(data)):
        with pytest.raises(FormatError):
            decode_entry_bundle(data[:n], count=3)
    with pytest.raises(FormatError):
        decode_entry_bundle(data + b"\x00", count=3)


def test_entry_bundle_limits() -> None:
    assert decode_entry_bundle(encode_entry_bundle([b"e"] * 256)) == [b"e"] * 256
    with pytest.raises(FormatError):
        decode_entry_bundle(encode_entry_bundle([b"e"] * 257))
    assert decode_entry_bundle(encode_entry_bundle([b"e" * 0xFFFF])) == [b"e" * 0xFFFF]
    with pytest.raises(FormatError):
        encode_entry_bundle([b"e" * 0x10000])
