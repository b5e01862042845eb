"""``pull-logs`` and the monitor's list pulls follow only redirects that keep to the list's
origin (or upgrade http to https on its host): https -> http and other hosts are refused
with one line, unless the other host is allowed by name (and then only over https). Real
local servers: an https one with a certificate from a CA made here (trusted through
``--ca-file``) and plain http ones."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.formats.cosignature import CosignatureSigner
from client.formats.note import FormatError
from client.witness.cli import EXIT_USAGE, main
from client.witness.provision import MAX_REDIRECTS, fetch_log_list
from tests.witness.helpers import FakeLog, events

LIST = b"logs/v0\n"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(d: Path) -> tuple[Path, Path, Path]:
    """A CA (its certificate in ca.pem) and a server certificate it signed for 127.0.0.1
    and localhost (cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("tlog test CA"))
        .issuer_name(_name("tlog test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = d / "ca.pem", d / "cert.pem", d / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class _Handler(BaseHTTPRequestHandler):
    """``/logs.txt`` answers the list; any path in ``redirects`` answers 302 to its URL."""

    redirects: ClassVar[dict[str, str]] = {}
    body = LIST
    hits: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(self.path)
        to = self.redirects.get(self.path)
        if to is not None:
            self.send_response(302)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


class Server:
    def __init__(self, host: str, ctx: ssl.SSLContext | None) -> None:
        self.handler: type[_Handler] = type("H", (_Handler,), {"redirects": {}, "hits": []})
        self.srv = ThreadingHTTPServer((host, 0), self.handler)
        if ctx is not None:
            self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        scheme = "https" if ctx is not None else "http"
        self.base = f"{scheme}://{host}:{self.srv.server_address[1]}"
        self.thread = threading.Thread(
            target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def redirect(self, path: str, to: str) -> str:
        self.handler.redirects[path] = to
        return self.base + path

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    ca, cert, key = _make_ca(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ca, ctx


@pytest.fixture
def servers(pki: tuple[Path, ssl.SSLContext]) -> Iterator[dict[str, Server]]:
    """``https`` and ``https2`` (two ports) and ``http`` on 127.0.0.1; ``other_http`` and
    ``other_https`` on the host name ``localhost`` (another host for the URL rules)."""
    _, ctx = pki
    made = {
        "https": Server("127.0.0.1", ctx),
        "https2": Server("127.0.0.1", ctx),
        "http": Server("127.0.0.1", None),
    }
    made["other_http"] = Server("127.0.0.1", None)
    made["other_http"].base = made["other_http"].base.replace("127.0.0.1", "localhost")
    made["other_https"] = Server("127.0.0.1", ctx)
    made["other_https"].base = made["other_https"].base.replace("127.0.0.1", "localhost")
    try:
        yield made
    finally:
        for s in made.values():
            s.close()


def _fetch(url: str, ca: Path, **kw: object) -> bytes:
    return fetch_log_list(url, timeout=5.0, ca_file=str(ca), **kw)  # type: ignore[arg-type]


def test_https_list_is_fetched_with_the_ca_file_and_refused_without(
    pki: tuple[Path, ssl.SSLContext], servers: dict[str, Server]
) -> None:
    ca, _ = pki
    url = servers["https"].base + "/logs.txt"
    assert _fetch(url, ca) == LIST
    with pytest.raises(FormatError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        fetch_log_list(url, timeout=5.0)  # the system's CAs do not know ours
    with pytest.raises(FormatError, match="cannot use CA file"):
        fetch_log_list(url, timeout=5.0, ca_file=str(ca.parent / "missing.pem"))


def test_https_to_http_redirect_is_refused_even_on_the_same_host(
    pki: tuple[Path, ssl.SSLContext], servers: dict[str, Server]
) -> None:
    ca, _ = pki
    target = servers["http"].base + "/logs.txt"
    url = servers["https"].redirect("/logs.txt", target)
    with pytest.raises(FormatError) as e:
        _fetch(url, ca)
    msg = str(e.value)
    assert msg == f"GET {url}: redirect to {target} refused: it leaves https for plain http"
    assert servers["http"].handler.hits == []  # never asked
    # Allowing the host by name does not allow the downgrade.
    with pytest.raises(FormatError, match="leaves https for plain http"):
        _fetch(url, ca, allow_redirect_hosts=["127.0.0.1"])
    assert servers["http"].handler.hits == []


def test_redirects_within_the_origin_and_upgrades_are_followed(
    pki: tuple[Path, ssl.SSLContext], servers: dict[str, Server]
) -> None:
    ca, _ = pki
    https = servers["https"]
    https.redirect("/old.txt", "/logs.txt")  # relative, same origin
    assert _fetch(https.base + "/old.txt", ca) == LIST
    # http -> https on the same host (another port, as 80 -> 443).
    up = servers["http"].redirect("/logs.txt", https.base + "/logs.txt")
    assert _fetch(up, ca) == LIST


def test_another_host_or_port_is_refused_unless_allowed_and_https(
    pki: tuple[Path, ssl.SSLContext], servers: dict[str, Server]
) -> None:
    ca, _ = pki
    https = servers["https"]
    # Another port of the same host is another origin.
    url = https.redirect("/port.txt", servers["https2"].base + "/logs.txt")
    with pytest.raises(FormatError, match="refused: it leaves for another host"):
        _fetch(url, ca)
    assert servers["https2"].handler.hits == []
    # Another host: refused, then followed once allowed by name.
    url = https.redirect("/away.txt", servers["other_https"].base + "/logs.txt")
    with pytest.raises(FormatError, match="--allow-redirect-host"):
        _fetch(url, ca)
    assert servers["other_https"].handler.hits == []
    assert _fetch(url, ca, allow_redirect_hosts=["LOCALHOST"]) == LIST
    # An allowed host over plain http (from http) is still refused.
    url = servers["http"].redirect("/away.txt", servers["other_http"].base + "/logs.txt")
    with pytest.raises(FormatError, match="another host is followed only over https"):
        _fetch(url, ca, allow_redirect_hosts=["localhost"])
    assert servers["other_http"].handler.hits == []


def test_redirect_loops_end(pki: tuple[Path, ssl.SSLContext], servers: dict[str, Server]) -> None:
    ca, _ = pki
    https = servers["https"]
    url = https.redirect("/loop", "/loop")
    with pytest.raises(FormatError, match=f"more than {MAX_REDIRECTS} redirects"):
        _fetch(url, ca)
    assert len(https.handler.hits) == MAX_REDIRECTS + 1


def test_pull_logs_cli_refuses_the_downgrade_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: tuple[Path, ssl.SSLContext],
    servers: dict[str, Server],
) -> None:
    ca, _ = pki
    log = FakeLog(events(1))
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        'name = "w.example/w"\nkey_file = "w.key"\nstate_db = "s.db"\nlisten = "127.0.0.1:0"\n'
        f'[[log]]\norigin = "{log.origin}"\nvkey = "{log.signer.vkey()}"\n'
    )
    (tmp_path / "w.key").touch(0o600)
    (tmp_path / "w.key").write_text(CosignatureSigner("w.example/w", b"\7" * 32).skey() + "\n")
    servers["http"].handler.body = f"logs/v0\nvkey {log.signer.vkey()}\n".encode()
    url = servers["https"].redirect("/logs.txt", servers["http"].base + "/logs.txt")
    argv = ["pull-logs", "--config", str(cfg), "--source", url, "--ca-file", str(ca)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == err.count("tlog-witness: ")
    assert "refused: it leaves https for plain http" in err
    # The same list straight over https (trusted through --ca-file) is pulled.
    servers["https"].handler.body = servers["http"].handler.body
    del servers["https"].handler.redirects["/logs.txt"]
    assert main([*argv[:-2], "--ca-file", str(ca), "--verbose"]) == 0
    assert f"known {log.origin}" in capsys.readouterr().out
