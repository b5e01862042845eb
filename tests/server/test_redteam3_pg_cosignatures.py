"""Two frontends on one PostgreSQL database record cosignatures of the same checkpoint.

Every frontend pushes its checkpoints to the witnesses, so two frontends idle at the same
tree size each gather cosignatures for that size and store them
(:meth:`tlog.published.Witnessed.record`: read the stored lines, add its own, write them).
The write replaced the row, so when the two read-modify-writes interleaved, the second
frontend's write dropped the first frontend's lines: a witness's cosignature, gathered and
acknowledged, was gone from the store, and with it the quorum that the served checkpoint
(``note_for``) and a restarted frontend (``_load_cosigned``) compute from the stored lines.
Now the database merges the lines under the row's lock: no line that was stored is lost.
"""

from __future__ import annotations

from pathlib import Path

from client.formats.cosignature import CosignatureSigner
from client.formats.policy import Policy
from tlog.log import Log
from tlog.published import Published, Witnessed

from ..pgsupport import open_store
from .conftest import make_signer


def test_interleaved_cosignature_records_keep_every_line(tmp_path: Path, pg_url: str) -> None:
    a = Log(open_store(pg_url, tmp_path / "a"), make_signer())
    b = Log(open_store(pg_url, tmp_path / "b"), make_signer())
    try:
        w1 = CosignatureSigner("w1.example", b"\x01" * 32)
        w2 = CosignatureSigner("w2.example", b"\x02" * 32)
        policy = Policy.parse(
            f"log {a.vkey}\nwitness w1 {w1.vkey()}\nwitness w2 {w2.vkey()}\n"
            "group both all w1 w2\nquorum both\n"
        )
        a.integrate([b"e%d" % i for i in range(4)])
        assert b.catch_up()
        pub = Published(a.latest.size, a.latest.note)
        text = a.latest.note.split("\n\n")[0] + "\n"
        sig1, sig2 = w1.cosign(text, 1_700_000_000), w2.cosign(text, 1_700_000_001)
        wa, wb = Witnessed(a, policy), Witnessed(b, policy)

        # B has read the stored lines (none) and is about to write; A records in between.
        put = b.storage.put_cosignatures

        def interleaved(size: int, lines: bytes) -> None:
            wa.record(pub, (sig1,))
            put(size, lines)

        b.storage.put_cosignatures = interleaved  # type: ignore[method-assign]
        wb.record(pub, (sig2,))
        b.storage.put_cosignatures = put  # type: ignore[method-assign]

        with a.storage.read() as rv:
            stored = (rv.cosignatures(pub.size) or b"").decode()
        assert sig1.line() in stored, "A's witness cosignature was lost"
        assert sig2.line() in stored
        # A frontend started now finds the quorum that both frontends gathered.
        fresh = Witnessed(b, policy)
        assert fresh.cosigned is not None and fresh.cosigned.size == pub.size
    finally:
        a.storage.close()
        b.storage.close()


def test_storing_the_same_lines_again_adds_nothing(tmp_path: Path, pg_url: str) -> None:
    st = open_store(pg_url, tmp_path / "a")
    try:
        st.put_cosignatures(3, b"\xe2\x80\x94 w1 AAAA\n")
        st.put_cosignatures(3, b"\xe2\x80\x94 w1 AAAA\n\xe2\x80\x94 w2 BBBB\n")
        st.put_cosignatures(3, b"\xe2\x80\x94 w2 BBBB\n")
        with st.read() as rv:
            assert rv.cosignatures(3) == b"\xe2\x80\x94 w1 AAAA\n\xe2\x80\x94 w2 BBBB\n"
    finally:
        st.close()
