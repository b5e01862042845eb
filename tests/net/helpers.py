"""Helpers of the slow-answer tests (a server dripping its answer, a call that must end),
shared by tests/net, tests/server and tests/witness."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.server.redteam8_load import make_token

from ..support import ServerProcess, start_server

BOUND = 30.0  # seconds: far beyond the deadline, far below "for ever"


def read_request(conn: socket.socket, buf: bytearray) -> tuple[bytes, bytes] | None:
    """The next HTTP/1.1 request on ``conn`` framed by its ``Content-Length``: its head and
    body (``buf`` keeps what follows); None at the client's close."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None
        rest += data
    buf[:] = rest[length:]
    return head, rest[:length]


@contextmanager
def serving(one: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A local TCP server calling ``one(connection, stop)`` in a thread for each connection
    (``stop`` is set when the test ends); yields its ``http://`` URL."""
    stop = threading.Event()
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:  # shut down at the end: no more connections
                return
            threading.Thread(target=one, args=(conn, stop), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        # Wake the accept() now rather than at its next 0.1 s timeout: a hypothesis test
        # (test_lean_post.py) opens one server per example.
        try:
            srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        t.join(5)
        srv.close()


@contextmanager
def keep_alive_server(tmp: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A real ``tlog serve`` in ``tmp`` that closes idle connections after 1 s, and a
    submitter token of tenant t1."""
    data = tmp / "data"
    srv = start_server(data, None, "--keep-alive", "1")
    try:
        yield srv, make_token(data, None, "--role", "submitter", "--tenant", "t1")
    finally:
        srv.stop()


@contextmanager
def dripping(
    head: bytes, drip: bytes, *, tls: ssl.SSLContext | None = None, once: bool = False
) -> Iterator[str]:
    """A server that answers every request with ``head``, then ``drip`` every 50 ms until
    the client leaves (or the test ends); ``once``: ``drip`` once, then close. ``tls``: over
    TLS with that server context."""

    def one(conn: socket.socket, stop: threading.Event) -> None:
        try:
            if tls is not None:
                conn.settimeout(5)
                conn = tls.wrap_socket(conn, server_side=True)
            with conn:
                conn.recv(65536)
                conn.sendall(head)
                if once:
                    conn.sendall(drip)
                    return
                while not stop.wait(0.05):
                    conn.sendall(drip)
        except OSError:
            pass

    with serving(one) as url:
        yield url


def ends(fn: object, *args: object) -> object:
    """``fn(*args)`` in a thread; its result (or exception) if it ends within BOUND s."""
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn, *args)  # type: ignore[arg-type]
    try:
        return fut.result(timeout=BOUND)
    except TimeoutError:
        pytest.fail(f"still waiting after {BOUND} s for a dripping server")
    finally:
        pool.shutdown(wait=False)  # a stuck call ends when its server stops dripping


DRIP_BODY = (b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", b"x")
DRIP_HEAD = (b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n")


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``tmp``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def answering_tls(tmp: Path) -> Iterator[tuple[str, Path]]:
    """An ``https://`` URL on 127.0.0.1 answering one request ``200`` with ``ok``, behind
    a self-signed certificate (:func:`self_signed`, in ``tmp``), and that certificate."""
    cert, key = self_signed(tmp)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    with dripping(head, b"ok", tls=server_ctx, once=True) as url:
        yield url.replace("http:", "https:"), cert
