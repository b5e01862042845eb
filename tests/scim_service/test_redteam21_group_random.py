"""Red team 21: the random pool a group's one-event stagings share (one per group and
tenant, ScimService._pipeline) never hands the same bytes to two events: every draw of two
groups in a row, with two tenants in each, a staging that failed after drawing (rolled
back) in the middle and a Conflict, is collected from the real pool (the OS's randomness,
not a stand-in) and compared, as are the commitment nonces the stagings answered and the
leaves' commitments. Held: a guard of the promise that no nonce, IV or key is reused."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tlog.scim.keys import RandomPool

from .conftest import BASE_TS, T1, T2, open_harness, user_event
from .helpers import create_event, stage_group, user_mods

LATER = 30  # draws into a group (past its first events) after which a staging fails


def test_redteam21_no_random_bytes_twice_across_events_groups_and_tenants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws: list[bytes] = []
    fail_at = [0]
    real = RandomPool.__call__

    def kept(self: RandomPool, n: int) -> bytes:
        got = real(self, n)
        draws.append(got)
        if len(draws) == fail_at[0]:
            raise RuntimeError("failed after its draw")
        return got

    monkeypatch.setattr(RandomPool, "__call__", kept)
    with open_harness(tmp_path) as h:
        svc = h.service
        ticks = itertools.count()
        svc.clock = lambda: BASE_TS + next(ticks) // 3  # the log time moving in the group
        accepted = []
        for g in range(2):
            first = create_event(f"u-{g}-0", f"r{g}-0", user_mods(f"a{g}@example.org"))
            clash = dict(first, mods=user_mods(f"other{g}@example.org"))  # its eid, else
            jobs: list[tuple[str, dict[str, Any]]] = [(T1, first), (T1, clash)]
            for i in range(1, 12):
                tenant = T1 if i % 3 else T2
                jobs.append((tenant, user_event(f"u-{g}-{i}", tenant=tenant, op="create")))
            fail_at[0] = len(draws) + LATER
            out, _ = stage_group(svc, jobs)
            assert any(isinstance(x, str) and "failed after its draw" in x for x in out), out
            assert any(isinstance(x, str) and "Conflict" in x for x in out), out
            accepted += [a for x in out if isinstance(x, list) for a in x]
    assert len(accepted) >= 20
    nonces = [a.nonce for a in accepted]
    assert None not in nonces and len(set(nonces)) == len(nonces)
    leaves = [a.leaf for a in accepted]
    assert len(set(leaves)) == len(leaves)
    # no two draws share bytes (a window of 12: the shortest IV): a byte handed out twice
    # would show as a repeated window; random windows of 12 bytes repeat by chance ~never
    windows: set[bytes] = set()
    total = 0
    for d in draws:
        for i in range(0, len(d) - 11):
            windows.add(d[i : i + 12])
            total += 1
    assert len(windows) == total, "random bytes handed out twice"
