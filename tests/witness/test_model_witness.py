"""The witness against a model, in random sequences of pushes, forks and restarts.

Hypothesis drives a real :class:`Witness` on a temp state database with an honest log (a
growing tree signed by the log's key) and a fork of it under the same key (the same leaves up
to a fork point, other leaves after it). Rules: push the honest log's next checkpoint (right
proof, a wrong proof, a stale or a too-large ``old``), push a fork checkpoint, restart the
witness on its state, gossip a fork checkpoint to a second witness sharing nothing. After every
step it checks what must always hold:

* the witness never cosigns two checkpoints of one origin that are not consistent: every
  pair of its cosignatures (each verified under its key) lies on one tree, the honest log's
  or the fork's, checked with that tree's consistency proof;
* its stored size never goes back, across restarts; its stored note carries its cosignature;
* every refusal is the documented status: 409 with the size it holds, 400 for ``old`` larger
  than the checkpoint, 422 for a failed proof or a conflict, and 422 for everything once it
  holds split-view evidence;
* a fork it was shown at the size it cosigned is recorded as evidence, and only then.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import verify_consistency
from client.formats.note import b64encode, open_note, parse_note
from client.net.witness_client import origin_hash
from client.witness.core import AddCheckpointError, Witness
from client.witness.monitor import Monitor, Peer
from tests.witness.helpers import FakeLog, events, make_witness

N = 24  # leaves of each tree
LOG_URL = "http://log.test"


def _body(log: FakeLog, old: int, size: int, proof: list[bytes]) -> bytes:
    """An add-checkpoint body, also one the client would refuse to send (old 0 with a proof)."""
    lines = [f"old {old}", *(b64encode(h) for h in proof)]
    return ("\n".join(lines) + "\n\n" + log.checkpoint(size)).encode()


class WitnessModel(RuleBasedStateMachine):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.stack = contextlib.ExitStack()
        self.size = 0  # what the witness holds: size, root (None: nothing yet)
        self.root_hash: bytes | None = None
        self.frozen = False  # split-view evidence recorded
        self.cosigned: set[tuple[int, bytes]] = set()  # every (size, root) it cosigned
        self.max_size = 0

    @initialize(fork_at=st.integers(0, N - 1))
    def open(self, fork_at: int) -> None:
        self.honest = FakeLog(events(N))
        self.fork = FakeLog(events(N)[:fork_at] + events(N, "fork-")[fork_at:])
        self.fork_at = fork_at
        self.db = Path(tempfile.mkdtemp(dir=self.root)) / "witness.db"
        self.log_entry = self.honest.witnessed_log(LOG_URL)
        self.w = self._witness()

    def _twin(self) -> Witness:
        """A second witness process on the same state (the store's compare-and-swap is what
        serialises them): what one cosigned, the other must build on."""
        if self.twin is None:
            self.twin = make_witness(self.db, [self.log_entry])
            self.stack.callback(self.twin.store.close)
        return self.twin

    def _witness(self) -> Witness:
        self.twin: Witness | None = None
        """Our witness on its state, with its monitor attached (as ``tlog-witness serve``
        runs them): a pushed proof that fails is settled with the honest log's own proof."""
        w = make_witness(self.db, [self.log_entry])
        self.stack.callback(w.store.close)
        http = httpx.Client(transport=httpx.MockTransport(self._serve_log), base_url=LOG_URL)
        self.stack.callback(http.close)
        self.monitor = Monitor(w, http=http)
        return w

    def _serve_log(self, request: httpx.Request) -> httpx.Response:
        """The honest log's HTTP API (all of its leaves published)."""
        log = self.honest
        if request.url.path == "/checkpoint":
            return httpx.Response(200, text=log.checkpoint(N))
        if request.url.path == "/v1/proof/consistency":
            old = int(request.url.params["old_size"])
            new = int(request.url.params["tree_size"])
            if not 0 < old <= new <= N:
                return httpx.Response(400, text="sizes out of range\n")
            doc = {
                "old_size": old,
                "tree_size": new,
                "consistency_proof": [b64encode(h) for h in log.consistency_proof(old, new)],
                "checkpoint": log.checkpoint(new),
            }
            return httpx.Response(200, json=doc)
        return httpx.Response(404, text="not found\n")

    def _split(self, size: int, root: bytes) -> bool:
        """Whether the honest log's own proof shows that ``(size, root)`` and what our
        witness holds cannot both be views of it (what the monitor records as evidence)."""
        if self.root_hash is None:
            return False
        if size == self.size:
            return root != self.root_hash
        if size == 0 or self.size == 0:
            return False
        honest = self.honest.root
        return not (honest(size) == root and honest(self.size) == self.root_hash)

    def teardown(self) -> None:
        self.stack.close()

    # -- helpers -----------------------------------------------------------------------

    def _push(self, body: bytes, w: Witness | None = None) -> tuple[int, str]:
        try:
            return 200, (w or self.w).add_checkpoint(body)
        except AddCheckpointError as exc:
            return exc.status, exc.body()

    def _tree(self, log: FakeLog, size: int) -> bytes:
        return log.root(size)

    def _accepted(self, log: FakeLog, size: int, answer: str) -> None:
        text = log.checkpoint_text(size)
        open_note(parse_note(text + "\n" + answer), [self.w.verifier])  # our cosignature
        self.cosigned.add((size, log.root(size)))
        self.size, self.root_hash = size, log.root(size)

    def _expect(self, log: FakeLog, size: int, old: int, proof_ok: bool) -> tuple[int, str]:
        """What the documented checks answer a push of ``log``'s ``size`` with ``old``."""
        root = log.root(size)
        if old > size:
            return 400, ""
        if self.frozen:
            return 422, ""
        if self.root_hash is not None and size == self.size and root != self.root_hash:
            return 422, "evidence"
        if old != self.size:
            return 409, f"{self.size}\n"
        if not proof_ok:
            return 422, ""
        return 200, ""

    # -- rules -------------------------------------------------------------------------

    @rule(
        which=st.sampled_from(["honest", "fork"]),
        grow=st.integers(0, 6),
        proof=st.sampled_from(["right", "wrong"]),
        old=st.sampled_from(["ours", "stale", "zero", "larger"]),
        twin=st.booleans(),
    )
    def push(self, which: str, grow: int, proof: str, old: str, twin: bool) -> None:
        log = self.honest if which == "honest" else self.fork
        size = min(N, self.size + grow)
        old_size = {
            "ours": self.size,
            "stale": max(0, self.size - 1 - grow),
            "zero": 0,
            "larger": size + 1,
        }[old]
        good = [] if old_size > size else log.consistency_proof(old_size, size)
        bad = [*good, bytes(32)] if proof == "wrong" else good
        # The proof is right when it proves what the witness holds grows into this tree.
        if old_size != self.size or old_size > size:
            proof_ok = True  # not reached
        elif old_size == 0:
            proof_ok = not bad
        else:
            assert self.root_hash is not None
            try:
                verify_consistency(old_size, size, self.root_hash, log.root(size), bad)
                proof_ok = True
            except Exception:
                proof_ok = False
        want, extra = self._expect(log, size, old_size, proof_ok)
        if want == 422 and not extra and old_size == self.size > 0 and not (twin or self.frozen):
            # the proof failed: the monitor asks the log, evidence when the log's fails too
            # (the twin runs without a monitor: its 422 records nothing)
            extra = "evidence" if self._split(size, log.root(size)) else ""
        status, body = self._push(_body(log, old_size, size, bad), self._twin() if twin else None)
        assert status == want, (which, size, old_size, proof, status, body, want)
        if want == 409:
            assert body == extra
        if extra == "evidence":
            self.frozen = True
        if status == 200:
            self._accepted(log, size, body)

    @rule()
    def restart(self) -> None:
        self.stack.close()
        self.stack = contextlib.ExitStack()
        self.w = self._witness()

    @rule(size=st.integers(0, N), which=st.sampled_from(["honest", "fork"]))
    def gossip_from_a_peer(self, size: int, which: str) -> None:
        """A second witness, sharing nothing with ours, cosigned ``which`` log at ``size``;
        ours compares that checkpoint with its own in a gossip round (asking the log for a
        proof when the sizes differ)."""
        log = self.honest if which == "honest" else self.fork
        peer_w = make_witness(
            Path(tempfile.mkdtemp(dir=self.root)) / "peer.db",
            [self.honest.witnessed_log()],
            seed=bytes(range(64, 96)),
            name="peer.example.com/w2",
        )
        try:
            assert self._push(log.body(0, size), peer_w)[0] == 200
            note = peer_w.checkpoint_by_hash(origin_hash(log.origin))
            assert note is not None
        finally:
            peer_w.store.close()
        peer = Peer("w2", peer_w.verifier, "http://peer.invalid")
        found = self.monitor.compare_peer_checkpoint(self.log_entry, peer, note)
        split = self._split(size, log.root(size))
        if split:
            assert found >= 1 or self.frozen, (size, which, found)
            self.frozen = True
        else:
            assert found == 0, (size, which, found)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def never_two_inconsistent_cosignatures(self) -> None:
        pairs = sorted(self.cosigned)
        for a_size, a_root in pairs:
            for b_size, b_root in pairs:
                if a_size > b_size or (a_size, a_root) == (b_size, b_root):
                    continue
                assert a_size != b_size, "two roots cosigned at one size"
                on = [
                    lg
                    for lg in (self.honest, self.fork)
                    if lg.root(a_size) == a_root and lg.root(b_size) == b_root
                ]
                assert on, ((a_size, a_root), (b_size, b_root))
                if a_size > 0:
                    verify_consistency(
                        a_size, b_size, a_root, b_root, on[0].consistency_proof(a_size, b_size)
                    )

    @invariant()
    def stored_state_is_the_models(self) -> None:
        if not hasattr(self, "w"):
            return
        stored = self.w.latest(self.honest.origin)
        if self.root_hash is None:
            assert stored is None
        else:
            assert stored is not None
            assert (stored.size, stored.root_hash) == (self.size, self.root_hash)
            open_note(stored.note, [self.w.verifier])
        assert self.size >= self.max_size  # never back
        self.max_size = self.size
        assert bool(self.w.evidence()) == self.frozen
        assert self.w.store.has_evidence(self.honest.origin) == self.frozen


def test_the_witness_never_cosigns_a_split_view(tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: WitnessModel(tmp_path),
        settings=settings(
            max_examples=60,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # No shrinking, as the other model tests: a failure prints its steps.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )


def test_a_checkpoint_of_the_fork_is_told_from_the_honest_one() -> None:
    """The model's two trees differ after the fork point and agree before it."""
    honest = FakeLog(events(N))
    fork = FakeLog(events(N)[:5] + events(N, "fork-")[5:])
    assert honest.root(5) == fork.root(5) and honest.root(6) != fork.root(6)
    assert Checkpoint.parse(fork.checkpoint_text(6)).size == 6


pytestmark = pytest.mark.slow
