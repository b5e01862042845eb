"""The SCIM event service inside the log server (SCIM.md §3.4, §4.3, §5.1).

* :mod:`tlog.scim.store`: the layout of SCIM records in the ``aux`` sub-database;
* :mod:`tlog.scim.keys`: the key hierarchy (master key file, tenant KEKs, subject DEKs and
  pseudonym keys) standing in for a KMS, and the envelope crypto (bodies, resource state);
* :mod:`tlog.scim.service`: ingestion (validation, dedup, staging, one durable commit,
  sequencing), and the service object the other stages hang off;
* :mod:`tlog.scim.effects`: what an event did to a resource, judged against its state;
* :mod:`tlog.scim.search`: the search index and its reads (search pages, receipts);
* :mod:`tlog.scim.access`: the log's own events, and the access events of every read;
* :mod:`tlog.scim.erasure`: crypto-shredding with dual control, retention, legal holds;
* :mod:`tlog.scim.routes`: the HTTP endpoints under ``/v1/scim/``.

Only commitments go into the public tree (``leaf = {v, ts, tn, c}``); everything else is in
the private store, encrypted or keyed with a tenant secret.
"""
