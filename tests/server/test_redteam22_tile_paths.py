"""Red team 22: a tile path naming an index of thousands of digits (``tile/0/x001/x001/...``,
1,500 groups: 7,500 bytes, well inside the server's 32 KiB head) was a 500 ``internal
error`` on the log's tile read: the index went to ``int()``, which refuses more than 4,300
digits (CPython's guard against quadratic conversions) with a ValueError, not the
FormatError the route answers 404 with. Now an index of more groups than any tree's tile
can have (2**63 leaves: six) is no tile, before any conversion; a level of thousands of
digits alike."""

from __future__ import annotations

import pytest

from client.formats.note import FormatError
from client.formats.tiles import Tile, format_index, parse_tile_path

from .conftest import Harness

LONG = "x001/" * 1500 + "000"
LEVEL = "9" * 5000  # a level of thousands of digits: the same ValueError


@pytest.mark.parametrize(
    ("prefix", "index"),
    [("tile/0/", LONG), ("tile/entries/", LONG), ("tile/3/", LONG), (f"tile/{LEVEL}/", "000")],
)
def test_redteam22_an_index_of_thousands_of_digits_is_no_tile(
    harness: Harness, prefix: str, index: str
) -> None:
    r = harness.client.get(f"/{prefix}{index}")
    assert r.status_code == 404, r.text  # before: 500 internal error
    assert "no such tile" in r.json()["error"]
    with pytest.raises(FormatError):
        parse_tile_path(prefix + index)
    with pytest.raises(FormatError):
        parse_tile_path(prefix + index + ".p/5")


def test_redteam22_the_largest_tile_index_still_parses() -> None:
    """Held (a guard of the bound): the last tile of a tree of 2**63 - 1 leaves, at level 0
    and as an entry bundle, parses as before."""
    last = ((1 << 63) - 1) // 256
    for level in (0, -1):
        tile = Tile(level, last, 255)
        assert parse_tile_path(tile.path()) == tile
    assert format_index(last).count("/") == 5
