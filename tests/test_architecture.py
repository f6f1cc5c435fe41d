"""The house rules, checked on the code: the import contracts (import-linter, declared in
pyproject.toml), no module reaching into another's private names, small files in
agent_core, and docs/architecture.md's import graphs drawn from the real imports."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("automem_cli", "flows", "tasks", "agent_core", "environments")
#: everything that imports project code: the packages, the benchmarks, the tests, the docs' script
SOURCES = (*PACKAGES, "benchmarks", "tests", "docs")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 450


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "4 kept" in result.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("agent_core/records.py", "import prefect", "agent_core is not allowed to import prefect"),
    ("agent_core/review/bundle.py", "import agent_core.training.program",
     "agent_core.review is not allowed to import agent_core.training"),
    ("agent_core/models/base.py", "import agent_core.agent", "No cycles are allowed in agent_core."),
    ("environments/base.py", "import agent_core.records", "environments is not allowed to import agent_core"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    """The same contracts over a copy of the code with one forbidden import added fail, and
    say which rule it breaks."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # forbidden\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert contract in result.stdout and "BROKEN" in result.stdout


def _private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`from <project module> import _name` in one file (a module's own private names are
    its business; another module's are not)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in (*PACKAGES, "benchmarks"):
            found += [f"{path.relative_to(root)}:{node.lineno} from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found += [f"{path.relative_to(root)}:{node.lineno} from {'.' * node.level}{node.module or ''} "
                      f"import {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_name():
    found = [hit for folder in SOURCES for path in sorted((ROOT / folder).rglob("*.py"))
             for hit in _private_imports(path)]
    assert found == []


def test_the_private_name_check_sees_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from agent_core.commands import _secret\nfrom agent_core.commands import __all__\n"
                      "from .sibling import _hidden\n")
    assert [hit.split(" ", 1)[1] for hit in _private_imports(module, tmp_path)] == \
        ["from agent_core.commands import _secret", "from .sibling import _hidden"]


def test_no_file_in_agent_core_is_over_450_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "agent_core").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "docs" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_documented_import_graphs_are_the_codes():
    graph = _import_graph()
    assert graph.documented() == graph.graphs(), "run: python docs/import_graph.py --write"


def test_the_graph_is_reduced_and_would_show_a_new_arrow():
    reduce = _import_graph()._reduce
    assert reduce({("a", "b"), ("b", "c"), ("a", "c")}) == {("a", "b"), ("b", "c")}
    assert reduce({("a", "b"), ("b", "c"), ("c", "d")}) == {("a", "b"), ("b", "c"), ("c", "d")}
