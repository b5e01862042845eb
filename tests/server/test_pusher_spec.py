"""The log side against current witness behaviour (issue 14 part 3): unknown-log answers,
and cosignature lines of keys or types the log does not know."""

from __future__ import annotations

import struct

import httpx
import pytest

from client.formats.cosignature import MLDSACosignatureSigner
from client.formats.note import Signature, parse_note


@pytest.mark.parametrize(("status", "words"), [(404, "does not witness"), (403, "refuses")])
def test_unknown_log_answers_are_not_alarms(scripted, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    log_, ws, _policy, pusher = scripted
    log_.integrate([b"e%d" % i for i in range(5)])
    ws["a"].script = [httpx.Response(status, text="unknown log\n")]
    pusher.push_once()
    st = pusher.state["a"]
    assert st.last_error is not None and words in st.last_error and "log-entry" in st.last_error
    assert not st.alarms and st.backoff == pusher.max_backoff
    # The other two still make the quorum; the log keeps signing.
    assert pusher.cosigned is not None and pusher.cosigned.size == 5
    log_.integrate([b"more"])
    assert log_.latest.size == 6


def test_unknown_cosignature_lines_are_ignored(scripted) -> None:  # type: ignore[no-untyped-def]
    log_, ws, policy, pusher = scripted
    log_.integrate([b"e%d" % i for i in range(3)])
    text = parse_note(log_.latest.note).text
    for w in ws.values():
        own = w.signer.cosign(text, 1700000000).line()
        other_key = MLDSACosignatureSigner.generate(w.signer.name).cosign(text, 1700000000)
        odd_type = Signature(w.signer.name, 0x12345678, struct.pack(">Q", 1) + b"\x99" * 40)
        w.script = [httpx.Response(200, text=other_key.line() + own + odd_type.line())]
    pusher.push_once()
    assert pusher.cosigned is not None and pusher.cosigned.size == 3
    note = parse_note(pusher.checkpoint())
    kept = {(s.name, s.key_id) for s in note.signatures[1:]}
    # Only lines of the keys the policy names (a quorum of them), nothing else.
    assert len(kept) >= 2
    assert kept <= {(w.signer.name, w.signer.key_id) for w in ws.values()}
    assert all(not st.last_error for st in pusher.state.values())
    policy.verify_checkpoint(pusher.checkpoint(), log_.origin)


def test_a_round_sends_at_most_two_requests_per_witness(scripted) -> None:  # type: ignore[no-untyped-def]
    """What `tlog log-entry` declares as qpd: 2 requests per witness per round, one round
    per --witness-interval."""
    log_, ws, _policy, pusher = scripted
    for i in range(4):
        log_.integrate([b"round-%d" % i])
        pusher.clients["a"]._known_size.clear()  # as after a restart: old 0, 409, retry
        before = {n: len(w.requests) for n, w in ws.items()}
        pusher.push_once()
        sent = {n: len(w.requests) - before[n] for n, w in ws.items()}
        assert sent["a"] == (1 if i == 0 else 2)  # the first round's old 0 is right
        assert sent["b"] == sent["c"] == 1
        for st in pusher.state.values():
            assert st.last_error is None
            st.next_attempt = 0
