"""review13: two ways ``forwarded_allow_ips`` silently trusted nobody.

* An IPv4-mapped *network* (``::ffff:10.0.0.0/104``): review12 mapped single addresses to
  the IPv4 peer they arrive as (the servers listen IPV6_V6ONLY), not networks, so such an
  entry matched no peer at all.
* :func:`hardened_config` given the setting as text (uvicorn's own form): ``tuple()`` of a
  string is its characters, none of which is an address."""

from __future__ import annotations

import pytest
from uvicorn.middleware.proxy_headers import _TrustedHosts

from client.runtime.serving import hardened_config, parse_forwarded_allow_ips


async def _app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    raise AssertionError("never called")


def test_a_mapped_network_trusts_its_ipv4_peers() -> None:
    got = parse_forwarded_allow_ips("::ffff:10.0.0.0/104, ::ffff:192.0.2.0/120")
    assert got == ("::ffff:a00:0/104", "10.0.0.0/8", "::ffff:c000:200/120", "192.0.2.0/24")
    trusted = _TrustedHosts(list(got))
    assert "10.9.8.7" in trusted and "192.0.2.200" in trusted and "::ffff:10.9.8.7" in trusted
    assert "11.0.0.1" not in trusted and "192.0.3.1" not in trusted


def test_other_networks_are_applied_as_written() -> None:
    assert parse_forwarded_allow_ips("2001:db8::/32, 10.0.0.0/8") == ("2001:db8::/32", "10.0.0.0/8")


def test_hardened_config_parses_the_setting_given_as_text() -> None:
    cfg = hardened_config(_app, "127.0.0.1", 0, forwarded_allow_ips="10.0.0.1, ::1")
    assert cfg.forwarded_allow_ips == ["10.0.0.1", "::1"]
    assert cfg.proxy_headers is True
    with pytest.raises(ValueError, match=r"proxy\.internal"):
        hardened_config(_app, "127.0.0.1", 0, forwarded_allow_ips="proxy.internal")
    off = hardened_config(_app, "127.0.0.1", 0, forwarded_allow_ips="")
    assert off.proxy_headers is False
