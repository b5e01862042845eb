"""Trust policy for witnessed checkpoints (c2sp.org/tlog-policy, the Sigsum policy format).

A policy lists the logs a verifier trusts, the witnesses it knows, and the quorum of witness
cosignatures a checkpoint needs before the verifier believes it is not a split view::

    # comments start with '#'
    log <vkey> [url]                         # type 0x01 Ed25519 note key; name = origin
    witness <name> <vkey> [url]              # type 0x04 (Ed25519) or 0x06 (ML-DSA-44) key
    group <name> <k|all|any> <member>...     # members: witnesses or earlier groups
    quorum <name|none>                       # exactly once

Witnesses and groups share one namespace; ``none`` is predefined and needs no cosignature.
A name must be defined before it is used, so groups cannot form cycles. Parsing is strict
(Sigsum's rules plus: no duplicate keys, no duplicate members in a group, no CR, no witness
whose public key is a log's), and every
error is a :class:`client.formats.note.FormatError` naming the line.

Semantics (Sigsum): a checkpoint is valid if a listed log for its origin signed it and the
witnesses whose cosignatures verify satisfy the quorum. A group ``k m1 .. mn`` is satisfied
when at least ``k`` of its members are; ``any`` is 1 and ``all`` is n. Cosignature
timestamps are not checked here (c2sp.org/tlog-proof: "timestamps are ignored after
signature verification").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from client.formats.checkpoint import Checkpoint, open_checkpoint, parse_decimal
from client.formats.cosignature import AnyCosignatureVerifier, cosignature_verifier
from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Verifier, FormatError, Note, Verifier, parse_note

__all__ = ["NONE", "Policy", "PolicyGroup", "PolicyLog", "PolicyWitness"]

NONE = "none"


@dataclass(frozen=True)
class PolicyLog:
    """A trusted log. Its key name is its origin (c2sp.org/tlog-checkpoint)."""

    verifier: Ed25519Verifier
    url: str | None = None

    @property
    def origin(self) -> str:
        return self.verifier.name


@dataclass(frozen=True)
class PolicyWitness:
    """A known witness; ``name`` is local to the policy file, the key carries its own name."""

    name: str
    verifier: AnyCosignatureVerifier
    url: str | None = None


@dataclass(frozen=True)
class PolicyGroup:
    """``threshold`` of ``members`` (witness or group names) must be satisfied."""

    name: str
    threshold: int
    members: tuple[str, ...]


def _check_url(url: str, lineno: int) -> str:
    if not url.isascii() or not url.isprintable():
        raise FormatError(f"policy line {lineno}: bad URL")
    return url


class Policy:
    """A parsed policy. Immutable after :meth:`parse`; safe for concurrent use."""

    def __init__(
        self,
        logs: tuple[PolicyLog, ...],
        witnesses: Mapping[str, PolicyWitness],
        groups: Mapping[str, PolicyGroup],
        quorum: str,
    ) -> None:
        self.logs = logs
        self.witnesses = dict(witnesses)
        self.groups = dict(groups)
        self.quorum = quorum  # a witness or group name, or NONE

    # --- parsing ------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | bytes) -> Policy:
        """Parse a policy file strictly; raises :class:`FormatError` on any problem."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError("policy is not valid UTF-8") from None
        if "\r" in text:
            raise FormatError("policy contains a carriage return (CRLF line endings?)")
        logs: list[PolicyLog] = []
        witnesses: dict[str, PolicyWitness] = {}
        groups: dict[str, PolicyGroup] = {}
        keys: set[tuple[str, int]] = set()
        quorum: str | None = None

        def defined(name: str) -> bool:
            return name == NONE or name in witnesses or name in groups

        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.partition("#")[0]
            if any(not c.isprintable() and c not in " \t" for c in line):
                raise FormatError(f"policy line {lineno}: control character")
            fields = line.split()
            if not fields:
                continue
            keyword, args = fields[0], fields[1:]
            where = f"policy line {lineno}"
            if keyword == "log":
                if len(args) not in (1, 2):
                    raise FormatError(f"{where}: want 'log <vkey> [url]'")
                try:
                    lv = Ed25519Verifier.from_vkey(args[0])
                except FormatError as exc:
                    raise FormatError(f"{where}: {exc}") from None
                if (lv.name, lv.key_id) in keys:
                    raise FormatError(f"{where}: duplicate key {lv.name}")
                keys.add((lv.name, lv.key_id))
                url = _check_url(args[1], lineno) if len(args) == 2 else None
                logs.append(PolicyLog(lv, url))
            elif keyword == "witness":
                if len(args) not in (2, 3):
                    raise FormatError(f"{where}: want 'witness <name> <vkey> [url]'")
                name = args[0]
                if defined(name):
                    raise FormatError(f"{where}: duplicate name {name!r}")
                try:
                    wv = cosignature_verifier(args[1])
                except FormatError as exc:
                    raise FormatError(f"{where}: {exc}") from None
                if (wv.name, wv.key_id) in keys:
                    raise FormatError(f"{where}: duplicate key {wv.name}")
                keys.add((wv.name, wv.key_id))
                url = _check_url(args[2], lineno) if len(args) == 3 else None
                witnesses[name] = PolicyWitness(name, wv, url)
            elif keyword == "group":
                if len(args) < 3:
                    raise FormatError(f"{where}: want 'group <name> <k|all|any> <members...>'")
                name, k_s, members = args[0], args[1], tuple(args[2:])
                if defined(name):
                    raise FormatError(f"{where}: duplicate name {name!r}")
                for m in members:
                    if m == NONE or not defined(m):
                        raise FormatError(f"{where}: undefined member {m!r}")
                if len(set(members)) != len(members):
                    raise FormatError(f"{where}: duplicate group member")
                if k_s == "any":
                    k = 1
                elif k_s == "all":
                    k = len(members)
                else:
                    try:
                        k = parse_decimal(k_s, what="threshold")
                    except FormatError as exc:
                        raise FormatError(f"{where}: {exc}") from None
                    if not 1 <= k <= len(members):
                        raise FormatError(f"{where}: threshold out of range")
                groups[name] = PolicyGroup(name, k, members)
            elif keyword == "quorum":
                if len(args) != 1:
                    raise FormatError(f"{where}: want 'quorum <name|none>'")
                if quorum is not None:
                    raise FormatError(f"{where}: quorum can only be set once")
                if not defined(args[0]):
                    raise FormatError(f"{where}: undefined name {args[0]!r}")
                quorum = args[0]
            else:
                raise FormatError(f"{where}: unknown keyword {keyword!r}")
        if quorum is None:
            raise FormatError("policy defines no quorum")
        log_keys = {lg.verifier.public_key for lg in logs}
        for w in witnesses.values():
            if w.verifier.public_key in log_keys:
                # Same public key as a log (whatever the names and types): the log would
                # count as its own witness, and a split view would need no one else.
                raise FormatError(f"policy: witness {w.name!r} has a log's key")
        return cls(tuple(logs), witnesses, groups, quorum)

    # --- verification -------------------------------------------------------------------

    def log_verifiers(self, origin: str | None = None) -> list[Verifier]:
        """The log keys, or only those whose name is ``origin``."""
        return [lg.verifier for lg in self.logs if origin is None or lg.origin == origin]

    def witness_verifiers(self) -> list[Verifier]:
        return [w.verifier for w in self.witnesses.values()]

    def verifiers(self) -> list[Verifier]:
        """Every key in the policy, for :func:`client.formats.note.open_note`."""
        return self.log_verifiers() + self.witness_verifiers()

    def cosigned_by(self, note: Note | str | bytes) -> frozenset[str]:
        """Policy names of the witnesses whose cosignature on ``note`` verifies.

        Signatures are re-verified here (``Note.verified`` is not trusted). A signature that
        matches a known witness key on name and key ID but fails raises
        :class:`VerificationError`, as signed-note says a verifier SHOULD.
        """
        n = note if isinstance(note, Note) else parse_note(note)
        by_key = {(w.verifier.name, w.verifier.key_id): w for w in self.witnesses.values()}
        msg = n.text.encode("utf-8")
        names: set[str] = set()
        for sig in n.signatures:
            w = by_key.get((sig.name, sig.key_id))
            if w is None:
                continue
            if not w.verifier.verify(msg, sig.raw):
                raise VerificationError(f"invalid cosignature from witness {w.name!r}")
            names.add(w.name)
        return frozenset(names)

    def _satisfied(self, name: str, signed: frozenset[str]) -> bool:
        # Each group once, in definition order (a member is always defined before its
        # group): recursing instead would be exponential in groups that share members
        # ("group gN 2 gN-1 gN-2") and would overflow the stack on a long chain of groups.
        if name == NONE:
            return True
        ok = {w: w in signed for w in self.witnesses}
        for group in self.groups.values():
            ok[group.name] = sum(ok[m] for m in group.members) >= group.threshold
        return ok[name]

    def check(self, note: Note | str | bytes) -> None:
        """Raise :class:`VerificationError` unless the witness cosignatures meet the quorum.

        Only the quorum is checked here, not the log signature (see :meth:`verify_checkpoint`).
        """
        signed = self.cosigned_by(note)
        if not self._satisfied(self.quorum, signed):
            got = ", ".join(sorted(signed)) or "none"
            raise VerificationError(f"witness quorum {self.quorum!r} not met (cosigned by: {got})")

    def verify_checkpoint(
        self, note_text: str | bytes | Note, origin: str
    ) -> tuple[Checkpoint, Note]:
        """Verify a signed checkpoint for ``origin``: a listed log's signature and the quorum.

        The log is chosen by key name = origin. Raises :class:`FormatError` if malformed and
        :class:`VerificationError` if the log signature or the quorum is missing or bad.
        """
        logs = self.log_verifiers(origin)
        if not logs:
            raise VerificationError(f"policy lists no log for origin {origin!r}")
        cp, note = open_checkpoint(note_text, [*logs, *self.witness_verifiers()])
        if cp.origin != origin:
            raise VerificationError(f"checkpoint origin {cp.origin!r} is not {origin!r}")
        log_keys = {(v.name, v.key_id) for v in logs}
        if not any((s.name, s.key_id) in log_keys for s in note.verified):
            raise VerificationError("checkpoint is not signed by the log")
        self.check(note)
        return cp, note
