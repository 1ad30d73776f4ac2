"""Kaggle submission bundle: an offline dataset (wheels, fold checkpoints, manifest) plus the inference+blend
kernel that installs from it, proven end to end in an emulated Kaggle image with the network off.

    python build_kernel.py RUN_DIR [RUN_DIR ...] --out DIR [--owner NAME] [--verify] [--plan]

``DIR/dataset``  (upload with ``kaggle datasets create -p DIR/dataset --dir-mode tar``)
    wheels/            kaggle_utils (built from this checkout) + every runtime dependency the Kaggle image lacks
    models/<run>/fold<k>/{best.pt,config.json,oof.csv}   (best.pt carries model config + preprocessing recipe)
    weights/           only with ``--weights NAME``: inference from fold checkpoints needs no ImageNet weights
    manifest.json      sha256 + size of every dataset and kernel file
    dataset-metadata.json
``DIR/kernel``   (push with ``kaggle kernels push -p DIR/kernel``): kernel.ipynb + kernel-metadata.json
``DIR/build_report.json``  sizes, what was bundled, what the Kaggle image is assumed to provide.

Why it is built this way:

* Code competitions run kernels with the internet off, so everything beyond the Kaggle image comes from an
  attached dataset via ``pip install --no-index --find-links``. What the image provides is an explicit,
  editable list (``configs/kaggle_image.txt``); the bundle is the dependency closure of kaggle_utils and the
  runs' model packages minus that list's closure, read from the installed metadata (plus imports a package
  makes without declaring them, :data:`UNDECLARED`).
* Same inputs, byte-identical files: our own wheel is rewritten with sorted entries and a fixed 1980 date,
  checkpoints are copied byte for byte, JSON is key-sorted and the notebook carries fixed ids and metadata,
  so the manifest's hashes identify a bundle.
* ``--verify`` does not install torch (5 GB): it emulates the image by exposing exactly the listed
  distributions of this project's environment to a fresh venv (symlinks + a .pth file), then runs the
  kernel notebook there with papermill under ``unshare -n`` (or, where namespaces are not allowed, a
  sitecustomize that refuses non-loopback connections) against a test set laid out like Kaggle mounts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from . import io

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_LIST = REPO_ROOT / "configs" / "kaggle_image.txt"
WHEEL_CACHE = REPO_ROOT / "wheels"
NOTEBOOK = REPO_ROOT / "notebooks" / "kernel.py"
COMPETITION = "aptos2019-blindness-detection"
KAGGLE_PYTHON = "3.11"
KAGGLE_PLATFORM = "manylinux2014_x86_64"
MODEL_FILES = ("best.pt", "config.json", "oof.csv")  # never last.pt: resume state is useless on Kaggle
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FALLBACK = "OFFLINE-INSTALL-FALLBACK"  # printed by the kernel's install cell when it had to skip resolution
INPUT_ENV = "KAGGLE_UTILS_INPUT"  # read by the kernel's install cell; only --verify sets it
REPORT = "build_report.json"
VERIFY_REPORT = "verify_report.json"
PARTS = ("dataset", "kernel", "verify", REPORT, VERIFY_REPORT)  # everything a build or verify writes in --out
EMULATION = (
    "--verify emulates the Kaggle image without installing it: a fresh venv (python -m venv, the same CPython "
    "3.11 as this project's .venv) sees exactly the distributions of configs/kaggle_image.txt and their "
    "dependencies, symlinked from this project's .venv into an 'image' folder added by a .pth file (so versions "
    "are this project's, not Kaggle's, and torch runs on this machine's CPU). pip config and PIP_* variables are "
    "ignored, HOME/Jupyter/IPython dirs are private, and the kernel notebook runs with papermill inside that "
    "venv with the network cut (unshare -n: a network namespace with only loopback; else a sitecustomize that "
    "refuses non-loopback connections). The notebook's own first cell installs the bundle's wheels with "
    "pip --no-index, from <tmp>/kaggle/input/<dataset> laid out as Kaggle mounts it.")
MANIFEST = "manifest.json"
OWN = "kaggle-utils"  # canonical name; pip is told `kaggle_utils`
# imported by a package without being declared in its metadata (requirements.txt notes the same)
UNDECLARED = {"pretrainedmodels": ["six"]}
VENV_OWN = {"pip"}  # a fresh venv brings its own pip; its setuptools is removed in favour of the image's
# environment markers of the Kaggle image: requirements are evaluated for it, not for this machine
KAGGLE_MARKERS = {"python_version": KAGGLE_PYTHON, "python_full_version": f"{KAGGLE_PYTHON}.0",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# kaggle-api (kaggle_api_extended.py, docs/datasets_metadata.md): accepted dataset licence names
KAGGLE_LICENSES = frozenset({
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO",
    "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0",
    "GPL-3.0"})
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class BundleError(RuntimeError):
    """The bundle cannot be built as asked; the message names the run, file or package and what to do."""


class VerifyError(RuntimeError):
    """A verify step failed; ``step`` names it and the message names the missing wheel, file or cell."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"[verify: {step}] {message}")
        self.step = step


def canonical(name: str) -> str:
    """PEP 503 name: ``Efficientnet_Lite.PyTorch`` and ``efficientnet-lite-pytorch`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def slugify(text: str) -> str:
    """Kaggle derives a kernel's URL slug from its title like this (python-slugify, lower case)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --------------------------------------------------------------------------------------- dependencies
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


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class RunInfo:
    """A run folder as the bundle sees it: its folds and the model package it needs."""

    name: str
    folder: Path
    folds: list[Path]
    model: str
    package: str  # distribution that provides the architecture


