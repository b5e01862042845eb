"""Wiring: storage + log + sequencer + tokens + HTTP app, as ``tlog serve`` runs them."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from tlog.app import Limits, create_app
from tlog.auth import TokenStore
from tlog.log import Log
from tlog.sequencer import Sequencer
from tlog.signer import CheckpointSigner
from tlog.storage import Storage

__all__ = ["build_app"]


def build_app(
    data_dir: Path,
    signer: CheckpointSigner,
    *,
    max_batch_entries: int = 1024,
    max_batch_age: float = 0.002,
    max_backlog: int = 100_000,
    limits: Limits | None = None,
    witness_config: str | None = None,
) -> tuple[Starlette, Log, TokenStore]:
    storage = Storage(data_dir / "db")
    log_ = Log(storage, signer)
    seq = Sequencer(
        log_,
        max_batch_entries=max_batch_entries,
        max_batch_age=max_batch_age,
        max_backlog=max_backlog,
    )
    tokens = TokenStore(storage)
    app = create_app(log_, seq, tokens, limits)
    return app, log_, tokens
