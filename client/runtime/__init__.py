"""What every program (``tlog``, ``tlog-witness``, the SCIM proxy) runs on.

The hardened uvicorn runner (:mod:`~client.runtime.serving`, which loads uvicorn only when
called), one log line format (:mod:`~client.runtime.logs`), the redaction of identifiers
and credentials from log lines (:mod:`~client.runtime.logredact`) and files that survive a
power loss (:mod:`~client.runtime.durable`).
"""
