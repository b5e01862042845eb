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
    "client.policy",
    "client.witness_client",
    "client.witness",
    "client.witness.cli",
    "client.witness.config",
    "client.witness.core",
    "client.witness.monitor",
    "client.witness.asgi",
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


# The one exception: the HTTP server module loads uvicorn inside the functions that build a
# server (the witness runs on it), never at import time; nothing may import the log server,
# Starlette or lmdb, at any level.
LAZY_ALLOWED = {"server.py": {"uvicorn"}}


def _imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def test_no_forbidden_imports_in_source() -> None:
    files = [ROOT / "client" / "policy.py", ROOT / "client" / "witness_client.py"]
    files += sorted((ROOT / "client" / "witness").glob("*.py"))
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        top_level = {id(n) for n in tree.body}
        lazy_ok = LAZY_ALLOWED.get(f.name, set()) if f.parent.name == "witness" else set()
        for node in ast.walk(tree):
            for n in _imports(node):
                top = n.split(".")[0]
                if top not in FORBIDDEN:
                    continue
                assert id(node) not in top_level and top in lazy_ok, f"{f.name} imports {n}"
