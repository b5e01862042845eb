"""The LMDB store's auxiliary writes (``put_aux``, and a batch's ``aux`` in ``commit_batch``)
go to LMDB as runs of puts between deletions: whatever the mix, a store ends as the items
applied one by one, in order, say."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.storage import Storage

_KEYS = st.sampled_from([b"scim/A", b"scim/B", b"scim/C", b"scim/D"])
_ITEMS = st.lists(st.tuples(_KEYS, st.none() | st.binary(min_size=0, max_size=8)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(_ITEMS, min_size=1, max_size=4))
def test_aux_items_end_as_applied_in_order(writes: list[list[tuple[bytes, bytes | None]]]) -> None:
    model: dict[bytes, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(Path(tmp) / "db")
        try:
            for items in writes:
                storage.put_aux(items)
                for k, v in items:
                    if v is None:
                        model.pop(k, None)
                    else:
                        model[k] = v
                with storage.read() as rv:
                    assert dict(rv.aux_range(b"scim/")) == model
        finally:
            storage.close()
