"""Formats and their verification: the pure core that the log server and every client share.

RFC 6962 / 9162 Merkle hashing and proofs (:mod:`~client.formats.merkle`), C2SP signed notes
(:mod:`~client.formats.note`), checkpoints, cosignatures, tiles, the offline proof bundle and
the witness policy. Standard library and ``cryptography`` only; no I/O.
"""
