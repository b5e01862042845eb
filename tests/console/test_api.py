"""The console's server side without a browser: files and headers, the public summary, the
export record, and the offline verification of evidence bundles."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Signer, Ed25519Verifier, FormatError
from client.formats.policy import Policy
from client.formats.proof_bundle import TlogProof
from client.net.scim_audit import ScimAuditClient
from client.scim import event_to_json
from client.scim.evidence import FORMAT, verify_evidence
from tlog.ui import CSP, STATIC_DIR

from .conftest import TENANT, Live


def test_static_files_carry_a_strict_csp(live: Live) -> None:
    for path, ctype in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/verify.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ]:
        r = httpx.get(live.url + path)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(ctype)
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP
    r = httpx.get(live.url + "/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    for bad in ("/ui/../pyproject.toml", "/ui/..%2fapp.py", "/ui/nope.js", "/ui/app.py"):
        assert httpx.get(live.url + bad).status_code == 404, bad


def test_page_loads_nothing_from_elsewhere() -> None:
    for p in STATIC_DIR.iterdir():
        text = p.read_text("utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text, p.name
        assert "<script>" not in text and "style=" not in text, p.name  # no inline code


def test_summary_is_public_and_checks_out(live: Live) -> None:
    r = httpx.get(live.url + "/v1/ui/summary")
    assert r.status_code == 200
    s = r.json()
    assert s["origin"] == live.signer.origin and s["vkey"] == live.vkey
    # The checkpoint is the cosigned one (witness policy), and verifies under the policy.
    policy = Policy.parse(s["policy"])
    cp, _ = policy.verify_checkpoint(s["checkpoint"], live.signer.origin)
    assert cp.size == s["tree_size"]
    assert s["tree_size"] <= s["latest_size"]
    assert s["checkpoint_time"] is not None
    names = {w["name"]: w for w in s["witnesses"]}
    assert set(names) == {"w1", "w2", "w3", "pq"}
    assert names["pq"]["cosigned_time"] == names["w1"]["cosigned_time"]  # ML-DSA times too
    assert names["w1"]["cosigned_size"] == s["tree_size"] and names["w1"]["cosigned_time"]
    assert names["w3"]["cosigned_size"] == 0 and names["w3"]["cosigned_time"] is None
    hist = s["history"]
    assert 2 <= len(hist) <= 64
    sizes = [h["size"] for h in hist]
    assert sizes == sorted(set(sizes)) and sizes[-1] == s["latest_size"]
    v = Ed25519Verifier.from_vkey(live.vkey)
    for h in hist:
        c, _ = open_checkpoint(h["checkpoint"], [v], origin=v.name)
        assert c.size == h["size"]
    assert httpx.get(live.url + "/v1/ui/summary?x=1").status_code == 400


def _record(live: Live, body: Any, token: str | None = None) -> httpx.Response:
    return httpx.post(
        live.url + "/v1/scim/exports",
        json=body,
        headers={"Authorization": f"Bearer {token or live.tokens['aud']}"},
    )


def test_export_record_is_an_access_event(live: Live) -> None:
    r = _record(live, {"sink": "console-csv", "events": 3, "bodies": 2, "erased": 1})
    assert r.status_code == 201, r.text
    idx = r.json()["access"]["index"]
    with ScimAuditClient(live.url, live.tokens["aud"], live.vkey) as c:
        found = [e for e in c.search_all(rid=None, action="tlog.access.export")]
    mine = [e for e in found if e.index == idx]
    assert len(mine) == 1
    ev = mine[0].event
    assert ev is not None and ev["rt"] == "tlog.access"
    assert ev["x"] == {"what": "export", "events": 3, "bodies": 2, "erased": 1}
    assert ev["actor"]["name"] == "auditor"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"sink": "Bad Sink"},
        {"sink": "x", "events": -1},
        {"sink": "x", "events": 1.5},
        {"sink": "x", "other": 1},
        [],
        {"sink": "x" * 40},
    ],
)
def test_export_record_rejects_malformed_bodies(live: Live, body: Any) -> None:
    assert _record(live, body).status_code == 400


def test_export_record_needs_an_auditor(live: Live) -> None:
    assert _record(live, {"sink": "x"}, live.tokens["sub"]).status_code == 403
    assert httpx.post(live.url + "/v1/scim/exports", json={"sink": "x"}).status_code == 401


# --- evidence bundles -----------------------------------------------------------------------


def _bundle(live: Live) -> dict[str, Any]:
    """What the console exports, built here from the search API."""
    with ScimAuditClient(live.url, live.tokens["aud"], live.vkey) as c:
        res = list(c.search_all())
        tn = c.tenant_ref()
    events = []
    for e in res:
        d = httpx.get(
            f"{live.url}/v1/proof/inclusion", params={"index": e.index, "tree_size": e.tree_size}
        ).json()
        proof = TlogProof(
            e.index, tuple(base64.b64decode(h) for h in d["inclusion_proof"]), d["checkpoint"]
        )
        item: dict[str, Any] = {
            "index": e.index,
            "eid": "x",
            "leaf": base64.b64encode(e.leaf.encode()).decode(),
            "leaf_hash": base64.b64encode(e.leaf_hash).decode(),
            "erased": e.erased,
            "tlog_proof": proof.format(),
        }
        if e.event is not None and e.nonce is not None:
            item["event"] = json.loads(event_to_json(e.event))
            item["nonce"] = base64.b64encode(e.nonce).decode()
            if e.effect is not None and e.effect_attested:
                item["effect"] = e.effect
        events.append(item)
    return {
        "format": FORMAT,
        "origin": live.signer.origin,
        "vkey": live.vkey,
        "policy": None,
        "tenant": TENANT,
        "tn": base64.b64encode(tn).decode(),
        "exported": 0,
        "access": {},
        "events": events,
    }


def test_evidence_verifies_and_every_alteration_fails(live: Live, tmp_path: Path) -> None:
    doc = _bundle(live)
    v = Ed25519Verifier.from_vkey(live.vkey)
    rep = verify_evidence(json.dumps(doc), v)
    assert rep.events == len(doc["events"]) >= 8 and rep.tenant == TENANT

    def broken(fn: Any) -> dict[str, Any]:
        d = json.loads(json.dumps(doc))
        fn(d)
        return d

    body = next(i for i, e in enumerate(doc["events"]) if "event" in e)
    eff = next(i for i, e in enumerate(doc["events"]) if "effect" in e)
    cases = [
        lambda d: d["events"][eff]["effect"].update(basis="unknown"),  # not what e commits to
        lambda d: d["events"][body].update(effect={"acts": []}),
        # the stored actor is a pseudonym ({kind, pid, sd}): another pid is another actor
        lambda d: d["events"][body]["event"]["actor"].update(
            pid=base64.b64encode(bytes(16)).decode()
        ),
        lambda d: d["events"][body].update(nonce=base64.b64encode(bytes(32)).decode()),
        lambda d: d["events"][0].update(leaf_hash=base64.b64encode(bytes(32)).decode()),
        lambda d: d["events"][1].update(index=d["events"][1]["index"] + 1),
        lambda d: d.update(tn=base64.b64encode(bytes(16)).decode()),
        lambda d: d["events"][body]["event"].update(tenant="globex"),
        lambda d: d.update(origin="other.example/log"),
    ]
    for case in cases:
        with pytest.raises(VerificationError):
            verify_evidence(json.dumps(broken(case)), v)
    for case in [
        lambda d: d.update(format="x"),
        lambda d: d["events"][0].update(extra=1),
        lambda d: d["events"][0].update(tlog_proof="junk"),
    ]:
        with pytest.raises(FormatError):
            verify_evidence(json.dumps(broken(case)), v)
    with pytest.raises(VerificationError):
        other = Ed25519Signer(live.signer.origin, bytes(32)).verifier()  # same name, other key
        verify_evidence(json.dumps(doc), other)


def test_verify_evidence_command(live: Live, tmp_path: Path) -> None:
    from client.tools.cli import main

    doc = _bundle(live)
    f = tmp_path / "evidence.json"
    f.write_text(json.dumps(doc))
    assert main(["scim", "verify-evidence", str(f), "--vkey", live.vkey]) == 0
    assert (
        main(["scim", "verify-evidence", str(f), "--vkey", live.vkey, "--tenant-ref", doc["tn"]])
        == 0
    )
    assert (
        main(
            [
                "scim",
                "verify-evidence",
                str(f),
                "--vkey",
                live.vkey,
                "--tenant-ref",
                base64.b64encode(bytes(16)).decode(),
            ]
        )
        == 2
    )
    assert main(["scim", "verify-evidence", str(tmp_path / "missing"), "--vkey", live.vkey]) == 1
    assert main(["scim", "verify-evidence", str(f)]) == 1  # no key: nothing trusted
    doc["events"][0]["leaf_hash"] = base64.b64encode(bytes(32)).decode()
    f.write_text(json.dumps(doc))
    assert main(["scim", "verify-evidence", str(f), "--vkey", live.vkey]) == 2
