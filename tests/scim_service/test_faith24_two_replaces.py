"""faith24: a split request with two or more replaces of the members with values, one of
them path-less (``{"members": [...]}``: SCIMMY adds them to its own, scim2-server replaces
them; faith19's trial), judged part by part as the whole request is.

Before, such a request was "not known" in any cut: which replace a reference belonged to
was said to be untellable across the parts. It is tellable: the adapter numbers the
references (``i``: the PatchOp they come from) when two or more operations touch the
members, and every ``patch`` item comes before every ``mods`` entry and reference in the
parts (client.adapters.exchange's split), so by a reference's part the log has seen which
PatchOps came without a path. Now where the whole request leaves the set known whole, its
parts do too, and every step they name is faithful to both SPs; it stays not known only
where the SPs genuinely disagree (then the whole request is not known either). Checked with
hypothesis against both SP models, as the other split tests."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.adapters.differential import ref_steps

from . import members_model
from .members_model import PATCH_OP, group_event, judge

_REPLACE = st.tuples(
    st.sampled_from(["replace", "preplace"]),
    st.lists(st.sampled_from(members_model.POOL), min_size=1, max_size=3),
)


def _unknown(effect: dict[str, Any]) -> bool:
    return any(c.get("attr") == "members" and "op" not in c for c in effect.get("changes", ()))


def _group(rids: set[str]) -> Any:
    body = {"displayName": "g", "members": [{"value": r} for r in sorted(rids)]}
    return judge(None, group_event("create", body, "c"))[1]


@settings(max_examples=400, deadline=None)
@given(
    start=st.sets(st.sampled_from(members_model.POOL)),
    lead=members_model.FORM_OPS,
    first=_REPLACE,
    second=_REPLACE,
    tail=members_model.FORM_OPS,
    cuts=st.lists(st.integers(1, 20), min_size=1, max_size=3),
    upgraded=st.booleans(),
)
def test_two_replaces_one_pathless_in_parts_are_judged_as_the_whole(
    start: set[str],
    lead: list[tuple[str, list[str]]],
    first: tuple[str, list[str]],
    second: tuple[str, list[str]],
    tail: list[tuple[str, list[str]]],
    cuts: list[int],
    upgraded: bool,
) -> None:
    """``upgraded``: part 0 judged by a log from before faith24 (no ``patch_n``,
    ``merge_i`` in the state): the later parts keep the cautious reading, nothing false."""
    ops = [*lead[:2], first, second, *tail[:2]]
    if "preplace" not in (first[0], second[0]):
        ops[len(lead[:2])] = ("preplace", first[1])
    body = {"schemas": [PATCH_OP], "Operations": [members_model.form_op(*o) for o in ops]}
    whole = group_event("patch", body, "r")
    one = judge(_group(start), whole)[1]
    parts, _ = members_model.split_parts(whole, cuts)
    state = _group(start)
    refs: list[Any] = []
    unknown = False
    for n, ev in enumerate(parts):
        effect, state = judge(state, ev)
        if upgraded and n == 0:
            state = {k: v for k, v in state.items() if k not in ("patch_n", "merge_i")}
        refs += effect.get("refs", [])
        unknown = unknown or _unknown(effect)
    was = set(members_model.members(start))
    for merges in (False, True):
        after = members_model.sp_forms(start, ops, merges=merges)
        if "members" in state["full"]:
            assert state["members"] == members_model.members(after), (merges, state)
        if not unknown:
            now = set(members_model.members(after))
            assert ref_steps(refs, "members", was, now) == [], (merges, refs)
    if "members" in one["full"] and not upgraded:
        assert "members" in state["full"], (ops, [p.get("x") for p in parts])
