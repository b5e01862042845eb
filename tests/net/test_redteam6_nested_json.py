"""Red team 6: a hostile server's JSON nested deeper than Python's recursion limit.

``json.loads`` raises ``RecursionError`` (no ``ValueError``) on ``[[[[...]]]]``: within the
answer's size bound, a log, a witness's log or a relay's log could crash its client with a
traceback instead of a refusal: the JSON of a 200 (:meth:`Answer.json`, the verifier's
proofs, the witness's consistency proofs) and the ``{"error": ...}`` of any other status
(:meth:`Answer.reason`, read for every refusal). Each is now the server's fault, one line.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from client.formats.note import Ed25519Signer, FormatError
from client.net.core import HTTPCore, StatusError
from client.net.logclient import LogClient
from client.witness.core import WitnessedLog
from client.witness.monitor import LogClient as WitnessLogClient
from client.witness.monitor import ProofRefused

NESTED = b"[" * 100_000 + b"]" * 100_000
SIGNER = Ed25519Signer("example.com/log", bytes(range(32)))


def _serving(status: int) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=NESTED, headers={"Content-Type": "application/json"})

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://log.test")


def test_a_nested_200_is_a_format_error() -> None:
    with _serving(200) as http:
        answer = HTTPCore("http://log.test", http).send("GET", "x", limit=1 << 20)
        with pytest.raises(FormatError, match="not JSON"):
            answer.json()


@pytest.mark.parametrize("status", [400, 500, 503])
def test_a_nested_refusal_is_a_status_error(status: int) -> None:
    with _serving(status) as http:
        with pytest.raises(StatusError) as info:
            HTTPCore("http://log.test", http).call("GET", "x", limit=1 << 20)
    assert info.value.status == status
    assert len(str(info.value)) < 300


def test_the_verifier_refuses_a_nested_proof() -> None:
    with _serving(200) as http:
        client = LogClient("http://log.test", SIGNER.verifier(), http=http)
        with pytest.raises(FormatError, match="not JSON"):
            client.consistency_proof(1, 2)


def test_the_witness_refuses_a_nested_proof(tmp_path: Path) -> None:
    log = WitnessedLog("example.com/log", (SIGNER.verifier(),), "http://log.test")
    with _serving(200) as http:
        with pytest.raises(ProofRefused, match="not JSON"):
            WitnessLogClient(log, http).consistency(1, 2)
