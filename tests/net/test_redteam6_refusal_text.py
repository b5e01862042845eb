"""Red team 6: a hostile server's refusal text reaches the user as one bounded, inert line.

The ``{"error": ...}`` of a non-2xx answer was taken whole: a log could answer
``{"error": "\\x1b[2J...\\n..." + 500 KB}`` and ``tlog-client audit`` (every client on
``client.net.core``) printed it raw: terminal escape sequences, line breaks, half a megabyte.
Now the reason is cut to a bound and its control and format characters are shown escaped.
"""

from __future__ import annotations

import httpx
import pytest

from client.formats.note import Ed25519Signer
from client.net.core import HTTPCore, StatusError
from client.tools.cli import main

HOSTILE = "\x1b[2J\x1b]0;owned\x07 first\nsecond\r\u202eevil\u202c " + "A" * 500_000
VKEY = Ed25519Signer("example.com/log", bytes(range(32))).verifier().vkey()


def _serving(status: int, doc: object) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=doc)

    return httpx.Client(transport=httpx.MockTransport(handler))


def _inert(text: str) -> None:
    assert all(c.isprintable() for c in text), repr(text[:200])
    assert len(text) <= 1100


@pytest.mark.parametrize("doc", [{"error": HOSTILE}, HOSTILE, [HOSTILE]])
def test_the_reason_is_bounded_and_inert(doc: object) -> None:
    with _serving(400, doc) as http:
        with pytest.raises(StatusError) as info:
            HTTPCore("http://log.test", http).call("GET", "x", limit=1 << 20)
    _inert(info.value.reason)
    _inert(str(info.value))
    assert "first" in info.value.reason or "[" in info.value.reason


def test_a_plain_reason_is_unchanged() -> None:
    with _serving(400, {"error": "tree_size is too large (größer)"}) as http:
        with pytest.raises(StatusError) as info:
            HTTPCore("http://log.test", http).call("GET", "x", limit=1 << 20)
    assert info.value.reason == "tree_size is too large (größer)"


def test_audit_prints_one_inert_line(capsys: pytest.CaptureFixture[str]) -> None:
    with _serving(503, {"error": HOSTILE}) as http:
        assert main(["audit", "http://log.test", "--vkey", VKEY, "-q"], http=http) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err, repr(err[:300])
    assert len(err) < 1200


@pytest.mark.parametrize("status", [400, 409, 422])
def test_a_witness_refusal_is_one_inert_line(status: int) -> None:
    """The log's pusher logs and shows what a witness answered: a hostile witness's text
    must not forge log lines (a line break) or reach a terminal as escape sequences."""
    from client.formats.checkpoint import Checkpoint
    from client.formats.cosignature import CosignatureSigner
    from client.formats.merkle import EMPTY_ROOT
    from client.formats.note import sign_note
    from client.net.witness_client import WitnessClient, WitnessError

    signer = Ed25519Signer("example.com/log", bytes(range(32)))
    note = sign_note(Checkpoint("example.com/log", 0, EMPTY_ROOT).text(), [signer])
    text = "refused\n2026-12-01T00:00:00.000Z CRITICAL tlog: forged\x1b[2J\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=text)

    w = CosignatureSigner("w.example/w", bytes(32)).verifier()
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = WitnessClient("http://witness.test", w, http=http)
        with pytest.raises(WitnessError) as info:
            client.add_checkpoint(note, 0, ())
    _inert(str(info.value))
    assert "forged" in str(info.value)
