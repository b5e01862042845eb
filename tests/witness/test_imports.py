"""The witness, the policy and the witness client live in client/: they must not pull in the
log server or its web stack (an external verifier or witness uses client/ alone)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("tlog", "starlette", "uvicorn", "lmdb")
MODULES = [
    "client.formats.policy",
    "client.net.witness_client",
    "client.witness",
    "client.witness.cli",
    "client.witness.config",
    "client.witness.core",
    "client.witness.monitor",
    "client.witness.asgi",
    "client.witness.loglist",
    "client.witness.provision",
    "client.witness.server",
    "client.witness.store",
]


def test_no_forbidden_imports_at_runtime() -> None:
    code = (
        "import sys\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_no_forbidden_imports_in_source() -> None:
    files = [ROOT / "client" / "formats" / "policy.py"]
    files += [ROOT / "client" / "net" / "witness_client.py"]
    files += sorted((ROOT / "client" / "witness").glob("*.py"))
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{f.name} imports {n}"
