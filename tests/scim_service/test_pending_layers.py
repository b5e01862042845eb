"""The group commit's pending writes, one mapping per handed group (``PendingWrites``), read
through by ``Overlay`` as the single flat map they replace (batch14 round) answered: every
key, every prefix scan, after any order of groups handed and made durable."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.scim_service.conftest import open_harness
from tlog.scim.store import Overlay, PendingWrites

KEYS = [bytes([0x70, i]) for i in range(6)]
VALUES = st.one_of(st.none(), st.binary(min_size=1, max_size=3))
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("hand"), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)),
        st.tuples(st.just("durable"), st.integers(min_value=0, max_value=8)),
    ),
    max_size=12,
)


class FlatPending:
    """The map the service kept before: a key's newest pending value and the group that
    wrote it, pruned key by key once that group is durable."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes | None] = {}
        self.owner: dict[bytes, int] = {}
        self.handed: list[tuple[int, list[bytes]]] = []

    def add(self, seq: int, written: dict[bytes, bytes | None]) -> None:
        for k, v in written.items():
            self.values[k] = v
            self.owner[k] = seq
        self.handed.append((seq, list(written)))

    def durable(self, seq: int) -> None:
        while self.handed and self.handed[0][0] <= seq:
            group, keys = self.handed.pop(0)
            for k in keys:
                if self.owner.get(k) == group:
                    del self.owner[k]
                    del self.values[k]


def test_layers_read_as_the_flat_pending_map(tmp_path: Path) -> None:
    with open_harness(tmp_path) as h:
        storage = h.service.storage
        runs = itertools.count()

        @settings(max_examples=150, deadline=None)
        @given(base=st.dictionaries(st.sampled_from(KEYS), st.binary(max_size=2)), steps=STEPS)
        def check(base: dict[bytes, bytes], steps: list[tuple[str, object]]) -> None:
            # each example in its own key space of the one store
            run = next(runs).to_bytes(4, "big")
            storage.put_aux([(run + k, v) for k, v in base.items()])
            layered, flat = PendingWrites(), FlatPending()
            groups: list[dict[bytes, bytes | None]] = []
            durable = 0
            for kind, arg in steps:
                if kind == "hand":
                    assert isinstance(arg, dict)
                    written = {run + k: v for k, v in arg.items()}
                    groups.append(written)
                    layered.add(len(groups), written)
                    flat.add(len(groups), written)
                else:
                    assert isinstance(arg, int)
                    upto = min(arg, len(groups))
                    if upto > durable:  # in order, as the sequencer commits them
                        for g in groups[durable:upto]:
                            storage.put_aux(list(g.items()))
                        durable = upto
                    layered.durable(upto)
                    flat.durable(upto)
                with storage.read() as rv:
                    new = Overlay(rv, layers=layered.layers())
                    old = Overlay(rv, flat.values)
                    for k in KEYS:
                        assert new.get(run + k) == old.get(run + k)
                        assert new.staged(run + k) == old.staged(run + k)
                    assert new.scan(run) == old.scan(run)

        check()
