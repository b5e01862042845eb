"""The log side of witnessing against scripted witnesses (httpx mock transport)."""

from __future__ import annotations

import httpx
import pytest

from client.formats.proof_bundle import TlogProof
from tlog.witnessing import WitnessPusher

from .conftest import ORIGIN


def test_cosigned_checkpoint_needs_quorum(scripted) -> None:  # type: ignore[no-untyped-def]
    log_, ws, policy, pusher = scripted
    log_.integrate([b"e%d" % i for i in range(10)])
    assert pusher.cosigned is None
    assert pusher.checkpoint() == log_.latest.note  # nothing cosigned yet: the log's own
    ws["b"].script = [httpx.Response(503, headers={"Retry-After": "1"})]
    ws["c"].script = [httpx.Response(503)]
    pusher.push_once()
    assert pusher.cosigned is None  # only a cosigned: no quorum
    assert pusher.state["b"].last_error and "busy" in pusher.state["b"].last_error
    for st in pusher.state.values():
        st.next_attempt = 0
    pusher.push_once()
    assert pusher.cosigned is not None and pusher.cosigned.size == 10
    policy.verify_checkpoint(pusher.checkpoint(), ORIGIN)
    # Receipts now carry the cosignatures.
    note = pusher.note_for(log_.latest)
    bundle = TlogProof(3, tuple(log_.inclusion_proof(3, 10)), note)
    _, n = bundle.verify(policy.log_verifiers(ORIGIN)[0], entry=b"e3")
    policy.check(n)


def test_conflict_rebuilds_proof_and_restart_relearns_size(scripted) -> None:  # type: ignore[no-untyped-def]
    log_, ws, policy, pusher = scripted
    log_.integrate([b"x%d" % i for i in range(5)])
    pusher.push_once()
    log_.integrate([b"y%d" % i for i in range(7)])
    # A new pusher (a log restart) does not know the witnesses' sizes: 409, then a proof
    # from the size the witness names.
    fresh = WitnessPusher(log_, policy, interval=0, http=pusher._http)
    fresh.push_once()
    for w in ws.values():
        assert w.size == 12
        assert [r.old_size for r in w.requests[-2:]] == [0, 5]
        assert len(w.requests[-1].consistency_proof) > 0
    assert fresh.cosigned is not None and fresh.cosigned.size == 12


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(422),
        httpx.Response(409),
        httpx.Response(409, text="oops", headers={"Content-Type": "text/plain"}),
    ],
)
def test_split_view_alarms(scripted, answer: httpx.Response, caplog) -> None:  # type: ignore[no-untyped-def]
    log_, ws, _, pusher = scripted
    log_.integrate([b"z"])
    ws["a"].script = [answer]
    with caplog.at_level("CRITICAL"):
        pusher.push_once()
    assert pusher.state["a"].alarms, "422 / bare 409 must raise a split-view alarm"
    assert "SPLIT-VIEW" in caplog.text
    assert pusher.status()["witnesses"][0]["alarms"][0]["status"] == answer.status_code


def test_unreachable_witness_backs_off(scripted) -> None:  # type: ignore[no-untyped-def]
    log_, _, _, pusher = scripted
    log_.integrate([b"q"])

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    pusher.clients["a"]._core.http = httpx.Client(transport=httpx.MockTransport(boom))
    pusher.push_once()
    st = pusher.state["a"]
    assert st.backoff == 1 and st.last_error
    st.next_attempt = 0
    pusher.push_once()
    assert st.backoff == 2
    assert pusher.cosigned is not None  # b and c are enough


def test_rounds_give_every_witness_the_same_checkpoint(scripted) -> None:  # type: ignore[no-untyped-def]
    """While the log grows and one witness is down, the other two still make a quorum on
    the newest checkpoint of every round (regression: per-witness timers drifted apart and
    no single checkpoint collected two cosignatures)."""
    log_, _, _, pusher = scripted

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    pusher.clients["b"]._core.http = httpx.Client(transport=httpx.MockTransport(down))
    for round_ in range(5):
        log_.integrate([b"r%d-%d" % (round_, i) for i in range(3)])
        pusher.push_once()
        assert pusher.cosigned is not None
        assert pusher.cosigned.size == log_.latest.size
        assert pusher.state["a"].cosigned_size == pusher.state["c"].cosigned_size
