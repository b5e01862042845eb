"""What the log hands out: the checkpoint, the note of a checkpoint, what is cosigned.

The API asks one :class:`PublishedState` and never whether the log is witnessed:

* :class:`Solo` (no witness policy): the newest log-signed checkpoint; every note as signed;
  nothing cosigned; no witness status (``GET /v1/witnesses`` answers 404).
* :class:`Witnessed` (a witness policy, :mod:`tlog.witnessing` pushes the checkpoints):
  verified cosignature lines are stored per tree size, and a checkpoint whose cosignatures
  meet the policy's quorum is *cosigned*. ``GET /checkpoint`` serves the newest cosigned
  checkpoint (or the newest log-signed one while none is), and the note of a size carries
  every cosignature gathered for it (a store read), so a receipt fetched again after
  cosigning verifies under the policy.

``start``/``stop`` run whatever keeps the state current (the push rounds), from the app's
lifespan.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from client.formats.merkle import VerificationError
from client.formats.note import FormatError, Signature
from client.formats.policy import Policy
from tlog.log import Log, Published


def _line_key(line: str) -> tuple[str, int] | None:
    """(key name, key ID) of a signature line ``— <name> <base64(key ID || signature)>``;
    None for any other line."""
    if not line.startswith("\u2014 "):
        return None
    name, _, b64 = line[2:].partition(" ")
    try:
        raw = base64.b64decode(b64[:8], validate=True)
    except (binascii.Error, ValueError):
        return None
    return (name, int.from_bytes(raw[:4], "big")) if len(raw) >= 4 else None


__all__ = ["PublishedState", "Solo", "Witnessed"]

log = logging.getLogger("tlog.witness")


class PublishedState(Protocol):
    policy: Policy | None  # the witness policy, if any

    def checkpoint(self) -> str:
        """The checkpoint note to hand out as the log's latest (``GET /checkpoint``)."""
        ...

    def cached_note(self, pub: Published) -> str | None:
        """The note to hand out for ``pub``, if known without a store read, else None."""
        ...

    def note_for(self, pub: Published) -> str:
        """The note to hand out for ``pub`` (may read the store: call off the event loop)."""
        ...

    @property
    def cosigned(self) -> Published | None:
        """The newest checkpoint whose cosignatures meet the policy, if any."""
        ...

    def status(self) -> dict[str, Any] | None:
        """The witnessing status (``GET /v1/witnesses``), None without witnesses."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Solo:
    """A log without witnesses: what it signed is what it hands out."""

    def __init__(self, log_: Log) -> None:
        self.log = log_
        self.policy: Policy | None = None

    def checkpoint(self) -> str:
        return self.log.latest.note

    def cached_note(self, pub: Published) -> str | None:
        return pub.note

    def note_for(self, pub: Published) -> str:
        return pub.note

    @property
    def cosigned(self) -> Published | None:
        return None

    def status(self) -> dict[str, Any] | None:
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Witnessed:
    """A witnessed log's cosignatures and newest cosigned checkpoint (module docstring).

    ``rounds``: whatever gathers the cosignatures (:class:`tlog.witnessing.WitnessPusher`):
    started and stopped with this state; ``witnesses`` gives its per-witness status.
    """

    def __init__(
        self,
        log_: Log,
        policy: Policy,
        *,
        start: Callable[[], None] | None = None,
        stop: Callable[[], None] | None = None,
        witnesses: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.log = log_
        self.policy: Policy | None = policy
        self._quorum_policy = policy
        self._start = start
        self._stop = stop
        self._witnesses = witnesses
        self._lock = threading.Lock()
        self._cosigned: Published | None = None
        self._load_cosigned()

    def _load_cosigned(self) -> None:
        with self.log.storage.read() as rv:
            latest = rv.latest_cosigned()
        if latest is None:
            return
        size, lines = latest
        pub = self.log.checkpoint_note(size)
        note = self.merge(pub.note, lines.decode())
        if self._quorum(note):
            self._cosigned = Published(size, note)

    def _quorum(self, note: str) -> bool:
        try:
            self._quorum_policy.check(note)
        except (VerificationError, FormatError):
            return False
        return True

    @staticmethod
    def merge(note: str, lines: str) -> str:
        """The note with cosignature lines added: at most one line per key (the first).

        A witness cosigns a checkpoint again each time it is pushed to it again (a restart,
        its start-up check, another frontend), with a new timestamp: a second valid line from
        the same key, which verifiers refuse (signed-note: a known key signs once)."""
        have = set(note.split("\n"))
        keys = {_line_key(ln) for ln in have}
        extra = []
        for ln in lines.split("\n"):
            key = _line_key(ln)
            if ln and ln not in have and (key is None or key not in keys):
                extra.append(ln)
                have.add(ln)
                keys.add(key)
        return note + "".join(ln + "\n" for ln in extra)

    def checkpoint(self) -> str:
        c = self._cosigned
        return c.note if c is not None else self.log.latest.note

    def cached_note(self, pub: Published) -> str | None:
        return None  # the cosignatures of a size are in the store

    def note_for(self, pub: Published) -> str:
        """The checkpoint note for ``pub`` with every cosignature gathered for its size."""
        with self.log.storage.read() as rv:
            lines = rv.cosignatures(pub.size)
        return pub.note if lines is None else self.merge(pub.note, lines.decode())

    @property
    def cosigned(self) -> Published | None:
        return self._cosigned

    def record(self, pub: Published, sigs: tuple[Signature, ...]) -> None:
        """Store verified cosignatures of ``pub``; it becomes the cosigned checkpoint if
        they meet the quorum and it is newer."""
        with self._lock:
            with self.log.storage.read() as rv:
                old = rv.cosignatures(pub.size)
            lines = old.decode() if old else ""
            keys = {_line_key(ln) for ln in lines.split("\n")}
            for s in sigs:
                if (s.name, s.key_id) not in keys:  # one line per key (see merge)
                    lines += s.line()
                    keys.add((s.name, s.key_id))
            self.log.storage.put_cosignatures(pub.size, lines.encode())
            note = self.merge(pub.note, lines)
            cur = self._cosigned
            if (cur is None or pub.size > cur.size) and self._quorum(note):
                self._cosigned = Published(pub.size, note)
                log.info("checkpoint %d cosigned by a quorum", pub.size)

    def status(self) -> dict[str, Any] | None:
        c = self._cosigned
        return {
            "quorum": self._quorum_policy.quorum,
            "cosigned_size": None if c is None else c.size,
            "latest_size": self.log.latest.size,
            "halted": self.log.halted,
            "witnesses": self._witnesses() if self._witnesses is not None else [],
        }

    def start(self) -> None:
        if self._start is not None:
            self._start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