def _fold_number(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


def inspect_run(run_dir: str | os.PathLike) -> RunInfo:
    """Fold folders with every file the kernel needs, and the architecture's package (from the registry)."""
    folder = Path(run_dir)
    folds = sorted((p.parent for p in folder.glob("fold*/best.pt")), key=lambda p: _fold_number(p.name))
    if not folds:
        raise BundleError(f"{folder}: no fold*/best.pt; pass a run folder that training wrote "
                          f"(e.g. outputs/demo/runs/lite0)")
    models = set()
    for fold in folds:
        missing = [f for f in MODEL_FILES if not (fold / f).is_file()]
        if missing:
            raise BundleError(f"{fold}: missing {missing}; the kernel needs {list(MODEL_FILES)} per fold")
        models.add(io.read_json(fold / "config.json")["model"])
    if len(models) != 1:
        raise BundleError(f"{folder}: folds were trained with different models {sorted(models)}")
    model = models.pop()
    return RunInfo(folder.name, folder, folds, model, model_package(model))


def model_package(model: str) -> str:
    """The distribution that defines ``model``'s architecture (the kernel must rebuild it offline)."""
    from .models.registry import get_model_spec

    spec = get_model_spec(model)
    module = (spec.source or "").split(".")[0]
    owners = md.packages_distributions().get(module) if module else None
    if not owners:
        raise BundleError(f"model {model!r} comes from {spec.source or 'an unnamed source'!r}, which is no "
                          f"installed package: register it inside kaggle_utils so the kernel can rebuild it")
    return canonical(owners[0])


# ---------------------------------------------------------------------------------------------- wheels
def wheel_name(path: Path) -> tuple[str, str, set[str]]:
    """(canonical name, version, tags) of a wheel file name."""
    from packaging.utils import parse_wheel_filename

    name, version, _, tags = parse_wheel_filename(path.name)
    return canonical(name), str(version), {str(t) for t in tags}


def kaggle_compatible(tags: Iterable[str]) -> bool:
    """Installable on Kaggle's CPython 3.11, manylinux x86_64."""
    for tag in tags:
        interp, abi, plat = tag.split("-")
        if interp not in ("py3", "cp311") and not (interp.startswith("cp3") and abi == "abi3"):
            continue
        if plat == "any" or (plat.startswith("manylinux") and plat.endswith("x86_64")):
            return True
    return False


def normalize_wheel(src: Path, dest: Path) -> Path:
    """Rewrite a wheel reproducibly: sorted entries (dist-info last, RECORD very last), 1980 dates, 0644."""
    with zipfile.ZipFile(src) as zin:
        data = {i.filename: zin.read(i) for i in zin.infolist() if not i.is_dir()}

    def order(name: str) -> tuple[bool, bool, str]:
        return ".dist-info/" in name, name.endswith(".dist-info/RECORD"), name

    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in sorted(data, key=order):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zout.writestr(info, data[name], compresslevel=9)
    return io.write_bytes(dest, buf.getvalue())


def _pip(args: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise BundleError(f"{what} failed (pip exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    return proc


def build_own_wheel(dest_dir: Path) -> Path:
    """kaggle_utils from this checkout, built in a clean copy (no stale build/ files) and normalised."""
    with tempfile.TemporaryDirectory(prefix="kaggle_utils_wheel_") as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "out"
        tree.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt"):
            if (REPO_ROOT / name).is_file():
                shutil.copy2(REPO_ROOT / name, tree / name)
        shutil.copytree(REPO_ROOT / "src", tree / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
        _pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(tree)],
             "building the kaggle_utils wheel", env=env)
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise BundleError(f"pip wheel produced {[p.name for p in built]} instead of one kaggle_utils wheel")
        return normalize_wheel(built[0], dest_dir / built[0].name)


def cached_wheel(name: str, version: str, cache: Path = WHEEL_CACHE) -> Path | None:
    for path in sorted(cache.glob("*.whl")):
        wname, wversion, tags = wheel_name(path)
        if wname == canonical(name) and wversion == version and kaggle_compatible(tags):
            return path
    return None


def fetch_wheel(name: str, version: str, cache: Path = WHEEL_CACHE) -> Path:
    """A Kaggle-compatible wheel of ``name==version``: from the repo's wheels/ cache, else the package index
    (a binary for cp311 manylinux, else the sdist built here without isolation), then kept in the cache."""
    if found := cached_wheel(name, version, cache):
        return found
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{name}=={version}"
    with tempfile.TemporaryDirectory(prefix="kernel_fetch_") as tmp:
        binary = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
             KAGGLE_PYTHON, "--platform", KAGGLE_PLATFORM, "--implementation", "cp", "--abi",
             f"cp{KAGGLE_PYTHON.replace('.', '')}", "-d", tmp, spec], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if binary.returncode or not wheels:
            src = Path(tmp) / "sdist"
            _pip(["download", "-q", "--no-deps", "--no-binary=:all:", "-d", str(src), spec],
                 f"downloading {spec} (no wheel for cp{KAGGLE_PYTHON} {KAGGLE_PLATFORM} either)")
            sdists = sorted(src.iterdir())
            _pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, str(sdists[0])],
                 f"building a wheel of {spec} from its sdist", env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
            built = sorted(Path(tmp).glob("*.whl"))
            return normalize_wheel(built[0], cache / built[0].name)
        if not kaggle_compatible(wheel_name(wheels[0])[2]):
            raise BundleError(f"{wheels[0].name} does not install on CPython {KAGGLE_PYTHON} {KAGGLE_PLATFORM}")
        dest = cache / wheels[0].name
        io.write_bytes(dest, wheels[0].read_bytes())
        return dest


# ---------------------------------------------------------------------------------------------- bundle
@dataclass
class BundleSpec:
    """What to bundle and under which Kaggle names."""

    runs: list[Path]
    out: Path
    owner: str = "kaggleutils"
    dataset_slug: str = "kaggle-utils-aptos-models"
    dataset_title: str = "kaggle_utils APTOS 2019 models"
    kernel_slug: str = "kaggle-utils-aptos-inference"
    kernel_title: str | None = None  # default: derived from the slug (Kaggle links title and slug)
    competition: str = COMPETITION
    license: str = "CC0-1.0"
    weights: list[str] = field(default_factory=list)
    tta: str = "hflip"
    image_list: Path = IMAGE_LIST
    wheel_cache: Path = WHEEL_CACHE

    @property
    def dataset_id(self) -> str:
        return f"{self.owner}/{self.dataset_slug}"

    @property
    def kernel_id(self) -> str:
        return f"{self.owner}/{self.kernel_slug}"

    def title(self) -> str:
        return self.kernel_title or self.kernel_slug.replace("-", " ").capitalize()


def dataset_metadata(spec: BundleSpec, runs: Sequence[RunInfo]) -> dict[str, Any]:
    lines = [f"- `{r.name}`: {r.model}, {len(r.folds)} fold(s)" for r in runs]
    return {"title": spec.dataset_title, "id": spec.dataset_id, "licenses": [{"name": spec.license}],
            "description": "Offline bundle built by kaggle_utils `build_kernel.py`: wheels/ (pip install "
                           "--no-index --find-links), models/<run>/fold<k>/ checkpoints with their OOF "
                           "predictions, manifest.json (sha256 of every file).\n\n" + "\n".join(lines) + "\n"}


def kernel_metadata(spec: BundleSpec, code_file: str = "kernel.ipynb") -> dict[str, Any]:
    return {"id": spec.kernel_id, "title": spec.title(), "code_file": code_file, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False, "dataset_sources": [spec.dataset_id],
            "competition_sources": [spec.competition], "kernel_sources": [], "model_sources": []}


def validate_dataset_metadata(meta: dict[str, Any], folder: str | os.PathLike | None = None) -> list[str]:
    """Problems kaggle-api's ``dataset_create_new`` would raise on (plus Kaggle's URL-slug characters)."""
    problems = []
    ref = str(meta.get("id", ""))
    parts = ref.split("/")
    if len(parts) != 2 or not all(parts):
        problems.append(f"id {ref!r} must be 'owner/dataset-slug'")
    else:
        slug = parts[1]
        if "INSERT_SLUG_HERE" in ref:
            problems.append("id still has the INSERT_SLUG_HERE placeholder")
        if not 6 <= len(slug) <= 50:
            problems.append(f"dataset slug {slug!r} must be between 6 and 50 characters (has {len(slug)})")
        if not SLUG.match(slug):
            problems.append(f"dataset slug {slug!r} may hold only lowercase letters, digits and inner hyphens")
    title = str(meta.get("title", ""))
    if title == "INSERT_TITLE_HERE" or not 6 <= len(title) <= 50:
        problems.append(f"title {title!r} must be between 6 and 50 characters (has {len(title)})")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        problems.append(f"licenses must list exactly one licence, got {licenses!r}")
    elif not isinstance(licenses[0], dict) or licenses[0].get("name") not in KAGGLE_LICENSES:
        problems.append(f"licence {licenses[0]!r} is not one of Kaggle's names {sorted(KAGGLE_LICENSES)}")
    subtitle = meta.get("subtitle")
    if subtitle is not None and not 20 <= len(subtitle) <= 80:
        problems.append(f"subtitle must be between 20 and 80 characters (has {len(subtitle)})")
    for res in meta.get("resources") or []:
        if folder is not None and not (Path(folder) / res.get("path", "")).is_file():
            problems.append(f"resource {res.get('path')!r} does not exist in {folder}")
    return problems


