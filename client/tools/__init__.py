"""``tlog-client``: the auditor, offline verification, and the SCIM auditor's commands.

:mod:`~client.tools.cli` (the entry point), :mod:`~client.tools.auditor` (a full, resumable
audit over the tiles API), :mod:`~client.tools.scim_cli` (search, show, verify, export),
:mod:`~client.tools.stream` with :mod:`~client.tools.ocsf` (verified events to a SIEM) and
:mod:`~client.tools.officer` (the privacy officers' erasure workflow).
"""
