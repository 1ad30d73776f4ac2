"""The package's shape: imports point one way, no import circle, stages light where they promise to be,
modules small, nothing at the top but the floor and the stages, no module that only re-exports another."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "kaggle_utils"
ROOT = "kaggle_utils"
# Lowest first: a module may import its own subpackage and anything listed before it, nothing after.
LAYERS = [
    {"kaggle_utils", "kaggle_utils._exports", "kaggle_utils.io", "kaggle_utils.metrics"},
    {"kaggle_utils.models"},
    {"kaggle_utils.data"},
    {"kaggle_utils.training"},
    {"kaggle_utils.inference"},
    {"kaggle_utils.report"},
    {"kaggle_utils.kernel"},
    {"kaggle_utils.run"},
]
MAX_LINES = 500
SIZE_NOTE = "Size:"  # a longer module says why in its docstring, on a line starting with this


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
FLOOR = {"__init__.py", "_exports.py", "io.py", "metrics.py"}  # the package top besides the stage packages
EXPORT_TABLES = {"_EXPORTS", "__all__", "__getattr__", "__dir__"}  # names that re-export rather than define
# The flat module paths removed with the move into stage packages: nothing may bring them back.
OLD_PATHS = ["assemble", "augment", "cache", "ensemble", "folds", "infer", "kernel_plan", "kernel_verify", "losses",
             "preprocess", "run_plan", "shift", "sources", "train", "weights"]


def _lazy_table(tree: ast.Module) -> set[str]:
    """Modules named in an ``_EXPORTS`` table (``**dict.fromkeys([...], "module")`` entries)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_EXPORTS":
            for value in node.value.values:
                if isinstance(value, ast.Call) and len(value.args) == 2:
                    found.add(value.args[1].value)
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every kaggle_utils module ``name`` imports: module level, inside functions and lazy export tables."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    deps = _lazy_table(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith(ROOT)}
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            if not mod.startswith(ROOT):
                continue
            for alias in node.names:  # `from pkg import submodule` is an edge to the submodule, not to pkg
                deps.add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in MODULES else mod)
    return {d for d in deps if d in MODULES and d != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer or (i and any(name.startswith(m + ".") for m in layer)):
            return i
    raise AssertionError(f"{name} is in no layer of {LAYERS}")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_sees_function_level_and_lazy_imports():
    assert "kaggle_utils.training.checkpoint" in GRAPH["kaggle_utils.inference.predict"]  # inside load_run
    assert "kaggle_utils.data.dataset" in GRAPH["kaggle_utils.data"]  # the package's lazy table
    assert "kaggle_utils.models.backbones" in GRAPH["kaggle_utils.models"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert _cycle(GRAPH) is None, f"import circle: {' -> '.join(_cycle(GRAPH))}"


def test_imports_point_down_the_layers():
    up = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps if _layer(b) > _layer(a)]
    assert not up, "imports that point up (or sideways) the layers:\n" + "\n".join(up)


def test_modules_stay_small_or_say_why():
    long = []
    for name, path in MODULES.items():
        n = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n > MAX_LINES and not any(line.startswith(SIZE_NOTE) for line in doc.splitlines()):
            long.append(f"{name}: {n} lines")
    assert not long, long


def test_light_stages_import_no_torch():
    """The preprocess notebook, the blend, the chain and the metrics run where torch is slow or absent."""
    light = ["kaggle_utils.data", "kaggle_utils.data.sources", "kaggle_utils.data.preprocess", "kaggle_utils.data.cache",
             "kaggle_utils.data.folds", "kaggle_utils.data.assemble", "kaggle_utils.inference.ensemble",
             "kaggle_utils.inference.shift", "kaggle_utils.inference.pseudo", "kaggle_utils.report.html",
             "kaggle_utils.run", "kaggle_utils.run.chain", "kaggle_utils.run.config", "kaggle_utils.metrics",
             "kaggle_utils.io"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in light)
            + "from kaggle_utils.data import load_aptos, PreprocessConfig, make_folds\n"
            + "print(sorted(m for m in ('torch', 'albumentations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", ["data", "training", "inference", "kernel", "run", "report"])
def test_every_package_export_resolves_to_its_module(package):
    pkg = importlib.import_module(f"{ROOT}.{package}")
    for name, module in pkg._EXPORTS.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name), name
        assert not (PKG / package / f"{name}.py").exists(), f"{name} would shadow the submodule"


