"""Hostile input files given to the offline verifiers and to the stream's cursor.

``tlog-client scim erasure verify FILE`` (an erasure certificate, handed to a data subject
or a regulator, so from anyone) crashed with a Python traceback on a file that is not UTF-8
(the file was decoded outside the error handling) or that nests JSON deeper than Python's
recursion limit (``RecursionError`` is no ``ValueError``); ``tlog-client scim stream`` did
the same on a cursor file nested that deep. Each is now a clear one-line refusal with its
exit code: ``DOES NOT VERIFY`` (2) for the certificate, an error (1) for the cursor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.formats.note import Ed25519Signer
from client.tools.cli import main
from client.tools.stream import Cursor, SinkError

from .conftest import Server

VKEY = Ed25519Signer("example.com/log", bytes(range(32))).verifier().vkey()
NESTED = b"[" * 100_000 + b"]" * 100_000

HOSTILE = {
    "nested-array": NESTED,
    "nested-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "not-utf8": b"\xff\xfe\x00{}\n",
    "truncated": b'{"type": "tlog-erasure-certificate/v1", "request": "ab',
    "empty": b"",
    "a-list": b"[1, 2, 3]",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_erasure_certificate_verify_refuses_hostile_files(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "cert.json"
    f.write_bytes(HOSTILE[name])
    rc = main(["scim", "erasure", "verify", str(f), "--vkey", VKEY])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "DOES NOT VERIFY" in err and "Traceback" not in err
    assert len(err) < 1000


def test_stream_cursor_nested_too_deep_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "cursor.json"
    f.write_bytes(NESTED)
    with pytest.raises(SinkError, match="cursor"):
        Cursor.load(f)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"since": 1, "seen": "abc", "delivered": 0, "last_index": null}',
        b'{"since": 1, "seen": [], "delivered": 0, "last_index": {"a": 1}}',
        b'{"since": 1, "seen": [], "delivered": -1, "last_index": null}',
    ],
)
def test_stream_cursor_of_the_wrong_shape_is_an_error(tmp_path: Path, doc: bytes) -> None:
    f = tmp_path / "cursor.json"
    f.write_bytes(doc)
    with pytest.raises(SinkError, match="not a stream cursor"):
        Cursor.load(f)


def test_audit_state_file_nested_too_deep_is_an_error(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add(3)
    state = tmp_path / "audit.json"
    state.write_bytes(NESTED)
    assert server.audit(state) == 1
    err = capsys.readouterr().err
    assert "state file" in err and "Traceback" not in err
