"""The kernels' notebooks as the bundles write them (:func:`render_notebook`): the jupytext source with the
bundle's parameters, fixed ids and no outputs, and the one offline-install cell both kernels share.

The install cell runs before kaggle_utils is installed, so it cannot import the package: it is a template
(:func:`install_cell`) the builder writes into the submission kernel (``notebooks/kernel.py``) and the
training kernel (``notebooks/train_kernel.py``) in place of the cell tagged :data:`TAG`. The repository's
notebooks carry it rendered with their placeholder values (tests/test_kernel_train.py keeps them equal), so
they read and lint as they run; an edit belongs here, then in both notebooks (``jupytext --sync``).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.kernel.layout import FALLBACK, INPUT_ENV, NOTEBOOK, BundleError

TAG = "offline-install"  # the notebook cell the builder replaces with :func:`install_cell`

_TEMPLATE = '''\
# Offline install (the same cell in both kernels: kaggle_utils/kernel/notebook.py; build_kernel.py
# writes DATASET and PACKAGES). The kernel runs with the internet off, so kaggle_utils and the packages the
# Kaggle image lacks come from the attached dataset's wheels/: `pip install --no-index --find-links
# /kaggle/input/<DATASET>/wheels <PACKAGES>`. Should pip's resolver trip over the image's own metadata (a
# package an image package declares but lacks), it retries without resolving (PACKAGES is the whole bundle)
# and says so; a failed install stops the notebook here.
import importlib
import os
import subprocess
import sys

DATASET = {dataset}
PACKAGES = {packages}
KAGGLE_INPUT = os.environ.get("{input_env}", "/kaggle/input")  # only build_kernel.py --verify sets it
bundle = f"{{KAGGLE_INPUT}}/{{DATASET}}"
pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", f"{{bundle}}/wheels", *PACKAGES]
print(" ".join(pip))
done = subprocess.run(pip, capture_output=True, text=True)
if done.returncode:
    print(f"{fallback}: pip could not resolve dependencies, retrying with --no-deps:\\n{{done.stderr}}")
    done = subprocess.run([*pip, "--no-deps"], capture_output=True, text=True)
print(done.stdout[-2000:])
if done.returncode:
    raise RuntimeError(f"offline install failed (pip exit {{done.returncode}}):\\n{{done.stderr[-3000:]}}")
importlib.invalidate_caches()'''


def install_cell(dataset: str, packages: Sequence[str]) -> str:
    """The install cell for the bundle dataset ``dataset`` (its slug) and the pip names in ``packages``."""
    return _TEMPLATE.format(dataset=json.dumps(dataset), packages=json.dumps(list(packages)),
                            input_env=INPUT_ENV, fallback=FALLBACK)


def _set_assignments(source: str, values: dict[str, Any], where: str) -> str:
    """Replace the value of ``name = ...`` lines of a cell (each must be there exactly once), keeping a
    trailing comment: it documents the parameter in the bundle's notebook too."""
    for name, value in values.items():
        pattern = re.compile(rf"^{re.escape(name)}\s*=.*$", re.MULTILINE)
        if len(pattern.findall(source)) != 1:
            raise BundleError(f"{NOTEBOOK.name}: the {where} cell needs exactly one `{name} = ...` line")
        literal = json.dumps(value) if isinstance(value, str | list) else repr(value)
        source = pattern.sub(lambda m, n=name, v=literal: f"{n} = {v}{_comment(m.group(0))}", source)
    return source


def _comment(line: str) -> str:
    """The trailing ``  # ...`` of a one-line assignment (after its value, as Python parses it), or ''."""
    try:
        node = ast.parse(line).body[0]
    except SyntaxError:
        return ""
    rest = line.encode()[node.end_col_offset or 0:].decode()  # offsets count UTF-8 bytes
    return rest if rest.strip().startswith("#") else ""


def render_notebook(install: dict[str, Any], params: dict[str, Any], source: Path = NOTEBOOK) -> str:
    """The kernel notebook (from the jupytext source) with this bundle's parameters and install cell.

    The first code cell is the parameters cell (papermill injects its values right after it); the cell tagged
    ``offline-install`` becomes :func:`install_cell` of ``install`` (``DATASET``, ``PACKAGES``), the same text
    in both kernels, and nothing before it may import kaggle_utils.
    Fixed cell ids and metadata, no outputs: the same bundle always gives the same bytes.
    """
    import jupytext

    nb = jupytext.read(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or "parameters" not in code[0].metadata.get("tags", []):
        raise BundleError(f"{source}: the first code cell must be the one tagged 'parameters'")
    _check_install_cell(source, code)
    cells = []
    for i, cell in enumerate(nb.cells):
        text, tags = cell.source, list(cell.metadata.get("tags", []))
        if TAG in tags:
            text = install_cell(install["DATASET"], install["PACKAGES"])
        if "parameters" in tags:
            text = _set_assignments(text, params, "parameters")
        out: dict[str, Any] = {"cell_type": cell.cell_type, "id": f"cell-{i:02d}",
                               "metadata": {"tags": tags} if tags else {}, "source": text}
        if cell.cell_type == "code":
            out.update(execution_count=None, outputs=[])
        cells.append(out)
    doc = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
           "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                        "language_info": {"name": "python"}}}
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _check_install_cell(source: Path, code: Sequence[Any]) -> None:
    """One cell tagged ``offline-install``, and no code before it imports kaggle_utils (not installed yet)."""
    tagged = [i for i, c in enumerate(code) if TAG in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise BundleError(f"{source}: needs exactly one code cell tagged {TAG!r} (the offline install), "
                          f"found {len(tagged)}")
    early = re.compile(r"^\s*(?:from|import)\s+kaggle_utils\b", re.MULTILINE)
    if any(early.search(c.source) for c in code[:tagged[0]]):
        raise BundleError(f"{source}: a cell before the {TAG!r} cell imports kaggle_utils, which it installs")
