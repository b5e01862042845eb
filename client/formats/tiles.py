"""C2SP tlog-tiles: tile paths, tile sets for a tree size, entry bundles, and a tile reader.

A hash tile at level L, index N holds the hashes of the tree level 8·L, positions
N·256 .. N·256+255; a partial tile of width W holds the first W. Entry bundles hold the
entries themselves as ``uint16_be(len) || entry``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from client.formats.merkle import HASH_SIZE, node_hash
from client.formats.note import FormatError

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Tile",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "entry_bundles_for_size",
    "format_index",
    "parse_index",
    "parse_tile_path",
    "tiles_for_size",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256
MAX_ENTRY_SIZE = 0xFFFF
MAX_LEVEL = 63


def format_index(n: int) -> str:
    """1234067 -> ``x001/x234/067``: 3-digit groups, all but the last prefixed by 'x'."""
    if n < 0:
        raise ValueError("negative tile index")
    s = f"{n:03d}"
    pad = -len(s) % 3
    s = "0" * pad + s
    groups = [s[i : i + 3] for i in range(0, len(s), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


_GROUP = re.compile(r"[0-9]{3}")
# Groups of a tile index: a tree of 2**63 - 1 leaves has tile indices below 2**55, six
# groups. More is no tile of any tree, refused before int() sees the digits (it raises a
# ValueError past 4,300 of them: a tile read answered 500, red team 22).
_MAX_GROUPS = 7


def parse_index(path: str) -> int:
    """Inverse of :func:`format_index`; strict (no missing or extra zero padding)."""
    parts = path.split("/", _MAX_GROUPS)
    if len(parts) > _MAX_GROUPS:
        raise FormatError("tile index out of range")
    for p in parts[:-1]:
        if len(p) != 4 or p[0] != "x" or not _GROUP.fullmatch(p[1:]):
            raise FormatError("bad tile index")
    if not _GROUP.fullmatch(parts[-1]):
        raise FormatError("bad tile index")
    n = int("".join(p.lstrip("x") for p in parts))
    if format_index(n) != path:
        raise FormatError("non-canonical tile index")
    return n


@dataclass(frozen=True)
class Tile:
    """A tile: ``level`` is the tile level (-1 for an entry bundle), ``width`` 1..256."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def is_entries(self) -> bool:
        return self.level < 0

    def path(self) -> str:
        lv = "entries" if self.level < 0 else str(self.level)
        p = f"tile/{lv}/{format_index(self.index)}"
        if self.width != TILE_WIDTH:
            p += f".p/{self.width}"
        return p


def parse_tile_path(path: str) -> Tile:
    """Parse ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` strictly."""
    if not path.startswith("tile/"):
        raise FormatError("not a tile path")
    rest = path[5:]
    lv_s, sep, rest = rest.partition("/")
    if not sep:
        raise FormatError("not a tile path")
    if lv_s == "entries":
        level = -1
    else:
        if not lv_s.isascii() or not lv_s.isdigit() or (len(lv_s) > 1 and lv_s[0] == "0"):
            raise FormatError("bad tile level")
        if len(lv_s) > 2:  # before int(), as an index's groups (_MAX_GROUPS)
            raise FormatError("tile level out of range")
        level = int(lv_s)
        if level > MAX_LEVEL:
            raise FormatError("tile level out of range")
    width = TILE_WIDTH
    idx_s, sep, w_s = rest.partition(".p/")
    if sep:
        if not w_s.isascii() or not w_s.isdigit() or w_s[0] == "0" or len(w_s) > 3:
            raise FormatError("bad partial tile width")
        width = int(w_s)
        if not 1 <= width < TILE_WIDTH:
            raise FormatError("partial tile width out of range")
    return Tile(level, parse_index(idx_s), width)


def tiles_for_size(size: int) -> list[Tile]:
    """Every hash tile (levels ascending) of a tree of ``size`` leaves, partial ones included.

    Entry bundles are the same indices as level 0 (see :func:`entry_bundles_for_size`).
    """
    out: list[Tile] = []
    level = 0
    while True:
        n = size >> (TILE_HEIGHT * level)
        if n == 0:
            break
        full, partial = divmod(n, TILE_WIDTH)
        out.extend(Tile(level, i) for i in range(full))
        if partial:
            out.append(Tile(level, full, partial))
        if full == 0:
            break
        level += 1
    return out


def entry_bundles_for_size(size: int) -> list[Tile]:
    full, partial = divmod(size, TILE_WIDTH)
    out = [Tile(-1, i) for i in range(full)]
    if partial:
        out.append(Tile(-1, full, partial))
    return out


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    parts = []
    for e in entries:
        if len(e) > MAX_ENTRY_SIZE:
            raise FormatError("entry longer than 65535 bytes")
        parts.append(struct.pack(">H", len(e)))
        parts.append(e)
    return b"".join(parts)


def decode_entry_bundle(data: bytes, count: int | None = None) -> list[bytes]:
    """Split a bundle into entries; if ``count`` is given, the bundle must hold exactly that."""
    out: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        if pos + 2 > n:
            raise FormatError("truncated entry bundle")
        (ln,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + ln > n:
            raise FormatError("truncated entry bundle")
        out.append(bytes(data[pos : pos + ln]))
        pos += ln
        if len(out) > TILE_WIDTH:
            raise FormatError("entry bundle holds more than 256 entries")
    if count is not None and len(out) != count:
        raise FormatError(f"entry bundle holds {len(out)} entries, want {count}")
    return out


def split_hash_tile(data: bytes, width: int) -> list[bytes]:
    if len(data) != width * HASH_SIZE:
        raise FormatError(f"hash tile is {len(data)} bytes, want {width * HASH_SIZE}")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


class TileHashReader:
    """Reads tree hashes for a tree of ``size`` through a tile fetcher.

    ``fetch(tile) -> bytes`` returns the raw tile; this class checks lengths and keeps the
    tiles it has read. It provides ``node(level, index)`` for perfect subtrees, which is what
    :func:`client.formats.merkle.proof_from_ranges` needs. The caller must verify whatever it
    computes against a signed root: tiles are untrusted input.
    """

    def __init__(self, size: int, fetch: Callable[[Tile], bytes]) -> None:
        self.size = size
        self._fetch = fetch
        self._cache: dict[tuple[int, int], list[bytes]] = {}

    def _tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        got = self._cache.get(key)
        if got is None:
            n = self.size >> (TILE_HEIGHT * level)
            full = n // TILE_WIDTH
            width = TILE_WIDTH if index < full else n % TILE_WIDTH
            if index > full or width == 0:
                raise FormatError("tile beyond the tree")
            got = split_hash_tile(self._fetch(Tile(level, index, width)), width)
            self._cache[key] = got
        return got

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree at tree level ``level``, position ``index``."""
        tlevel, sub = divmod(level, TILE_HEIGHT)
        # The subtree spans 2**sub hashes of stored level 8·tlevel.
        first = index << sub
        count = 1 << sub
        hashes = []
        for pos in range(first, first + count):
            tile = self._tile(tlevel, pos // TILE_WIDTH)
            i = pos % TILE_WIDTH
            if i >= len(tile):
                raise FormatError("subtree beyond the tree")
            hashes.append(tile[i])
        while len(hashes) > 1:
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]
