"""The SCIM event service inside the log server (SCIM.md §3.4, §4.3, §5.1).

* :mod:`tlog.scim.store`: the layout of SCIM records in the ``aux`` sub-database;
* :mod:`tlog.scim.keys`: the key hierarchy (master key file, tenant KEKs, subject DEKs and
  pseudonym keys) standing in for a KMS;
* :mod:`tlog.scim.service`: ingestion, encrypted bodies, search, receipts, erasure;
* :mod:`tlog.scim.routes`: the HTTP endpoints under ``/v1/scim/``.

Only commitments go into the public tree (``leaf = {v, ts, tn, c}``); everything else is in
the private store, encrypted or keyed with a tenant secret.
"""
