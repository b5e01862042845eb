"""``tlog scim-proxy --log-key``: the proxy verifies the log's receipts under a key it is
given, refuses to start without one (unless trust on first use is asked for explicitly), and
refuses to start against a log whose checkpoint does not verify under it."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from client.adapters.proxy import ProxySettings, StartupError, check_log
from client.formats.note import Ed25519Signer
from tests.support import free_port, tlog_cli

from .logserver import Log


def _settings(log: Log, token: str, **kw: object) -> ProxySettings:
    return ProxySettings(
        upstream="http://127.0.0.1:9/v2",
        log_url=log.url,
        token=token,
        tenant="t1",
        sp_id="sp",
        **kw,  # type: ignore[arg-type]
    )


def _bad_checkpoint(inner: httpx.BaseTransport) -> httpx.MockTransport:
    """The real log, but its ``/checkpoint`` signature damaged."""

    def handler(request: httpx.Request) -> httpx.Response:
        resp = inner.handle_request(request)
        body = resp.read()
        if request.url.path != "/checkpoint":
            return httpx.Response(resp.status_code, headers=resp.headers, content=body)
        text, sig_line = body.decode().rsplit("\n", 2)[0:2]
        dash, name, sig = sig_line.split(" ")
        raw = bytearray(base64.b64decode(sig))
        raw[-1] ^= 1
        bad = f"{text}\n{dash} {name} {base64.b64encode(bytes(raw)).decode()}\n"
        return httpx.Response(200, content=bad.encode())

    return httpx.MockTransport(handler)


def test_check_log_verifies_the_checkpoint_under_the_key(log: Log) -> None:
    sub, _ = log.tokens("t1")
    check_log(_settings(log, sub, log_key=log.vkey))
    check_log(_settings(log, sub, log_key_tofu=True))
    other = Ed25519Signer.generate(log.vkey.split("+")[0]).verifier().vkey()
    with pytest.raises(StartupError, match="names another key"):
        check_log(_settings(log, sub, log_key=other))
    with pytest.raises(StartupError, match="not a verifier key"):
        check_log(_settings(log, sub, log_key="nonsense"))
    bad = httpx.Client(transport=_bad_checkpoint(httpx.HTTPTransport()))
    with pytest.raises(StartupError, match="does not verify"):
        check_log(_settings(log, sub, log_key=log.vkey), http=bad)
    bad = httpx.Client(transport=_bad_checkpoint(httpx.HTTPTransport()))
    with pytest.raises(StartupError, match="does not verify"):
        check_log(_settings(log, sub, log_key_tofu=True), http=bad)


def _proxy_cli(tmp_path: Path, log: Log, token: str, *flags: str) -> tuple[int, str]:
    tf = tmp_path / "t.token"
    tf.write_text(token + "\n")
    out = tlog_cli(
        "scim-proxy",
        *("--upstream", "http://127.0.0.1:9/v2", "--log", log.url),
        *("--token-file", str(tf), "--tenant", "t1", "--sp-id", "sp"),
        *("--listen", f"127.0.0.1:{free_port()}", "--outbox", str(tmp_path / "o.sqlite")),
        *flags,
        timeout=60,
    )
    return out.returncode, out.stderr


@pytest.mark.slow  # proxy processes
def test_the_proxy_refuses_to_start_without_a_key_or_with_a_wrong_one(
    tmp_path: Path, log: Log
) -> None:
    sub, _ = log.tokens("t1")
    code, err = _proxy_cli(tmp_path, log, sub)
    assert code == 2 and "refusing to start" in err and "--log-key" in err, err
    code, err = _proxy_cli(tmp_path, log, sub, "--log-key", log.vkey, "--log-key-tofu")
    assert code == 2 and "not both" in err, err
    other = Ed25519Signer.generate(log.vkey.split("+")[0]).verifier().vkey()
    code, err = _proxy_cli(tmp_path, log, sub, "--log-key", other)
    assert code == 2 and "refusing to start" in err and "another key" in err, err
    assert "Traceback" not in err and sub not in err


@pytest.mark.slow  # proxy processes
def test_receipts_that_fail_are_counted_in_the_metrics(tmp_path: Path, log: Log) -> None:
    """A proxy whose log answers receipts under a bad signature: its events stay in the
    outbox, and ``tlog_proxy_receipts_unverified`` counts the refused answers."""
    from starlette.testclient import TestClient

    from client.adapters.outbox import Outbox
    from client.adapters.proxy import build_proxy
    from harness.scim import event_record

    from ..support import wait_for
    from .receipt_front import CASES, Front

    sub, _ = log.tokens("t1")
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    ob.put([event_record(i) for i in range(2)])
    ob.close()
    front = Front()
    front.rewrite = CASES["bad signature"][0]
    app = build_proxy(_settings(log, sub, log_key=log.vkey, outbox=path), log_transport=front)

    def unverified(client: TestClient) -> float:
        text = client.get("/.tlog/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("tlog_proxy_receipts_unverified"))
        return float(line.split()[-1])

    with TestClient(app) as client:
        wait_for(lambda: unverified(client) >= 2, 30, "two refused answers counted")
        status = client.get("/.tlog/status").json()
        assert status["pending"] == 2 and status["receipts_unverified"] >= 2