def test_package_exports_are_the_defining_objects():
    """The package-level names the docs and notebooks import: the same objects as in their defining modules."""
    from kaggle_utils.data import FundusDataset
    from kaggle_utils.data.dataset import FundusDataset as new_dataset
    from kaggle_utils.kernel import BundleError, BundleSpec, build
    from kaggle_utils.kernel.bundle import BundleSpec as new_spec
    from kaggle_utils.kernel.bundle import build as new_build
    from kaggle_utils.kernel.layout import BundleError as new_error
    from kaggle_utils.report import write_report
    from kaggle_utils.report.html import write_report as new_report
    from kaggle_utils.run import load_config, run_chain
    from kaggle_utils.run.chain import run_chain as new_chain
    from kaggle_utils.run.config import load_config as new_load

    assert (FundusDataset, BundleSpec, build, BundleError, write_report, run_chain, load_config) == (
        new_dataset, new_spec, new_build, new_error, new_report, new_chain, new_load)


def test_the_package_top_holds_only_the_floor_and_the_stages():
    stages = {next(iter(layer)).split(".")[1] for layer in LAYERS[1:]}
    top = {p.name for p in PKG.iterdir() if p.name != "__pycache__"}
    assert top == FLOOR | stages, f"unexpected at the package top: {sorted(top - FLOOR - stages)}"
    assert all(importlib.util.find_spec(f"{ROOT}.{old}") is None for old in OLD_PATHS)


def _own_names(tree: ast.Module) -> list[str]:
    """What a module defines itself: functions, classes and constants (not export tables, not another
    module's objects bound to a new name)."""
    own = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None \
                and not isinstance(node.value, ast.Name | ast.Attribute):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own += [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name) and n.id not in EXPORT_TABLES]
    return own


def test_own_names_tell_a_module_from_a_re_export():
    alias = 'from m import moved\n_EXPORTS: dict = {"a": "m.a"}\n__getattr__, __dir__ = moved("x", _EXPORTS, {})\n'
    assert _own_names(ast.parse(alias)) == []
    assert _own_names(ast.parse("from m import f\nX = 3\nY = m.Z\n")) == ["X"]
    assert _own_names(ast.parse("def f(): pass\nclass C: pass\n")) == ["f", "C"]


def test_no_module_only_re_exports_another():
    """Every module but a package's ``__init__`` defines something of its own: no alias modules, no shims."""
    hollow = [name for name, path in MODULES.items()
              if path.name != "__init__.py" and not _own_names(ast.parse(path.read_text()))]
    assert not hollow, f"modules that only re-export: {hollow}"


def test_csv_files_are_read_through_io_read_csv():
    """``io.read_csv`` keeps ids as text (``NA``, ``null``, ``00123``); pandas' own reader would not."""
    direct = [f"{name}:{node.lineno}" for name, path in MODULES.items() if name != f"{ROOT}.io"
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Attribute) and node.attr in ("read_csv", "read_table")
              and isinstance(node.value, ast.Name) and node.value.id in ("pd", "pandas")]
    assert not direct, f"pandas.read_csv called directly (use kaggle_utils.io.read_csv): {direct}"


def _readme_layout() -> dict[str, str]:
    """The documented package map (docs/architecture.md): subpackage -> its description (continuation lines
    joined)."""
    text = (PKG.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text[text.index("src/kaggle_utils/ the package"):text.index("\nconfigs/ ")]
    groups: dict[str, str] = {}
    current = None
    for line in block.splitlines()[1:]:
        head = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else ""
        if head.endswith("/"):
            current = head.rstrip("/")
            groups[current] = line
        elif head:
            current = None
            groups.setdefault("", "")
            groups[""] += line
        elif current:
            groups[current] += line
    return groups


def test_readme_layout_matches_the_tree():
    layout = _readme_layout()
    packages = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))
    assert sorted(k for k in layout if k) == packages
    # listed top-down: the reverse of LAYERS (imports point down the list)
    order = [k for k in layout if k]
    assert order == [next(iter(layer)).split(".")[1] for layer in reversed(LAYERS[1:])]
    for package in packages:
        words = set(re.findall(r"[a-z_]+", layout[package]))
        missing = [p.stem for p in (PKG / package).glob("*.py") if not p.stem.startswith("__") and p.stem not in words]
        assert not missing, f"docs/architecture.md layout of {package}/ does not name {missing}"
    top = [p.name for p in PKG.glob("*.py") if not p.stem.startswith("_")]
    assert all(name in layout[""] for name in top), top
