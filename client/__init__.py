"""Everything outside the log server: formats, clients, the witness, the SCIM adapters, tools.

The subpackages form layers; a module imports only from its own layer or the ones above it
in this list (``tests/test_layers.py`` enforces it), and none imports ``tlog``, Starlette,
uvicorn or lmdb:

1. :mod:`client.formats`: RFC 6962 hashing and proofs, signed notes, checkpoints,
   cosignatures, witness policy, tiles, the offline proof bundle (standard library and
   ``cryptography`` only);
2. :mod:`client.scim`: the SCIM audit event format (event, leaf, CBOR, actions) and the
   offline verification of erasure certificates and evidence bundles;
3. :mod:`client.net`: verifying HTTP clients (the log, a witness, the SCIM audit API) and
   :mod:`client.runtime`: what every program runs on (the hardened uvicorn runner, log
   format and redaction);
4. the programs: :mod:`client.witness` (``tlog-witness``), :mod:`client.adapters` (the SCIM
   audit middleware, outbox and relay), :mod:`client.tools` (``tlog-client``: the auditor,
   offline verification, the SCIM auditor's commands).
"""
