"""Network clients that verify everything a server says before returning it.

:mod:`~client.net.logclient` (the log's tiles and proof API), :mod:`~client.net.witness_client`
(a witness's ``add-checkpoint``), :mod:`~client.net.scim_audit` (the log's SCIM search API).
"""
