"""Wiring: storage + log + sequencer + tokens + HTTP app, as ``tlog serve`` runs them."""

from __future__ import annotations

from pathlib import Path

from client.policy import Policy
from tlog.app import Limits, LogApp, create_app
from tlog.auth import TokenStore
from tlog.log import Log
from tlog.scim.keys import MASTER_KEY_FILE, open_keyring
from tlog.scim.routes import scim_routes
from tlog.scim.service import ScimLimits, ScimService
from tlog.sequencer import Sequencer
from tlog.signer import CheckpointSigner
from tlog.storage import Storage
from tlog.witnessing import WitnessPusher

__all__ = ["build_app"]


def build_app(
    data_dir: Path,
    signer: CheckpointSigner,
    *,
    max_batch_entries: int = 1024,
    max_batch_age: float = 0.002,
    max_backlog: int = 100_000,
    limits: Limits | None = None,
    witness_policy: str | Path | None = None,
    witness_interval: float = 1.0,
    witness_max_backoff: float = 30.0,
    scim: bool = True,
    scim_limits: ScimLimits | None = None,
    scim_master_key: Path | None = None,
) -> tuple[LogApp, Log, TokenStore]:
    """Open the store in ``data_dir`` and build the app: the log API, plus the SCIM event
    service unless ``scim`` is false (master key file default ``<data_dir>/scim-master.key``).
    """
    storage = Storage(data_dir / "db")
    log_ = Log(storage, signer)
    seq = Sequencer(
        log_,
        max_batch_entries=max_batch_entries,
        max_batch_age=max_batch_age,
        max_backlog=max_backlog,
    )
    tokens = TokenStore(storage)
    pusher = None
    if witness_policy is not None:
        policy = Policy.parse(Path(witness_policy).read_text("utf-8"))
        for lg in policy.logs:
            if lg.origin == log_.origin and lg.verifier.vkey() != log_.vkey:
                raise ValueError("the witness policy lists another key for this log's origin")
        pusher = WitnessPusher(
            log_, policy, interval=witness_interval, max_backoff=witness_max_backoff
        )
        seq.on_published = pusher.notify
    service = None
    if scim:
        try:
            keyring = open_keyring(scim_master_key or data_dir / MASTER_KEY_FILE, storage)
        except BaseException:
            storage.close()
            raise
        service = ScimService(storage, log_, seq, keyring, scim_limits)
    app = create_app(
        log_,
        seq,
        tokens,
        limits,
        pusher=pusher,
        extra_routes=scim_routes(service) if service is not None else None,
    )
    app.state.scim = service
    return app, log_, tokens