def validate_kernel_metadata(meta: dict[str, Any], folder: str | os.PathLike | None = None) -> list[str]:
    """Problems kaggle-api's ``kernels_push`` would raise on, plus what an offline GPU submission needs."""
    problems = []
    title = meta.get("title")
    if not title or len(title) < 5:
        problems.append(f"title {title!r} must be at least five characters")
    ref = str(meta.get("id", ""))
    parts = ref.split("/")
    if len(parts) != 2 or not all(parts):
        problems.append(f"id {ref!r} must be 'owner/kernel-slug'")
    elif len(parts[1]) < 5:
        problems.append(f"kernel slug {parts[1]!r} must be at least five characters")
    elif title and slugify(title) != parts[1].lower():
        problems.append(f"title {title!r} resolves to slug {slugify(title)!r}, not the id's {parts[1]!r}")
    code = meta.get("code_file")
    if not code:
        problems.append("code_file is missing")
    elif folder is not None and not (Path(folder) / code).is_file():
        problems.append(f"code_file {code!r} does not exist in {folder}")
    if meta.get("language") not in ("python", "r", "rmarkdown"):
        problems.append(f"language {meta.get('language')!r} must be python, r or rmarkdown")
    if meta.get("kernel_type") not in ("script", "notebook"):
        problems.append(f"kernel_type {meta.get('kernel_type')!r} must be script or notebook")
    for key in ("is_private", "enable_gpu", "enable_internet"):
        if not isinstance(meta.get(key), bool):
            problems.append(f"{key} must be true/false, got {meta.get(key)!r}")
    if meta.get("enable_internet") is not False:
        problems.append("enable_internet must be false: code competitions reject kernels with internet")
    for key in ("dataset_sources", "competition_sources", "kernel_sources"):
        if not isinstance(meta.get(key, []), list):
            problems.append(f"{key} must be a list")
    for source in meta.get("dataset_sources", []):
        if len(str(source).split("/")) != 2 or not all(str(source).split("/")):
            problems.append(f"dataset source {source!r} must be 'owner/dataset-slug'")
    for source in meta.get("kernel_sources", []):
        bits = str(source).split("/")
        if len(bits) != 2 or not all(bits) or len(bits[1]) < 5:
            problems.append(f"kernel source {source!r} must be 'owner/kernel-slug' (slug >= 5 characters)")
    return problems


def _set_assignments(source: str, values: dict[str, Any], where: str) -> str:
    """Replace ``name = ...`` lines of a cell (each must be there exactly once)."""
    for name, value in values.items():
        pattern = re.compile(rf"^{re.escape(name)}\s*=.*$", re.MULTILINE)
        if len(pattern.findall(source)) != 1:
            raise BundleError(f"{NOTEBOOK.name}: the {where} cell needs exactly one `{name} = ...` line")
        source = pattern.sub(lambda _m, n=name, v=value: f"{n} = {json.dumps(v) if isinstance(v, str | list) else repr(v)}", source)
    return source


