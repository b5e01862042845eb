"""Two frontends with different signing keys start at once on one empty PostgreSQL database.

Each read the store's identity (origin, verifier key: none yet) and then wrote its own, and
the write replaced what was there. The frontend that lost the race therefore overwrote the
winner's verifier key with its own: the winner kept signing, but the store now named the
loser's key, so the winner's next start was refused ("store was signed with another key")
and every tool that checks the store against its recorded key took the wrong one. Now the
identity is written once: a frontend finding another key already recorded is refused, and
the store keeps the key its checkpoints are signed with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tlog.backend import StorageError
from tlog.log import Log

from ..pgsupport import open_store
from .conftest import make_signer


def test_the_frontend_losing_the_start_race_changes_nothing(tmp_path: Path, pg_url: str) -> None:
    key_a, key_b = make_signer(b"\x0a" * 32), make_signer(b"\x0b" * 32)
    sa, sb = open_store(pg_url, tmp_path / "a"), open_store(pg_url, tmp_path / "b")
    made: list[Log] = []
    try:
        put = sb.set_meta

        def late(key: str, value: bytes) -> None:
            if not made:  # B has read the empty identity; A starts completely meanwhile
                made.append(Log(sa, key_a))
                made[0].integrate([b"a0", b"a1"])
            put(key, value)

        sb.set_meta = late  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            Log(sb, key_b)
        with sa.read() as rv:
            assert rv.meta("vkey") == key_a.vkey().encode()
        # A restarts on its store, as after any deployment.
        again = Log(sa, key_a)
        assert again.latest.size == 2
    finally:
        sa.close()
        sb.close()
