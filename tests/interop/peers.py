"""The Go witnesses for the tests (:mod:`harness.gowitness`), skipping, with the reason,
where one cannot run here."""

from __future__ import annotations

from pathlib import Path

from harness import gowitness
from harness.gowitness import GoWitness, Proc, wait_up
from tests.interop.gobin import skip_unavailable

__all__ = ["GoWitness", "Litewitness", "Omniwitness", "Proc", "wait_up"]


class Omniwitness(gowitness.Omniwitness):
    def __init__(self, d: Path, origin: str, log_vkey: str, *, mldsa: bool = True) -> None:
        with skip_unavailable():
            super().__init__(d, origin, log_vkey, mldsa=mldsa)


class Litewitness(gowitness.Litewitness):
    def __init__(self, d: Path, origin: str, log_vkey: str) -> None:
        with skip_unavailable():
            super().__init__(d, origin, log_vkey)
