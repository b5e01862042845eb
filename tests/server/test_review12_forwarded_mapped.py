"""review12: ``--forwarded-allow-ips`` naming an IPv4-mapped IPv6 address trusts that IPv4
peer. tlog's servers listen with IPV6_V6ONLY (asyncio's create_server), so an IPv4 proxy
arrives as ``10.0.0.1``, and uvicorn compares address objects: ``::ffff:10.0.0.1`` alone
(what the strict parser accepted) matched no peer at all, silently. IPv6 with a zone id,
networks and whitespace are applied as written."""

from __future__ import annotations

from uvicorn.middleware.proxy_headers import _TrustedHosts

from client.runtime.serving import parse_forwarded_allow_ips


def test_a_mapped_address_trusts_its_ipv4_peer() -> None:
    got = parse_forwarded_allow_ips(" ::ffff:10.0.0.1 , fe80::1%eth0,2001:DB8::/32 ")
    trusted = _TrustedHosts(list(got))
    assert "10.0.0.1" in trusted and "::ffff:10.0.0.1" in trusted
    assert "fe80::1%eth0" in trusted and "2001:db8::5" in trusted
    assert "10.0.0.2" not in trusted and "fe80::1" not in trusted and "::1" not in trusted


def test_plain_entries_are_exactly_what_uvicorn_gets() -> None:
    assert parse_forwarded_allow_ips("10.0.0.1, ::1") == ("10.0.0.1", "::1")
