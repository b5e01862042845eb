"""The proxy's per-write Python outside the network, counted where the machine's load does
not move the figure (``proxy21`` round): ``Builder.single`` on the two requests of
``bench.scim_proxy``'s load (a ``POST /Users`` answered ``201`` with the User, Location and
ETag; a ``PATCH`` of ``displayName`` answered ``204``), or with ``--forward`` the
forwarder's upstream head of such a request. Run it under valgrind at two sizes; the
difference over the difference of the sizes is the instructions a write:

    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python -m bench.builder_ir 1200   # then 200; (I1200 - I200) / 1000

Without valgrind it prints the thread CPU a write (noisy on a shared machine). To count
another checkout, run this file with that checkout's venv, whose editable install imports
its sources: ``../other/.venv/bin/python bench/builder_ir.py 1200``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from client.adapters.exchange import AuditConfig, Builder, Exchange
from client.adapters.forwarder import Forwarder

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SP = "http://127.0.0.1:9000/v2"
CONFIG = AuditConfig(tenant="t1", sp_id="sp1", base_path="", sp_base=SP)
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"authorization", b"Bearer bench-token"),
    (b"content-type", b"application/scim+json"),
    (b"user-agent", b"wrk"),
]


def _pid(rt: str, ref_id: str) -> bytes:
    return hashlib.sha256(f"{rt}/{ref_id}".encode()).digest()[:16]


def exchange(i: int) -> Exchange:
    """The ``i``-th write: a create when odd, a PATCH when even."""
    scope = {"headers": HEADERS, "query_string": b"", "client": ("127.0.0.1", 5555)}
    if i % 2:
        body: dict[str, object] = {
            "schemas": [USER],
            "userName": f"bench-{i}",
            "displayName": "Bench User",
        }
        x = Exchange(scope, "POST", "/Users", f"req-{i}", None, json.dumps(body).encode(), 0)
        loc = f"{SP}/Users/id{i}"
        x.status = 201
        x.headers = [
            (b"content-type", b"application/scim+json"),
            (b"location", loc.encode()),
            (b"etag", b'W/"1"'),
        ]
        meta = {"resourceType": "User", "version": 'W/"1"', "location": loc}
        x.resp_body = json.dumps({**body, "id": f"id{i}", "meta": meta}).encode()
    else:
        op = {"op": "replace", "path": "displayName", "value": f"d-{i}"}
        body = {"schemas": [PATCH], "Operations": [op]}
        raw = json.dumps(body).encode()
        x = Exchange(scope, "PATCH", f"/Users/id{i}", f"req-{i}", None, raw, 0)
        x.status = 204
    x.t1_ns = 1_800_000_000_000_000_000 + i
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("writes", type=int, nargs="?", default=2000)
    ap.add_argument("--forward", action="store_true", help="the forwarder's head instead")
    args = ap.parse_args()
    if args.forward:
        f = Forwarder(SP)
        scope: dict[str, object] = {
            "method": "PATCH",
            "scheme": "http",
            "client": ("127.0.0.1", 5555),
            "headers": [*HEADERS, (b"content-length", b"120")],
        }
        body = b"x" * 120
        t = time.thread_time()
        for _ in range(args.writes):
            f._request_headers(scope, body)
    else:
        xs = [exchange(i) for i in range(args.writes)]
        t = time.thread_time()
        for x in xs:
            Builder(CONFIG, x, _pid).single()
    print(f"{(time.thread_time() - t) / max(1, args.writes) * 1e6:.1f} us a write (thread CPU)")


if __name__ == "__main__":
    main()
