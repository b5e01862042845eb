"""SCIM audit adapters: what runs beside a SCIM service provider and feeds the log.

:mod:`~client.adapters.exchange` (pure: one request and its answer in, audit events out;
with :mod:`~client.adapters.body` to read bodies as the SP does),
:mod:`~client.adapters.middleware` (the ASGI plumbing around it: buffering, outbox, relay,
fail-closed policy), :mod:`~client.adapters.receipts` (the receipt headers),
:mod:`~client.adapters.outbox`
(the durable local queue), :mod:`~client.adapters.relay` (delivery to the log) and
:mod:`~client.adapters.pseudonyms` (member pseudonyms from the log). The auditing reverse
proxy, ``tlog scim-proxy``, is built on them: :mod:`~client.adapters.forwarder` (the HTTP/1.1
forwarding app) and :mod:`~client.adapters.proxy` (its endpoints, start-up checks,
configuration object and runner).
"""
