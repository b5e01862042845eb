"""SCIM provisioning audit events: the pure, server-independent core.

* :mod:`client.scim.cbor`: strict deterministic CBOR (RFC 8949 §4.2.1);
* :mod:`client.scim.event`: the private event (SCIM.md §3.4), validation, JSON mapping;
* :mod:`client.scim.actions`: normalised actions, from a diff or from a request body;
* :mod:`client.scim.leaf`: the public leaf, the commitment, tenant refs and pseudonyms.

Malformed input raises :class:`EventFormatError` (a :class:`client.formats.note.FormatError`);
a commitment that does not match raises :class:`client.formats.merkle.VerificationError`.
"""

from client.scim.actions import (
    RequestIntent,
    action,
    derive_actions,
    jcs,
    jcs_digest,
    ocsf_pair,
    op_for_method,
    parse_request,
)
from client.scim.cbor import EventFormatError, check_det, dumps_det, loads_det
from client.scim.event import (
    MAX_EVENT_SIZE,
    Event,
    decode_event,
    encode_event,
    event_from_json,
    event_to_json,
    load_event,
    new_event,
    uuid7,
    validate_event,
)
from client.scim.leaf import (
    Leaf,
    commitment,
    effect_commitment,
    make_leaf,
    new_nonce,
    parse_leaf,
    pid,
    tenant_ref,
    verify_commitment,
    verify_effect,
)

__all__ = [
    "MAX_EVENT_SIZE",
    "Event",
    "EventFormatError",
    "Leaf",
    "RequestIntent",
    "action",
    "check_det",
    "commitment",
    "decode_event",
    "derive_actions",
    "dumps_det",
    "effect_commitment",
    "encode_event",
    "event_from_json",
    "event_to_json",
    "jcs",
    "jcs_digest",
    "load_event",
    "loads_det",
    "make_leaf",
    "new_event",
    "new_nonce",
    "ocsf_pair",
    "op_for_method",
    "parse_leaf",
    "parse_request",
    "pid",
    "tenant_ref",
    "uuid7",
    "validate_event",
    "verify_commitment",
    "verify_effect",
]
