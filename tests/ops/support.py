"""What the store-tool tests (``tlog migrate``, ``tlog backup``) share: a log with every
kind of record, and a store's tables read whole."""

from __future__ import annotations

from pathlib import Path

from client.formats.note import Ed25519Signer, sign_note
from tests.scim_service.conftest import open_harness, user_event
from tlog.backend import TABLES, Backend


def tables(st: Backend) -> dict[str, list[tuple[bytes, bytes]]]:
    with st.read() as rv:
        return {t: list(rv.raw(t)) for t in TABLES}


def populate(data: Path) -> None:
    """A log with every kind of record: entries, tokens, SCIM records, a cosignature."""
    with open_harness(data) as h:
        for i in range(40):
            ev = user_event(f"u-{i:03d}", req=f"req-{i:04d}")
            assert h.post_event(ev).status_code in (200, 201)
        assert h.client.post(
            "/v1/entries", content=b"plain entry", headers=h.h("sub1")
        ).status_code in (200, 401, 403)
        note = h.log.latest.note
        witness = Ed25519Signer("witness.example/w", b"\x05" * 32)
        line = sign_note(note.split("\n\n")[0] + "\n", [witness]).splitlines()[-1]
        h.log.storage.put_cosignatures(h.log.latest.size, (line + "\n").encode())
