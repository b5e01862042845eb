"""The transparency-dev/merkle JSON corpus, one test per file.

Every file under ``vectors/merkle/testdata/{inclusion,consistency}/**`` is a case: the file
name says which single change it makes to a valid proof, ``wantErr`` says whether the
verifier must refuse it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from client.formats.merkle import VerificationError, verify_consistency, verify_inclusion
from tests.conftest import VECTORS

TESTDATA = VECTORS / "merkle" / "testdata"
INCLUSION_FILES = sorted((TESTDATA / "inclusion").rglob("*.json"))
CONSISTENCY_FILES = sorted((TESTDATA / "consistency").rglob("*.json"))


def _ids(files: list[Path]) -> list[str]:
    return [str(f.relative_to(TESTDATA)) for f in files]


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _b64(s: str | None) -> bytes:
    # The corpus comes from Go's encoding/json: standard base64, padded.
    return base64.b64decode(s or "", validate=True)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in case["proof"] or []]  # Go writes a nil slice as null


def test_corpus_is_complete() -> None:
    # Guards against a moved vectors directory silently parametrizing zero cases.
    assert len(INCLUSION_FILES) >= 90
    assert len(CONSISTENCY_FILES) >= 90
    everything = INCLUSION_FILES + CONSISTENCY_FILES
    assert any(not _load(f)["wantErr"] for f in everything)


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_ids(INCLUSION_FILES))
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)
    args = (
        case["leafIdx"],
        case["treeSize"],
        _b64(case["leafHash"]),
        _proof(case),
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_ids(CONSISTENCY_FILES))
def test_consistency_vector(path: Path) -> None:
    case = _load(path)
    args = (
        case["size1"],
        case["size2"],
        _b64(case["root1"]),
        _b64(case["root2"]),
        _proof(case),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
