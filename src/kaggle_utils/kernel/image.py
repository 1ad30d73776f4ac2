"""The Kaggle image: what it already provides (``configs/kaggle_image.txt``) and the dependency closure of
what the bundle must add, read from installed package metadata (plus :data:`UNDECLARED` imports).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.kernel.layout import IMAGE_LIST, canonical

KAGGLE_PYTHON = "3.11"
KAGGLE_PLATFORM = "manylinux2014_x86_64"


# imported by a package without being declared in its metadata (requirements.txt notes the same)
UNDECLARED = {"pretrainedmodels": ["six"]}
VENV_OWN = {"pip"}  # a fresh venv brings its own pip; its setuptools is removed in favour of the image's
# environment markers of the Kaggle image: requirements are evaluated for it, not for this machine
KAGGLE_MARKERS = {"python_version": KAGGLE_PYTHON, "python_full_version": f"{KAGGLE_PYTHON}.0",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def read_image_list(path: str | os.PathLike = IMAGE_LIST) -> list[str]:
    """Distributions assumed present on the Kaggle image: one a line, ``#`` comments."""
    names = [line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return sorted({canonical(n) for n in names if n})


def installed() -> dict[str, md.Distribution]:
    """This environment's distributions by canonical name (first on sys.path wins, as for imports)."""
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)
    return found


def _requirements(dist: md.Distribution, extras: Iterable[str]) -> list[Any]:
    """``Requires-Dist`` entries that apply on the Kaggle image for the given extras."""
    from packaging.requirements import Requirement

    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**KAGGLE_MARKERS, "extra": e}) for e in {"", *extras}):
            out.append(req)
    return out


def closure(roots: Iterable[str], dists: dict[str, md.Distribution] | None = None,
            stop: Iterable[str] = ()) -> tuple[dict[str, str], list[str]]:
    """Requirement closure of ``roots`` over installed metadata: ({name: needed-by}, [names not installed]).

    Names in ``stop`` are recorded but not descended into (their dependencies are the image's business).
    """
    from packaging.requirements import Requirement

    dists = installed() if dists is None else dists
    stop = {canonical(s) for s in stop}
    found: dict[str, str] = {}
    missing: set[str] = set()
    todo = [(Requirement(r), "") for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, parent = todo.pop()
        name = canonical(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        found.setdefault(name, parent)
        dist = dists.get(name)
        if dist is None:
            missing.add(name)
            continue
        if name in stop and parent:
            continue
        todo += [(r, name) for r in _requirements(dist, req.extras)]
        todo += [(Requirement(n), name) for n in UNDECLARED.get(name, [])]
    return found, sorted(missing)


def image_distributions(image_names: Sequence[str], dists: dict[str, md.Distribution] | None = None
                        ) -> tuple[dict[str, str], list[str]]:
    """The listed image distributions and everything they depend on (the image must hold those too)."""
    return closure(image_names, dists)
