"""faith24: the tenant's keys rotated (an erasure or an expiry in the tenant: a new KEK
generation, tlog.scim.effects.members_known) while a split request is half delivered.

A group's member set is known whole only under the generation it was stated at: an erased
member's pid stays in the set but no longer links to anyone, and the member recreated has
a pid the set never held, so a real removal of them would be judged a ``noop``. A split
request's parts judged before the rotation name pids of the old generation; the parts after
it must not leave the set marked known whole under the new one from what they carried
(a replace, a clear, the members a path-less step may have left): the rest of the request
is judged not known whole. Checked with hypothesis against both SP models (scim2-server
replacing, SCIMMY merging), as the split delivery tests: a removal of a pid never seen,
after the request, must not be called a ``noop``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.scim.effects import MEMBERS_KNOWN, classify, mark_members_known, members_known

from . import members_model
from .members_model import PATCH_OP, group_event

OLD, NEW = members_model.GEN, "fedcba9876543210"


def _step(state: Any, ev: dict[str, Any], gen: str) -> tuple[dict[str, Any], Any]:
    """What the service does with one event (ScimService._effect) under generation ``gen``."""
    effect, new, _ = classify(members_known(state, gen), ev)
    assert effect is not None
    mark_members_known(new, gen)
    return effect, new


def _removal_of(rid: str, state: Any) -> dict[str, Any]:
    remove = group_event(
        "patch",
        {"schemas": [PATCH_OP], "Operations": [members_model.form_op("remove", [rid])]},
        "after",
    )
    return _step(state, remove, NEW)[0]


@settings(max_examples=400, deadline=None)
@given(
    start=st.sets(st.sampled_from(members_model.POOL)),
    ops=members_model.FORM_OPS,
    cuts=st.lists(st.integers(1, 20), min_size=1, max_size=3),
    at=st.integers(0, 10),
)
def test_faith24_keys_rotated_between_parts_claim_nothing_known_from_before(
    start: set[str], ops: list[tuple[str, list[str]]], cuts: list[int], at: int
) -> None:
    """``u9``, a member before the request that the request never names, is erased when the
    keys rotate (between two parts) and recreated (``u9-new``: a pid the log never saw).
    Where either SP still holds u9 after the request, its removal (by the new pid) is a
    real revocation: never a ``noop``. Where the set is known whole, it is what both SPs
    hold (the old pid standing for u9)."""
    held = start | {"u9"}
    create = group_event(
        "create", {"displayName": "g", "members": [{"value": r} for r in sorted(held)]}, "c"
    )
    _, state = _step(None, create, OLD)
    body = {"schemas": [PATCH_OP], "Operations": [members_model.form_op(*o) for o in ops]}
    parts, _ = members_model.split_parts(group_event("patch", body, "r"), cuts)
    if len(parts) < 2:
        return
    rotate = 1 + at % (len(parts) - 1)  # the first part judged under the new generation
    for n, ev in enumerate(parts):
        _, state = _step(state, ev, OLD if n < rotate else NEW)
    outcomes = [members_model.sp_forms(held, ops, merges=m) for m in (False, True)]
    if "members" in state["full"]:
        for after in outcomes:
            assert state["members"] == members_model.members(after), (state, after)
        assert state.get(MEMBERS_KNOWN) == NEW
    if any("u9" in after for after in outcomes):
        effect = _removal_of("u9-new", state)
        assert "noop" not in effect, (effect, state)
