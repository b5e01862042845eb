"""SCIM audit adapters: what runs beside a SCIM service provider and feeds the log.

:mod:`~client.adapters.middleware` (the ASGI audit middleware, with
:mod:`~client.adapters.body` to read bodies as the SP does), :mod:`~client.adapters.outbox`
(the durable local queue), :mod:`~client.adapters.relay` (delivery to the log) and
:mod:`~client.adapters.pseudonyms` (member pseudonyms from the log). The auditing reverse
proxy, ``tlog scim-proxy``, is built on them (:mod:`tlog.scim_proxy`).
"""
