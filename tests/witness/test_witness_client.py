"""client.net.witness_client against scripted witnesses (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import VerificationError
from client.formats.note import FormatError, open_note
from client.net.witness_client import (
    AddCheckpointRequest,
    SplitViewAlarm,
    WitnessBusy,
    WitnessClient,
    WitnessConflict,
    WitnessRejected,
    WitnessUnreachable,
    append_signatures,
)
from tests.witness.helpers import WITNESS_NAME, WITNESS_SEED, FakeLog

SIGNER = CosignatureSigner(WITNESS_NAME, WITNESS_SEED)


def scripted(
    handler: Callable[[AddCheckpointRequest], httpx.Response],
) -> tuple[WitnessClient, list[AddCheckpointRequest]]:
    seen: list[AddCheckpointRequest] = []

    def transport(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/add-checkpoint"
        req = AddCheckpointRequest.parse(request.content)
        seen.append(req)
        return handler(req)

    http = httpx.Client(transport=httpx.MockTransport(transport))
    return WitnessClient("http://witness.test/", SIGNER.vkey(), http=http), seen


def cosign(req: AddCheckpointRequest, ts: int = 1_700_000_000) -> httpx.Response:
    text = req.checkpoint_note.split("\n\n")[0] + "\n"
    return httpx.Response(200, text=SIGNER.cosign(text, ts).line())


def test_success_returns_verified_cosignature(log300: FakeLog, e2e: dict[str, Any]) -> None:
    client, seen = scripted(cosign)
    sigs = client.add_checkpoint(log300.checkpoint(300), 100, log300.consistency_proof(100, 300))
    assert seen[0].format() == e2e["add_checkpoint_body_old_100"].encode()
    assert sigs[0].line() == e2e["cosignature_line"]
    witnessed = append_signatures(log300.checkpoint(300), sigs)
    open_note(witnessed, [SIGNER.verifier(), log300.signer.verifier()])
    assert witnessed == e2e["checkpoint_300"] + e2e["cosignature_line"]
    assert client.known_size(log300.origin) == 300


def test_conflict_is_retried_once_with_a_rebuilt_proof(log300: FakeLog) -> None:
    def handler(req: AddCheckpointRequest) -> httpx.Response:
        if req.old_size not in (100, 300):
            return httpx.Response(409, text="100\n", headers={"Content-Type": "text/x.tlog.size"})
        return cosign(req)

    client, seen = scripted(handler)
    calls: list[tuple[int, int]] = []

    def proof(old: int, new: int) -> list[bytes]:
        calls.append((old, new))
        return log300.consistency_proof(old, new)

    sigs = client.submit(log300.checkpoint(300), proof)
    assert len(sigs) == 1
    assert [r.old_size for r in seen] == [0, 100]
    assert seen[1].consistency_proof == tuple(log300.consistency_proof(100, 300))
    assert calls == [(100, 300)]
    # Next time the client starts from what it learned.
    client.submit(log300.checkpoint(300), proof)
    assert seen[-1].old_size == 300 and seen[-1].consistency_proof == ()


def test_second_conflict_propagates(log300: FakeLog) -> None:
    sizes = iter(["100\n", "200\n"])

    def handler(req: AddCheckpointRequest) -> httpx.Response:
        return httpx.Response(
            409, text=next(sizes), headers={"Content-Type": "text/x.tlog.size; charset=x"}
        )

    client, seen = scripted(handler)
    with pytest.raises(WitnessConflict) as info:
        client.submit(log300.checkpoint(300), log300.consistency_proof)
    assert info.value.size == 200 and len(seen) == 2


def test_conflict_beyond_our_checkpoint_is_not_retried(log300: FakeLog) -> None:
    client, seen = scripted(
        lambda req: httpx.Response(409, text="400\n", headers={"Content-Type": "text/x.tlog.size"})
    )
    with pytest.raises(WitnessConflict):
        client.submit(log300.checkpoint(300), log300.consistency_proof)
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("status", "headers", "body", "exc"),
    [
        (409, {}, "", SplitViewAlarm),  # transparency-dev/witness: bare 409
        (409, {"Content-Type": "text/plain"}, "100\n", SplitViewAlarm),
        (409, {"Content-Type": "text/x.tlog.size"}, "0100\n", SplitViewAlarm),
        (409, {"Content-Type": "text/x.tlog.size"}, "100", SplitViewAlarm),
        (422, {}, "bad proof\n", SplitViewAlarm),
        (429, {"Retry-After": "7"}, "", WitnessBusy),
        (503, {}, "", WitnessBusy),
        (400, {}, "bad\n", WitnessRejected),
        (403, {}, "", WitnessRejected),
        (404, {}, "", WitnessRejected),
        (500, {}, "", WitnessRejected),
    ],
)
def test_status_mapping(
    log300: FakeLog, status: int, headers: dict[str, str], body: str, exc: type[Exception]
) -> None:
    client, _ = scripted(lambda req: httpx.Response(status, text=body, headers=headers))
    with pytest.raises(exc) as info:
        client.add_checkpoint(log300.checkpoint(300), 100, log300.consistency_proof(100, 300))
    if isinstance(info.value, WitnessBusy):
        assert info.value.retry_after == (7.0 if status == 429 else None)
    if isinstance(info.value, WitnessRejected | SplitViewAlarm):
        assert info.value.status == status


def test_bad_200_responses(log300: FakeLog) -> None:
    other = CosignatureSigner("witness.example.com/other", b"\x05" * 32)
    text = log300.checkpoint_text(300)
    cases = {
        "wrong checkpoint": SIGNER.cosign(log300.checkpoint_text(299), 5).line(),
        "other witness only": other.cosign(text, 5).line(),
        "timestamp zero": SIGNER.cosign(text, 0).line(),
    }
    for name, body in cases.items():
        client, _ = scripted(lambda req, body=body: httpx.Response(200, text=body))
        with pytest.raises(VerificationError):
            client.add_checkpoint(log300.checkpoint(300), 0, [])
        assert name
    line = SIGNER.cosign(text, 5).line()
    for body in ("", "garbage\n", line.rstrip("\n"), "\n" + line, line + "\n" + line):
        client, _ = scripted(lambda req, body=body: httpx.Response(200, text=body))
        with pytest.raises(FormatError):
            client.add_checkpoint(log300.checkpoint(300), 0, [])
    # Lines from other keys are ignored when ours is there.
    both = other.cosign(text, 5).line() + SIGNER.cosign(text, 6).line()
    client, _ = scripted(lambda req: httpx.Response(200, text=both))
    sigs = client.add_checkpoint(log300.checkpoint(300), 0, [])
    assert [s.name for s in sigs] == [WITNESS_NAME]


def test_unreachable() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(boom))
    client = WitnessClient("http://witness.test", SIGNER.verifier(), http=http)
    log = FakeLog([b"a"])
    with pytest.raises(WitnessUnreachable):
        client.add_checkpoint(log.checkpoint(1), 0, [])


def test_request_format_is_strict() -> None:
    with pytest.raises(ValueError):
        AddCheckpointRequest(0, (bytes(32),), "x").format()
    with pytest.raises(ValueError):
        AddCheckpointRequest(5, (bytes(31),), "x").format()
    with pytest.raises(ValueError):
        AddCheckpointRequest(5, (bytes(32),) * 64, "x").format()
