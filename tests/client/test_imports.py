"""``client/`` stands alone: importing any of it pulls in no server code or server dependency.

An external verifier must be able to use ``client/`` with the standard library and
``cryptography`` only. The check runs in a fresh interpreter, so that whatever this test
process has already imported cannot hide a violation, and it walks the whole package, so
subpackages added later (with or without an ``__init__.py``) are covered without editing
this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

FORBIDDEN = ("tlog", "starlette", "uvicorn", "lmdb")

# Walks the files rather than pkgutil.walk_packages, which skips directories that have no
# __init__.py (namespace packages). __main__ modules are entry points, not importable API.
PROBE = """
import importlib, json, pathlib, sys

root, forbidden = pathlib.Path(sys.argv[1]), set(sys.argv[2:])
names = []
for path in sorted((root / "client").rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if not all(p.isidentifier() for p in parts) or parts[-1] == "__main__":
        continue
    names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
for name in names:
    importlib.import_module(name)
import client
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in forbidden)
print(json.dumps({"file": client.__file__, "modules": names, "leaked": leaked}))
"""


def _probe(code: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), *FORBIDDEN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_client_imports_no_server_modules() -> None:
    report = _probe(PROBE)
    assert os.path.dirname(report["file"]) == str(ROOT / "client")
    expected = {
        "client.merkle",
        "client.note",
        "client.checkpoint",
        "client.cosignature",
        "client.tiles",
        "client.proof_bundle",
    }
    assert expected <= set(report["modules"])
    assert report["leaked"] == [], f"client/ imported {report['leaked']}"


def test_probe_would_notice_a_leak() -> None:
    # The same probe must report a forbidden module when one is imported.
    code = "import json as tlog_marker, sys; sys.modules['tlog'] = tlog_marker\n" + PROBE
    assert _probe(code)["leaked"] == ["tlog"]
