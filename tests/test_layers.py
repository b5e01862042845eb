"""The layers of ``client/``, and that ``client/`` stands alone.

Importing any of ``client/`` pulls in no server code or server dependency, and each of its
packages imports only the packages of the layers below it (the layers are listed in
``client/__init__.py``).

An external verifier must be able to use ``client/`` with the standard library and
``cryptography`` only. The check runs in a fresh interpreter, so that whatever this test
process has already imported cannot hide a violation, and it walks the whole package, so
subpackages added later (with or without an ``__init__.py``) are covered without editing
this test.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

FORBIDDEN = ("tlog", "starlette", "uvicorn", "lmdb", "psycopg", "psycopg_pool")

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
        "client.formats.merkle",
        "client.formats.note",
        "client.formats.checkpoint",
        "client.formats.cosignature",
        "client.formats.tiles",
        "client.formats.proof_bundle",
    }
    assert expected <= set(report["modules"])
    assert report["leaked"] == [], f"client/ imported {report['leaked']}"


def test_probe_would_notice_a_leak() -> None:
    # The same probe must report a forbidden module when one is imported.
    code = "import json as tlog_marker, sys; sys.modules['tlog'] = tlog_marker\n" + PROBE
    assert _probe(code)["leaked"] == ["tlog"]


# The layers of client/ (client/__init__.py): a package may import itself and the packages
# of lower layers only. formats is the pure core; the programs (layer 4) never import each
# other, so the witness, the adapters and the tools can each be read and shipped alone.
LAYERS = {
    "formats": 1,
    "scim": 2,
    "net": 3,
    "runtime": 3,
    "witness": 4,
    "adapters": 4,
    "tools": 4,
}


def _client_imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import of a ``client.*`` module in ``path``, with its line number."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module == "client":
                found += [(node.lineno, f"client.{a.name}") for a in node.names]
            elif node.module:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.partition(".")[0] == "client"]


def _layer_violations(root: Path) -> list[str]:
    bad = []
    for path in sorted((root / "client").rglob("*.py")):
        parts = path.relative_to(root).parts
        if len(parts) < 3:  # client/__init__.py: documentation only
            assert path.name == "__init__.py", f"{path}: module outside the layer packages"
            continue
        own = parts[1]
        assert own in LAYERS, f"{path}: package client.{own} has no layer"
        for line, name in _client_imports(path):
            target = name.split(".")[1] if "." in name else ""
            ok = target == own or LAYERS.get(target, 99) < LAYERS[own]
            if not ok:
                bad.append(f"{path.relative_to(root)}:{line}: client.{own} imports {name}")
    return bad


def test_client_packages_import_only_lower_layers() -> None:
    assert _layer_violations(ROOT) == []


def test_layer_check_would_notice_an_upward_import(tmp_path: Path) -> None:
    # The formats layer importing a network client must be reported, as must a program
    # importing another program.
    (tmp_path / "client" / "formats").mkdir(parents=True)
    (tmp_path / "client" / "witness").mkdir()
    (tmp_path / "client" / "formats" / "note.py").write_text("from client.net import logclient\n")
    (tmp_path / "client" / "witness" / "core.py").write_text("import client.tools.cli\n")
    assert _layer_violations(tmp_path) == [
        "client/formats/note.py:1: client.formats imports client.net",
        "client/witness/core.py:1: client.witness imports client.tools.cli",
    ]


# The top-level packages: who may import whom. The shipped code (tlog, client) imports no
# test or bench code; benches import no tests (what both need is in harness/, which imports
# neither); tests import no benches.
TOP_FORBIDDEN = {
    "client": {"tlog", "tests", "bench", "harness"},
    "tlog": {"tests", "bench", "harness"},
    "harness": {"tlog", "tests", "bench"},
    "bench": {"tests"},
    "tests": {"bench"},
}


def _top_imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in ``path`` (relative ones stay inside their package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _top_violations(root: Path) -> list[str]:
    bad = []
    for top, forbidden in TOP_FORBIDDEN.items():
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, name in _top_imports(path):
                if name.partition(".")[0] in forbidden:
                    bad.append(f"{rel}:{line}: {top} imports {name}")
    return bad


def test_top_level_packages_import_only_what_they_may() -> None:
    assert _top_violations(ROOT) == []


def test_top_level_check_would_notice_a_bench_importing_tests(tmp_path: Path) -> None:
    for top in TOP_FORBIDDEN:
        (tmp_path / top).mkdir()
    (tmp_path / "bench" / "b.py").write_text("from tests.s3support import start_seaweedfs\n")
    (tmp_path / "harness" / "h.py").write_text("import tlog.log\n")
    assert _top_violations(tmp_path) == [
        "harness/h.py:1: harness imports tlog.log",
        "bench/b.py:1: bench imports tests.s3support",
    ]


# docs/design.md's "Modules" table names every module of tlog/ and client/ with its job (a
# package's __init__.py documents the package and needs no row). A row names its files in
# backquotes: a path, then bare names in the same directory; a path ending in "/" (tlog/ui/)
# stands for the whole package.
def _modules_unlisted(root: Path) -> list[str]:
    text = (root / "docs" / "design.md").read_text()
    table = text.split("\n## Modules\n", 1)[1].split("\n#", 1)[0]
    files: set[str] = set()
    packages: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        folder = ""
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if name.endswith("/"):
                packages.add(name)
            elif "/" in name:
                folder = name.rsplit("/", 1)[0]
                files.add(name)
            else:
                files.add(f"{folder}/{name}")
    unlisted = []
    for top in ("tlog", "client"):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if path.name == "__init__.py" and not any(rel.startswith(p) for p in packages):
                continue
            if rel not in files and not any(rel.startswith(p) for p in packages):
                unlisted.append(rel)
    return unlisted


def test_design_lists_every_module() -> None:
    assert _modules_unlisted(ROOT) == []


def test_module_list_check_would_notice_a_new_module(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "design.md").write_text(
        "# Design\n\n## Modules\n\n| module | job |\n| --- | --- |\n"
        "| `tlog/log.py`, `tree.py` | the log |\n| `tlog/ui/` | the console |\n\n## Next\n"
    )
    for name in ("tlog/__init__.py", "tlog/log.py", "tlog/tree.py", "tlog/new.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "tlog" / "ui").mkdir()
    (tmp_path / "tlog" / "ui" / "__init__.py").write_text("")
    (tmp_path / "client").mkdir()
    assert _modules_unlisted(tmp_path) == ["tlog/new.py"]


# A test module imports its helpers from helper modules (tests/support.py, a package's
# helpers or conftest), never from another test module: a test module is not a library, and
# importing one runs (and, for pytest, collects) its tests' module code a second time.
def _test_module_imports(root: Path) -> list[str]:
    bad = []
    for path in sorted((root / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            for name in names:
                if name.rpartition(".")[2].startswith("test_"):
                    rel = path.relative_to(root).as_posix()
                    bad.append(f"{rel}:{node.lineno}: imports {name}")
    return bad


def test_no_test_module_imports_another() -> None:
    assert _test_module_imports(ROOT) == []


def test_test_import_check_would_notice_one(tmp_path: Path) -> None:
    (tmp_path / "tests" / "server").mkdir(parents=True)
    (tmp_path / "tests" / "server" / "test_a.py").write_text(
        "from .test_b import helper\nfrom tests.server import test_c\nimport tests.support\n"
    )
    assert _test_module_imports(tmp_path) == [
        "tests/server/test_a.py:1: imports test_b",
        "tests/server/test_a.py:2: imports test_c",
    ]


# The shipped code, the harness and the benchmarks use no private name of another module:
# neither imported (``from m import _x``) nor reached through an imported module (``m._x``).
# (Private attributes of objects cannot be told apart statically; reviews catch those. The
# standard library's own, such as sys._current_frames, are its business.)
OURS = ("tlog", "client", "harness", "bench")


def _private_uses(root: Path) -> list[str]:
    bad = []
    for top in OURS:
        for path in sorted((root / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            rel = path.relative_to(root).as_posix()
            modules: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules |= {
                        (a.asname or a.name).partition(".")[0]
                        for a in node.names
                        if a.name.partition(".")[0] in OURS
                    }
                elif (
                    isinstance(node, ast.ImportFrom)
                    and (node.module or "").partition(".")[0] in OURS
                ):
                    for a in node.names:
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            bad.append(f"{rel}:{node.lineno}: imports {node.module}.{a.name}")
                        modules.add(a.asname or a.name)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in modules
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                ):
                    bad.append(f"{rel}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return bad


def test_no_private_names_across_modules() -> None:
    assert _private_uses(ROOT) == []


def test_private_name_check_would_notice_one(tmp_path: Path) -> None:
    for top in ("tlog", "client", "harness", "bench"):
        (tmp_path / top).mkdir()
    (tmp_path / "tlog" / "a.py").write_text(
        "from tlog.b import _secret, public\nimport tlog.c as c\nc._hidden()\nc.__name__\n"
    )
    assert _private_uses(tmp_path) == [
        "tlog/a.py:1: imports tlog.b._secret",
        "tlog/a.py:3: uses c._hidden",
    ]
