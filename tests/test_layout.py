"""The package tree reads as the pipeline, and imports flow one way: from the command line down to the model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("scanner", "checks", "reports", "remediation")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("scanner", "scanner.errors", "scanner.model", "scanner.bundle"),
    ("scanner.config", "scanner.dns"),
    ("scanner.adapters", "scanner.store", "scanner.loopback"),
    ("scanner.collect", "scanner.aggregate", "checks"),
    ("remediation",),
    ("reports",),
    ("scanner.pipeline", "scanner.files_process"),
    ("scanner.service",),
    ("scanner.cli",),
)
"""Bottom first: a module may import its own layer and those below it, never one above."""


def _unit(module: str) -> str:
    """The layer entry a module belongs to: the longest name in LAYERS that is it or a package holding it."""
    names = [name for layer in LAYERS for name in layer if module == name or module.startswith(name + ".")]
    if not names:
        raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it in one")
    return max(names, key=len)


RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "bundled" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the project's packages, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name in MODULES]  # a name imported from a module is not one
    return found


def test_every_module_sits_in_a_layer() -> None:
    for module in MODULES:
        _unit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_down_the_pipeline(module: str) -> None:
    mine = RANK[_unit(module)]
    upward = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {name} ({_unit(name)} is above "
              f"{_unit(module)})" for line, name in _imports(MODULES[module]) if RANK[_unit(name)] > mine]
    assert not upward, "\n".join(upward)


def test_each_stage_package_says_what_it_owns_and_may_import() -> None:
    for package in ("scanner/dns", "scanner/store", "scanner/aggregate", "scanner/service", "scanner/loopback"):
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), f"{package}/__init__.py: say what it owns and what it may import"


def test_the_check_fails_on_an_upward_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from scanner.cli import main\nif TYPE_CHECKING:\n    from scanner.pipeline import run_scan\n",
                     encoding="utf-8")
    assert _imports(probe) == [(1, "scanner.cli")]  # the typing-only import is not one at run time
    assert RANK[_unit("scanner.cli")] > RANK[_unit("scanner.dns.spf")]