def render_notebook(install: dict[str, Any], params: dict[str, Any], source: Path = NOTEBOOK) -> str:
    """The kernel notebook (from the jupytext source) with this bundle's install line and parameters.

    Fixed cell ids and metadata, no outputs: the same bundle always gives the same bytes.
    """
    import jupytext

    nb = jupytext.read(source)
    cells, code_seen, has_params = [], False, False
    for i, cell in enumerate(nb.cells):
        text = cell.source
        tags = list(cell.metadata.get("tags", []))
        if cell.cell_type == "code" and not code_seen:
            if i != 0:
                raise BundleError(f"{source}: the first cell must be the offline install cell")
            text, code_seen = _set_assignments(text, install, "install"), True
        if "parameters" in tags:
            text, has_params = _set_assignments(text, params, "parameters"), True
        out: dict[str, Any] = {"cell_type": cell.cell_type, "id": f"cell-{i:02d}",
                               "metadata": {"tags": tags} if tags else {}, "source": text}
        if cell.cell_type == "code":
            out.update(execution_count=None, outputs=[])
        cells.append(out)
    if not has_params:
        raise BundleError(f"{source}: no cell tagged 'parameters'")
    doc = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
           "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                        "language_info": {"name": "python"}}}
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(root: Path, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``relative path -> {sha256, size}`` of every file under ``root``, sorted."""
    skip = set(skip)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in skip)
    return {p.relative_to(root).as_posix(): {"sha256": sha256(p), "size": p.stat().st_size} for p in files}


def _copy(src: Path, dest: Path) -> None:
    with src.open("rb") as fin, io.atomic_write(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _clear(out: Path) -> None:
    """Empty the parts a build writes, refusing folders that hold anything else."""
    foreign = sorted(p.name for p in out.iterdir() if p.name not in PARTS) if out.is_dir() else []
    if foreign:
        raise BundleError(f"{out} is not a kernel bundle (it holds {foreign[:5]}); choose another --out")
    for part in PARTS:
        path = out / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _check_names(spec: BundleSpec) -> None:
    if not spec.owner or not SLUG.match(spec.owner):
        raise BundleError(f"--owner {spec.owner!r} must be your Kaggle user name (lowercase, digits, hyphens)")
    problems = validate_dataset_metadata(dataset_metadata(spec, []))
    problems += validate_kernel_metadata(kernel_metadata(spec))
    if problems:
        raise BundleError("invalid Kaggle names: " + "; ".join(problems))


def resolve_bundle(spec: BundleSpec, runs: Sequence[RunInfo]) -> dict[str, Any]:
    """Which distributions go into wheels/: the closure of kaggle_utils and the runs' model packages, minus
    the Kaggle image's closure. Returns {bundle: {name: needed-by}, image: [...], missing: [...]}."""
    dists = installed()
    image_names = read_image_list(spec.image_list)
    image, image_missing = image_distributions(image_names, dists)
    own = dists.get(OWN)
    if own is None:
        raise BundleError("kaggle_utils is not installed in this environment (pip install -e .)")
    roots = [OWN, *sorted({r.package for r in runs})]
    need, missing = closure(roots, dists, stop=image)
    bundle = {n: p for n, p in need.items() if n not in image}
    missing = [m for m in missing if m not in image]
    if missing:
        raise BundleError(f"needed but not installed here, so no version to bundle: {missing}; "
                          f"install them (requirements.txt) or add them to {spec.image_list}")
    return {"bundle": bundle, "image": sorted(n for n in need if n in image),
            "image_not_installed_here": image_missing, "versions": {n: dists[n].version for n in bundle}}


def build(spec: BundleSpec, progress: bool = True) -> dict[str, Any]:
    """Write the dataset and kernel folders; returns the build report (also written to ``out``)."""
    say = print if progress else (lambda *a, **k: None)
    _check_names(spec)
    runs = [inspect_run(r) for r in spec.runs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise BundleError(f"run folder names must be unique (they become models/<run>): {names}")
    plan = resolve_bundle(spec, runs)
    out = Path(spec.out)
    _clear(out)
    dataset, kernel = out / "dataset", out / "kernel"

    say(f"[kernel] wheels: kaggle_utils (built here) + {sorted(set(plan['bundle']) - {OWN}) or 'nothing else'}")
    wheels_dir = dataset / "wheels"
    wheels_dir.mkdir(parents=True)
    bundled = []
    for name in sorted(plan["bundle"]):
        if name == OWN:
            path = build_own_wheel(wheels_dir)
        else:
            cached = fetch_wheel(name, plan["versions"][name], spec.wheel_cache)
            path = wheels_dir / cached.name
            _copy(cached, path)
        bundled.append({"name": name, "version": wheel_name(path)[1], "file": f"wheels/{path.name}",
                        "size": path.stat().st_size, "needed_by": plan["bundle"][name] or "kernel"})

    for run in runs:
        for fold in run.folds:
            for f in MODEL_FILES:
                _copy(fold / f, dataset / "models" / run.name / fold.name / f)
    weights = _bundle_weights(spec.weights, dataset / "weights")

    packages = ["kaggle_utils"] + sorted(n for n in plan["bundle"] if n != OWN)
    install = {"DATASET": spec.dataset_slug, "PACKAGES": packages}
    params = {"models_dir": f"/kaggle/input/{spec.dataset_slug}/models",
              "test_csv": f"/kaggle/input/{spec.competition}/test.csv",
              "test_images": f"/kaggle/input/{spec.competition}/test_images", "tta": spec.tta}
    io.write_text(kernel / "kernel.ipynb", render_notebook(install, params))
    kmeta = kernel_metadata(spec)
    io.write_json(kernel / "kernel-metadata.json", kmeta)
    dmeta = dataset_metadata(spec, runs)
    io.write_json(dataset / "dataset-metadata.json", dmeta)
    for problems, what in ((validate_dataset_metadata(dmeta, dataset), "dataset"),
                           (validate_kernel_metadata(kmeta, kernel), "kernel")):
        if problems:
            raise BundleError(f"{what} metadata invalid: {problems}")

    files = file_table(dataset, skip={MANIFEST})
    kfiles = file_table(kernel)
    listing = json.dumps([files, kfiles], sort_keys=True).encode()
    manifest = {"dataset": spec.dataset_id, "kernel": spec.kernel_id, "competition": spec.competition,
                "files": files, "kernel_files": kfiles, "bundle_sha256": hashlib.sha256(listing).hexdigest()}
    io.write_json(dataset / MANIFEST, manifest)

    def size(prefix: str, table: dict[str, dict[str, Any]]) -> int:
        return sum(v["size"] for k, v in table.items() if k.startswith(prefix))

    sizes = {"wheels": size("wheels/", files), "weights": size("weights/", files),
             "models": size("models/", files), "kernel": size("", kfiles),
             "metadata": size("dataset-metadata.json", files) + (dataset / MANIFEST).stat().st_size}
    report = {
        "dataset": spec.dataset_id, "kernel": spec.kernel_id, "competition": spec.competition,
        "bundle_sha256": manifest["bundle_sha256"], "sizes": sizes, "wheels": bundled,
        "assumed_on_kaggle_image": plan["image"], "image_list": str(spec.image_list.name),
        "install": f"pip install --no-index --find-links /kaggle/input/{spec.dataset_slug}/wheels "
                   + " ".join(packages),
        "models": [{"run": r.name, "model": r.model, "package": r.package, "folds": [f.name for f in r.folds]}
                   for r in runs],
        "weights": weights or "none: inference loads full fold checkpoints (best.pt), no ImageNet weights needed",
        "upload": ["kaggle datasets create -p dataset --dir-mode tar", "kaggle kernels push -p kernel"],
        "verify_emulation": EMULATION,
    }
    io.write_json(out / REPORT, report)
    say(format_sizes(report))
    return report


def _bundle_weights(names: Sequence[str], dest: Path) -> list[dict[str, Any]]:
    """Only on request: ImageNet weights (for training on Kaggle), verified, with their manifest entries."""
    if not names:
        return []
    from . import weights

    manifest = weights.load_manifest()
    entries, out = {}, []
    for name in names:
        path = weights.resolve_weights(name)
        _copy(path, dest / path.name)
        entries[name] = {**manifest[name], "file": path.name}
        out.append({"name": name, "file": f"weights/{path.name}", "size": path.stat().st_size})
    io.write_json(dest / "manifest.json", entries)
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:8.2f} MB" if n >= 1e5 else f"{n / 1e3:8.1f} kB"


def format_sizes(report: dict[str, Any]) -> str:
    s = report["sizes"]
    lines = [f"[kernel] bundle {report['dataset']} -> kernel {report['kernel']} (sha256 {report['bundle_sha256'][:16]})",
             f"  wheels   {_mb(s['wheels'])}  " + ", ".join(f"{w['file'][7:]} ({w['size'] / 1e3:.0f} kB)"
                                                     for w in report["wheels"]),
             f"  weights  {_mb(s['weights'])}  "
             + (report["weights"] if isinstance(report["weights"], str) else
                ", ".join(w["file"] for w in report["weights"])),
             f"  models   {_mb(s['models'])}  " + ", ".join(f"{m['run']} ({m['model']}, {len(m['folds'])} folds)"
                                                     for m in report["models"]),
             f"  kernel   {_mb(s['kernel'])}  kernel.ipynb + kernel-metadata.json",
             f"  metadata {_mb(s['metadata'])}  dataset-metadata.json + manifest.json",
             f"  not bundled (assumed on the Kaggle image, {report['image_list']}): "
             + ", ".join(report["assumed_on_kaggle_image"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- verify
def check_manifest(out: Path) -> list[str]:
    """Files missing, changed or unlisted relative to the dataset's manifest."""
    dataset, kernel = out / "dataset", out / "kernel"
    if not (dataset / MANIFEST).is_file():
        return [f"{dataset / MANIFEST} does not exist: build the bundle first"]
    manifest = io.read_json(dataset / MANIFEST)
    problems = []
    for root, listed, prefix in ((dataset, manifest["files"], "dataset/"), (kernel, manifest["kernel_files"],
                                                                           "kernel/")):
        actual = file_table(root, skip={MANIFEST} if root == dataset else ())
        for rel in sorted(set(listed) - set(actual)):
            problems.append(f"{prefix}{rel} is listed in the manifest but missing from the bundle")
        for rel in sorted(set(actual) - set(listed)):
            problems.append(f"{prefix}{rel} is in the bundle but not in the manifest")
        for rel in sorted(set(listed) & set(actual)):
            if listed[rel]["sha256"] != actual[rel]["sha256"]:
                problems.append(f"{prefix}{rel} differs from the manifest (sha256)")
    return problems


def write_manifest(out: Path) -> None:
    """Re-list the bundle's files (after a deliberate edit); the build does this itself."""
    dataset, kernel = out / "dataset", out / "kernel"
    manifest = io.read_json(dataset / MANIFEST)
    manifest["files"], manifest["kernel_files"] = file_table(dataset, skip={MANIFEST}), file_table(kernel)
    listing = json.dumps([manifest["files"], manifest["kernel_files"]], sort_keys=True).encode()
    manifest["bundle_sha256"] = hashlib.sha256(listing).hexdigest()
    io.write_json(dataset / MANIFEST, manifest)


def _top_levels(dist: md.Distribution) -> set[str]:
    """Top-level names a distribution installs into site-packages (from RECORD, else top_level.txt)."""
    names = set()
    for f in dist.files or []:
        parts = Path(f).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            names.add(parts[0])
    if not names and (tl := dist.read_text("top_level.txt")):
        names = {n.strip() for n in tl.splitlines() if n.strip()}
    return names


def link_image(image: Iterable[str], dest: Path, dists: dict[str, md.Distribution] | None = None) -> list[str]:
    """Expose exactly ``image``'s distributions of this environment in ``dest`` (symlinks).

    A top-level folder shared with a distribution outside the image (namespace packages) is mirrored file by
    file, so nothing else leaks in. Returns the names linked.
    """
    dists = installed() if dists is None else dists
    owners: dict[str, set[str]] = {}
    for name, dist in dists.items():
        for top in _top_levels(dist):
            owners.setdefault(top, set()).add(name)
    linked = []
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(image) - VENV_OWN):
        dist = dists.get(name)
        if dist is None:
            continue
        site = Path(str(dist.locate_file("")))
        for top in sorted(_top_levels(dist)):
            src, target = site / top, dest / top
            if not src.exists() or target.exists() or target.is_symlink():
                continue
            if owners.get(top, set()) <= set(image) or src.is_file():
                target.symlink_to(src)
            else:  # shared with a package outside the image: only this distribution's own files
                for f in dist.files or []:
                    if Path(f).parts[0] == top and (site / f).is_file():
                        (dest / f).parent.mkdir(parents=True, exist_ok=True)
                        if not (dest / f).exists():
                            (dest / f).symlink_to(site / f)
        linked.append(name)
    return linked


BLOCK_SOCKETS = '''\
"""kaggle_utils verify: no network (this machine does not allow a network namespace)."""
import socket

_connect = socket.socket.connect


def _local(address):
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost") or "/" in host)


def _guarded(self, address):
    if self.family == socket.AF_UNIX or _local(address):
        return _connect(self, address)
    raise OSError(101, f"network disabled by kaggle_utils verify (connect to {address!r})")


def _guarded_ex(self, address):
    try:
        _guarded(self, address)
    except OSError as err:
        return err.errno or 101
    return 0


socket.socket.connect = _guarded
socket.socket.connect_ex = _guarded_ex
'''


PROBE = """import socket
try:
    socket.create_connection(("1.1.1.1", 443), timeout=5).close()
    print("OPEN")
except OSError as err:
    print("blocked:", err)
"""


def network_isolation() -> str:
    """``unshare -n`` (a network namespace with only loopback) when allowed here, else ``sitecustomize``."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare and ip:
        probe = subprocess.run([unshare, "-n", "sh", "-c", f"{ip} link set lo up"], capture_output=True)
        if probe.returncode == 0:
            return "unshare -n"
    return "sitecustomize"


def _offline(cmd: list[str], method: str) -> list[str]:
    if method != "unshare -n":
        return cmd
    return [shutil.which("unshare") or "unshare", "-n", "sh", "-c",
            f'{shutil.which("ip") or "ip"} link set lo up && exec "$@"', "sh", *cmd]


def layout_test_set(images: Sequence[Path], comp_dir: Path) -> list[str]:
    """``test.csv`` + ``test_images/<id>.png`` + ``sample_submission.csv``, as Kaggle mounts a competition."""
    import cv2

    (comp_dir / "test_images").mkdir(parents=True, exist_ok=True)
    ids = []
    for path in images:
        rid = Path(path).stem
        dest = comp_dir / "test_images" / f"{rid}.png"
        if Path(path).suffix.lower() == ".png":
            shutil.copyfile(path, dest)
        else:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img is None or not cv2.imwrite(str(dest), img):
                raise VerifyError("test set", f"cannot convert {path} to PNG")
        ids.append(rid)
    if len(set(ids)) != len(ids):
        raise VerifyError("test set", f"test image names repeat: {ids}")
    io.write_text(comp_dir / "test.csv", "id_code\n" + "".join(f"{i}\n" for i in ids))
    io.write_text(comp_dir / "sample_submission.csv", "id_code,diagnosis\n" + "".join(f"{i},0\n" for i in ids))
    return ids


def default_test_images(n: int = 6) -> list[Path]:
    """Real APTOS PNGs (the competition's format) from ../shared/data/raw when present, then sample JPEGs."""
    raw = REPO_ROOT.parent / "shared" / "data" / "raw"
    found = sorted(raw.glob("aptos_*.png"))[:2]
    found += sorted((REPO_ROOT / "data" / "sample" / "images").glob("*.jpg"))[: max(0, n - len(found))]
    return found


@dataclass
class VerifyReport:
    ok: bool
    network: str
    seconds: dict[str, float]
    root: str
    submission: str
    n_images: int
    linked: list[str]
    installed_from_bundle: list[str]

    def summary(self) -> str:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (f"[verify] OK: {self.n_images} test ids, grades 0-4, network blocked by {self.network}; "
                f"installed from the bundle only: {self.installed_from_bundle}; {steps}")


def _diagnose(text: str) -> str | None:
    """Name the missing wheel or file from pip's or Python's words."""
    if m := re.search(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", text):
        name = m.group(1)
        return (f"wheel for {name} is missing from the bundle (pip: No matching distribution found for "
                f"{name}); rebuild, or add {name} to the image list if Kaggle has it")
    if m := re.search(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'", text):
        module = m.group(1).split(".")[0]
        dists = md.packages_distributions().get(module, [module])
        return (f"wheel for {canonical(dists[0])} (module {module!r}) is missing from the bundle and not on the "
                f"assumed Kaggle image; add it to the closure (kernel.UNDECLARED) or to {IMAGE_LIST.name}")
    if m := re.search(r"(FileNotFoundError|No such file or directory)[^\n]*?'([^']+)'", text):
        return f"file missing: {m.group(2)}"
    return None


def _stream_text(path: Path) -> str:
    """Everything an executed notebook printed."""
    if not path.is_file():
        return ""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join("".join(o.get("text", "")) for c in nb.get("cells", []) for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def _notebook_errors(path: Path) -> str:
    """Error and stream outputs of an executed notebook (what failed, in the kernel's words)."""
    if not path.is_file():
        return ""
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                parts.append(f"In [{cell.get('execution_count')}]: {out.get('ename')}: {out.get('evalue')}")
    return "\n".join(parts)


def verify(out: str | os.PathLike, images: Sequence[str | os.PathLike] | None = None, n_images: int = 6,
           python: str | None = None, network: str = "auto", timeout: int = 900,
           image_list: Path = IMAGE_LIST, progress: bool = True) -> VerifyReport:
    """Install the bundle into a fresh venv that sees only the assumed Kaggle image, run the kernel notebook
    offline on a Kaggle-shaped test set, check ``submission.csv``. Raises :class:`VerifyError` naming the step."""
    say = print if progress else (lambda *a, **k: None)
    out = Path(out).resolve()
    seconds: dict[str, float] = {}
    t0 = time.time()
    problems = check_manifest(out)
    if problems:
        raise VerifyError("manifest", "; ".join(problems[:10]))
    manifest = io.read_json(out / "dataset" / MANIFEST)
    slug, competition = manifest["dataset"].split("/")[1], manifest["competition"]

    root = out / "verify"
    if root.exists():
        shutil.rmtree(root)
    kaggle = root / "kaggle"
    (kaggle / "input").mkdir(parents=True)
    (kaggle / "working").mkdir()
    (kaggle / "input" / slug).symlink_to(out / "dataset", target_is_directory=True)
    chosen = [Path(p) for p in images] if images else default_test_images(n_images)
    if not chosen:
        raise VerifyError("test set", "no test images given and none found in data/sample/images")
    ids = layout_test_set(chosen, kaggle / "input" / competition)
    seconds["manifest+layout"] = time.time() - t0

    t = time.time()
    venv = root / "venv"
    base = python or _base_python()
    proc = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
    if proc.returncode:
        raise VerifyError("venv", f"{base} -m venv failed: {proc.stderr[-1000:]}")
    vpy = venv / "bin" / "python"
    # Kaggle has one, recent setuptools (torch requires >= 77): the image's, not the venv's bundled 65.x
    subprocess.run([str(vpy), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    site = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dists = installed()
    image, _ = image_distributions(read_image_list(image_list), dists)
    linked = link_image(image, root / "image", dists)
    io.write_text(site / "kaggle_image.pth", f"{root / 'image'}\n")
    method = network_isolation() if network == "auto" else network
    if method == "sitecustomize":
        io.write_text(site / "sitecustomize.py", BLOCK_SOCKETS)
    home = root / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1",
           "JUPYTER_PATH": str(venv / "share" / "jupyter"), "JUPYTER_DATA_DIR": str(home / "jupyter"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
           "IPYTHONDIR": str(home / ".ipython"), "MPLCONFIGDIR": str(home / "mpl"),
           "KAGGLE_KERNEL_RUN_TYPE": "Batch", INPUT_ENV: str(kaggle / "input")}
    proc = subprocess.run([str(vpy), "-m", "ipykernel", "install", "--prefix", str(venv), "--name",
                           "kaggle-verify"], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise VerifyError("image", "ipykernel is not importable in the emulated image: "
                                   f"{(_diagnose(proc.stderr) or proc.stderr[-800:])}")
    probe = subprocess.run(_offline([str(vpy), "-c", PROBE], method), capture_output=True, text=True, env=env)
    if probe.returncode != 0 or not probe.stdout.startswith("blocked"):
        raise VerifyError("network", f"could not cut the network with {method}: {probe.stdout}{probe.stderr[-500:]}")
    seconds["venv+image"] = time.time() - t
    say(f"[verify] venv {venv} sees {len(linked)} image distributions; network: {method} ({probe.stdout.strip()})")

    t = time.time()
    executed = root / "kernel.out.ipynb"
    params = {"models_dir": str(kaggle / "input" / slug / "models"),
              "test_csv": str(kaggle / "input" / competition / "test.csv"),
              "test_images": str(kaggle / "input" / competition / "test_images"),
              "out_dir": str(kaggle / "working"), "device": "cpu", "batch_size": 4, "workers": 2}
    cmd = [str(vpy), "-m", "papermill", str(out / "kernel" / "kernel.ipynb"), str(executed), "-k", "kaggle-verify",
           "--cwd", str(kaggle / "working"), "--no-progress-bar", "--execution-timeout", str(timeout),
           "-y", json.dumps(params)]
    try:
        proc = subprocess.run(_offline(cmd, method), capture_output=True, text=True, env=env, timeout=timeout + 120)
    except subprocess.TimeoutExpired as err:
        raise VerifyError("kernel run", f"the notebook ran past {timeout + 120} s; see {executed}") from err
    seconds["kernel run"] = time.time() - t
    fallback = _stream_text(executed)
    if proc.returncode == 0 and FALLBACK in fallback:  # it would run on Kaggle, but the bundle has a gap
        raise VerifyError("kernel install", f"{_diagnose(fallback) or 'pip could not resolve'}; the notebook only "
                                            f"got through with --no-deps (executed notebook: {executed})")
    if proc.returncode:
        text = proc.stdout + proc.stderr + "\n" + _notebook_errors(executed)
        cell = _notebook_errors(executed).splitlines()
        where = cell[0] if cell else "papermill"
        raise VerifyError("kernel run", f"{_diagnose(text) or where}\n(executed notebook: {executed})\n"
                                        f"{text[-1500:]}")

    t = time.time()
    _check_submission(kaggle / "working" / "submission.csv", ids)
    listing = subprocess.run([str(vpy), "-c", "import json, importlib.metadata as m, sys; print(json.dumps("
                              "[(d.metadata['Name'], str(d.locate_file(''))) for d in m.distributions()]))"],
                             capture_output=True, text=True, env=env, check=True)
    ours = sorted(canonical(n) for n, where in json.loads(listing.stdout) if Path(where).resolve() == site.resolve()
                  and canonical(n) not in VENV_OWN)
    wheels = sorted(wheel_name(Path(f))[0] for f in manifest["files"] if f.startswith("wheels/"))
    if ours != wheels:
        raise VerifyError("isolation", f"the venv holds {ours} besides the image, but the bundle's wheels are {wheels}")
    seconds["checks"] = time.time() - t
    report = VerifyReport(True, method, {k: round(v, 1) for k, v in seconds.items()}, str(root),
                          str(kaggle / "working" / "submission.csv"), len(ids), linked, ours)
    io.write_json(out / VERIFY_REPORT, {**dataclasses.asdict(report), "bundle_sha256": manifest["bundle_sha256"],
                                        "emulation": EMULATION, "network_probe": probe.stdout.strip()})
    say(report.summary())
    return report


def _base_python() -> str:
    """The interpreter this venv was made from (same ABI as the image packages linked from it)."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable" and Path(value.strip()).is_file():
                return value.strip()
    return getattr(sys, "_base_executable", sys.executable)


def _check_submission(path: Path, ids: Sequence[str]) -> None:
    import pandas as pd

    if not path.is_file():
        raise VerifyError("submission", f"the kernel wrote no {path}")
    sub = pd.read_csv(path, dtype={"id_code": str})
    if list(sub.columns) != ["id_code", "diagnosis"]:
        raise VerifyError("submission", f"{path} columns are {list(sub.columns)}, expected id_code,diagnosis")
    missing = sorted(set(ids) - set(sub["id_code"]))
    extra = sorted(set(sub["id_code"]) - set(ids))
    if missing or extra or len(sub) != len(ids):
        raise VerifyError("submission", f"{path}: ids missing {missing[:10]}, unexpected {extra[:10]}, "
                                        f"{len(sub)} rows for {len(ids)} test ids")
    d = sub["diagnosis"]
    if not pd.api.types.is_integer_dtype(d) or not d.between(0, 4).all():
        raise VerifyError("submission", f"{path}: diagnosis must be integers 0-4, got {sorted(d.unique())[:10]}")


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class GpuProfile:
    name: str
    peak_tflops: float
    precision: str
    note: str


GPU_PROFILES = {
    "p100": GpuProfile("P100 16 GB", 9.3, "fp32", "no tensor cores; autocast fp16 is assumed to gain nothing"),
    "t4": GpuProfile("T4 16 GB", 65.0, "fp16 tensor cores", "infer.py autocasts to fp16 on CUDA; fp32 peak 8.1"),
}
# Achieved fraction of peak, by architecture family: depthwise-separable convolutions (EfficientNets) are
# memory-bound and reach a small share of peak; dense convolutions (SE-ResNeXt, Inception) much more.
ACHIEVED = {"p100": {"depthwise": 0.10, "dense": 0.40}, "t4": {"depthwise": 0.03, "dense": 0.15}}
KAGGLE_VCPUS = 4
CPU_SCALING = 0.75  # 4 vCPUs are 2 cores x 2 hyper-threads: assume 3x one thread for decoding
OVERHEADS = {"kernel start + CUDA init": 60.0, "pip install from the dataset": 30.0, "blend + write": 10.0}


@dataclass
class RunMeasure:
    """What was measured here for one run (per image)."""

    name: str
    model: str
    size: int
    folds: int
    gflop: float  # forward GFLOP per image (FlopCounterMode: 2 x multiply-adds)
    cpu_img_s: float  # forward images/s on this machine's CPU
    load_s: float  # loading one fold checkpoint
    recipe: str  # preprocessing recipe key (images are decoded once per recipe)


def _family(model: str) -> str:
    return "depthwise" if model.startswith("efficientnet") else "dense"


def measure_run(run_dir: str | os.PathLike, batch: int = 8, repeats: int = 3) -> RunMeasure:
    """FLOPs per image and CPU forward speed of a run's model at its trained size, and checkpoint load time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .infer import checkpoint_preprocess, fold_checkpoints
    from .train import load_checkpoint, load_model

    paths = fold_checkpoints(run_dir)
    t = time.perf_counter()
    ck = load_checkpoint(paths[0])
    model = load_model(ck)
    load_s = time.perf_counter() - t
    cfg = ck.get("config") or {}
    recipe = checkpoint_preprocess(ck, paths[0])
    size = int(cfg.get("size") or recipe.size)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x)
        gflop = counter.get_total_flops() / 1e9
        xb = torch.rand(batch, 3, size, size)
        times: list[float] = []
        # Warm up until it stops getting faster (first calls pick and cache kernels), then the best of
        # ``repeats`` more counts: other processes on a shared machine only ever slow a batch down.
        for _ in range(6):
            t = time.perf_counter()
            model(xb)
            times.append(time.perf_counter() - t)
            if len(times) >= 3 and min(times[-2:]) > 0.85 * min(times[:-2]):
                break
        for _ in range(repeats):
            t = time.perf_counter()
            model(xb)
            times.append(time.perf_counter() - t)
        cpu = batch / min(times)
    key = json.dumps([recipe.to_dict(), size], sort_keys=True)
    return RunMeasure(Path(run_dir).name, str(cfg.get("model")), size, len(paths), gflop, cpu, load_s, key)


def measure_preprocess(run_dir: str | os.PathLike, images: Sequence[Path], repeats: int = 2,
                       fast_png: bool = True) -> float:
    """Seconds per image, one thread, for exactly what the kernel does per image (decode, recipe, resize):
    the mean over images of each image's best of ``repeats``. ``fast_png=False`` times OpenCV's PNG decode,
    as on an image without imagecodecs."""
    import cv2

    from . import preprocess
    from .infer import _load, checkpoint_preprocess, fold_checkpoints
    from .train import load_checkpoint

    path = fold_checkpoints(run_dir)[0]
    ck = load_checkpoint(path)
    recipe = checkpoint_preprocess(ck, path)
    size = int((ck.get("config") or {}).get("size") or recipe.size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    decoding = contextlib.nullcontext() if fast_png else preprocess.opencv_png()
    try:
        with decoding:
            _load(str(images[0]), recipe, size)  # warm-up
            best = []
            for p in images:
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    img, why = _load(str(p), recipe, size)
                    times.append(time.perf_counter() - t)
                    if img is None:
                        raise BundleError(f"cannot time preprocessing: {p} failed to load ({why})")
                best.append(min(times))
            return sum(best) / len(best)
    finally:
        cv2.setNumThreads(threads)


def plan_images() -> list[Path]:
    """Real APTOS PNGs (the competition's format) when the shared data is there, else the sample JPEGs."""
    raw = sorted((REPO_ROOT.parent / "shared" / "data" / "raw").glob("aptos_*.png"))
    return raw or sorted((REPO_ROOT / "data" / "sample" / "images").glob("*.jpg"))[:5]


def estimate(runs: Sequence[RunMeasure], preprocess_s: float, n_images: int = 13_000, tta: str = "hflip",
             gpu: str = "p100", fraction: float | None = None, budget_h: float = 9.0,
             vcpus: int = KAGGLE_VCPUS) -> dict[str, Any]:
    """Kernel time = max(GPU forward time, CPU decode time) + fixed overheads (decoding overlaps the GPU)."""
    from .infer import tta_views

    profile = GPU_PROFILES[gpu]
    views = tta_views(tta)
    rows, gpu_s = [], 0.0
    for r in runs:
        frac = fraction if fraction is not None else ACHIEVED[gpu][_family(r.model)]
        img_s = profile.peak_tflops * 1e12 * frac / (r.gflop * 1e9)
        passes = n_images * r.folds * views
        rows.append({**dataclasses.asdict(r), "fraction": frac, "gpu_img_s": img_s, "passes": passes,
                     "gpu_s": passes / img_s})
        gpu_s += passes / img_s
    recipes = len({r.recipe for r in runs})
    cpu_s = n_images * recipes * preprocess_s / (vcpus * CPU_SCALING)
    overheads = {**OVERHEADS, "load checkpoints (measured here)": sum(r.load_s * r.folds for r in runs)}
    total = max(gpu_s, cpu_s) + sum(overheads.values())
    return {"rows": rows, "gpu": profile, "gpu_key": gpu, "views": views, "tta": tta, "n_images": n_images,
            "gpu_s": gpu_s, "cpu_s": cpu_s, "recipes": recipes, "preprocess_s": preprocess_s, "vcpus": vcpus,
            "overheads": overheads, "total_s": total, "budget_s": budget_h * 3600,
            "fits": total <= budget_h * 3600}


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_plan(p: dict[str, Any], images_note: str = "") -> str:
    g = p["gpu"]
    head = (f"{'run':<12}{'model':<22}{'px':>5}{'folds':>6}{'TTA':>5}{'GFLOP/img':>11}{'CPU img/s':>11}"
            f"{'GPU img/s':>11}{'passes':>10}{'GPU time':>10}")
    lines = [f"Kernel run-time plan: {p['n_images']:,} test images, TTA {p['tta']} ({p['views']} views), "
             f"{g.name} ({g.peak_tflops} TFLOP/s {g.precision} peak)", head, "-" * len(head)]
    for r in p["rows"]:
        lines.append(f"{r['name']:<12}{r['model']:<22}{r['size']:>5}{r['folds']:>6}{p['views']:>5}"
                     f"{r['gflop']:>11.2f}{r['cpu_img_s']:>11.1f}{r['gpu_img_s']:>11,.0f}{r['passes']:>10,}"
                     f"{_hms(r['gpu_s']):>10}")
    lines.append(f"GPU forward total: {_hms(p['gpu_s'])}")
    lines.append(f"CPU decode+preprocess: {p['preprocess_s']:.3f} s/img (measured here, 1 thread{images_note}) x "
                 f"{p['n_images']:,} x {p['recipes']} recipe(s) / ({p['vcpus']} vCPUs x {CPU_SCALING}) = "
                 f"{_hms(p['cpu_s'])}")
    lines.append("overheads: " + "; ".join(f"{k} {_hms(v)}" for k, v in p["overheads"].items()))
    verdict = "fits" if p["fits"] else "EXCEEDS THE BUDGET"
    lines.append(f"ESTIMATE: max(GPU {_hms(p['gpu_s'])}, CPU {_hms(p['cpu_s'])}) + overheads "
                 f"{_hms(sum(p['overheads'].values()))} = {_hms(p['total_s'])} of {_hms(p['budget_s'])} "
                 f"({100 * p['total_s'] / p['budget_s']:.1f} %): {verdict}")
    if not p["fits"]:
        lines.append(f"WARNING: the kernel would exceed the {p['budget_s'] / 3600:g} h limit: drop folds/TTA views, "
                     f"use a smaller size, or fewer runs")
    fractions = sorted({(_family(r["model"]), r["fraction"]) for r in p["rows"]})
    lines += [
        "assumptions:",
        "  GPU time = passes x GFLOP/img / (peak x achieved fraction); achieved fraction "
        + ", ".join(f"{f} {frac:.2f}" for f, frac in fractions) + f" of peak ({g.note}).",
        f"  Decoding runs in {p['vcpus']} Kaggle vCPUs (2 cores x 2 threads, scaling {CPU_SCALING}) at this "
        "machine's per-thread speed, overlapping the GPU; images are decoded once per preprocessing recipe.",
        "  Overheads other than checkpoint loading are assumed constants; GPU img/s are FLOP-count estimates.",
        "  GPU comparison: not possible in this task (no GPU here); measure on Kaggle before trusting the GPU column.",
    ]
    return "\n".join(lines)


def plan(run_dirs: Sequence[str | os.PathLike], n_images: int = 13_000, tta: str = "hflip", gpu: str = "p100",
         fraction: float | None = None, budget_h: float = 9.0, images: Sequence[Path] | None = None
         ) -> tuple[dict[str, Any], str]:
    """Measure here, scale to the Kaggle GPU profile; returns (estimate, printable table)."""
    chosen = [Path(p) for p in images] if images else plan_images()
    if not chosen:
        raise BundleError("no images to time preprocessing on; pass --plan-images DIR")
    runs = [measure_run(d) for d in run_dirs]
    # The bundle leaves imagecodecs out (an optional extra): time PNGs the way the kernel will decode them.
    fast_png = "imagecodecs" in image_distributions(read_image_list(IMAGE_LIST))[0]
    pre = max(measure_preprocess(d, chosen, fast_png=fast_png) for d in run_dirs)
    kinds = sorted({p.suffix.lstrip(".").upper() for p in chosen})
    decoder = "imagecodecs" if fast_png else "OpenCV, as the image lacks imagecodecs"
    note = f", {len(chosen)} real {'/'.join(kinds)} images from {chosen[0].parent.name}/, PNG decoder {decoder}"
    p = estimate(runs, pre, n_images, tta, gpu, fraction, budget_h)
    return p, format_plan(p, note)


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build the Kaggle dataset + kernel bundle from trained runs.")
    ap.add_argument("runs", nargs="+", help="run folders (fold*/best.pt), e.g. outputs/demo/runs/lite0")
    ap.add_argument("--out", default="outputs/kernel_bundle", help="bundle folder (default %(default)s)")
    ap.add_argument("--owner", default=BundleSpec.owner, help="your Kaggle user name")
    ap.add_argument("--dataset-slug", default=BundleSpec.dataset_slug)
    ap.add_argument("--dataset-title", default=BundleSpec.dataset_title)
    ap.add_argument("--kernel-slug", default=BundleSpec.kernel_slug)
    ap.add_argument("--kernel-title", help="default: from the kernel slug (Kaggle links the two)")
    ap.add_argument("--competition", default=COMPETITION)
    ap.add_argument("--license", default=BundleSpec.license, help="one Kaggle licence name")
    ap.add_argument("--weights", action="append", default=[], metavar="NAME",
                    help="also bundle these ImageNet weights (not needed for inference)")
    ap.add_argument("--tta", default="hflip", help="the kernel's TTA (and the plan's)")
    ap.add_argument("--no-build", action="store_true", help="use the bundle already in --out")
    ap.add_argument("--verify", action="store_true", help="install + run the kernel offline in a fresh venv")
    ap.add_argument("--verify-images", help="folder of test images for --verify (default: APTOS PNGs + sample)")
    ap.add_argument("--plan", action="store_true", help="predict the kernel's run time on Kaggle")
    ap.add_argument("--images", type=int, default=13_000, help="test-set size for --plan (default %(default)s)")
    ap.add_argument("--gpu", choices=sorted(GPU_PROFILES), default="p100")
    ap.add_argument("--gpu-fraction", type=float, help="achieved fraction of GPU peak (default per model family)")
    ap.add_argument("--budget-hours", type=float, default=9.0)
    ap.add_argument("--plan-images", help="folder of real images to time preprocessing on")
    args = ap.parse_args(argv)

    spec = BundleSpec([Path(r) for r in args.runs], Path(args.out), args.owner, args.dataset_slug,
                      args.dataset_title, args.kernel_slug, args.kernel_title, args.competition, args.license,
                      args.weights, args.tta)
    try:
        if not args.no_build:
            build(spec)
        if args.verify:
            images = sorted(p for p in Path(args.verify_images).iterdir() if p.is_file()) \
                if args.verify_images else None
            verify(spec.out, images)
        if args.plan:
            imgs = sorted(Path(args.plan_images).glob("*.*")) if args.plan_images else None
            _, table = plan(args.runs, args.images, args.tta, args.gpu, args.gpu_fraction, args.budget_hours, imgs)
            print(table)
    except (BundleError, VerifyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
