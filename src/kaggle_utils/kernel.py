"""Kaggle submission bundle: an offline dataset (wheels, fold checkpoints, manifest) plus the inference+blend
kernel that installs from it, proven end to end in an emulated Kaggle image with the network off.

    python build_kernel.py [RUN_DIR ...] --out DIR [--owner NAME] [--verify] [--plan]   (no RUN_DIR: latest chain's)

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
* ``--verify`` (:mod:`kaggle_utils.kernel_verify`) installs and runs the bundle offline in an emulated image;
  ``--plan`` (:mod:`kaggle_utils.kernel_plan`) predicts its run time on a Kaggle GPU.
"""

from __future__ import annotations

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


# ------------------------------------------------------------------------------------------------- CLI
def _run_folders(root: Path) -> list[Path]:
    """Folders directly under ``root`` that hold at least one ``fold*/best.pt``."""
    return sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("fold*/best.pt"))) if root.is_dir() else []


def latest_chain_runs(outputs: str | os.PathLike = "outputs") -> tuple[list[Path], str]:
    """The run folders of the most recently finished chain under ``outputs`` (its last pseudo-label round's
    runs, which its submission used), and a message saying which; or ``[]`` and a message listing every run
    folder found and how to choose. Lets a bare ``python build_kernel.py`` follow ``make demo``."""
    root = Path(outputs)
    logs = sorted(root.glob("*/run_log.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        work = log.parent
        rounds = sorted((d for d in work.glob("runs_round*") if d.name[10:].isdigit()),
                        key=lambda d: int(d.name[10:]))
        runs = _run_folders(rounds[-1]) if rounds else _run_folders(work / "runs")
        if runs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(log.stat().st_mtime))
            return runs, (f"no run folders given: using the runs of the most recent chain, {work} (run_log.json "
                          f"{when}): {' '.join(str(r) for r in runs)}")
    found = sorted({p.parent.parent for p in root.glob("**/fold*/best.pt")}) if root.is_dir() else []
    if not found:
        return [], (f"error: no run folders given and none found under {root}/ (a run folder holds fold<k>/best.pt); "
                    "train first (`make demo`), then: python build_kernel.py RUN_DIR [RUN_DIR ...] --owner YOU")
    listed = "\n".join(f"  {r}" for r in found)
    return [], (f"error: no run folders given and no finished chain (run_log.json) under {root}/; run folders "
                f"found:\n{listed}\nname the ones to bundle: python build_kernel.py RUN_DIR [RUN_DIR ...] --owner YOU")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from .kernel_plan import GPU_PROFILES, plan
    from .kernel_verify import verify

    ap = argparse.ArgumentParser(description="Build the Kaggle dataset + kernel bundle from trained runs.")
    ap.add_argument("runs", nargs="*", help="run folders (fold*/best.pt), e.g. outputs/demo/runs/lite0; "
                    "default: the runs of the most recent chain under outputs/")
    ap.add_argument("--out", default="outputs/kernel_bundle", help="bundle folder (default %(default)s)")
    ap.add_argument("--owner", help=f"your Kaggle user name (default {BundleSpec.owner!r}, with a warning)")
    ap.add_argument("--dataset-slug", default=BundleSpec.dataset_slug)
    ap.add_argument("--dataset-title", default=BundleSpec.dataset_title)
    ap.add_argument("--kernel-slug", default=BundleSpec.kernel_slug)
    ap.add_argument("--kernel-title", help="default: from the kernel slug (Kaggle links the two)")
    ap.add_argument("--competition", default=COMPETITION)
    ap.add_argument("--license", help=f"one Kaggle licence name (default {BundleSpec.license})")
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
    if not args.runs:
        found, message = latest_chain_runs()
        print(message, file=sys.stderr if not found else sys.stdout)
        if not found:
            return 2
        args.runs = [str(r) for r in found]
    if args.owner is None:
        print(f"warning: no --owner: assumed Kaggle user {BundleSpec.owner!r} (dataset "
              f"{BundleSpec.owner}/{args.dataset_slug}, kernel {BundleSpec.owner}/{args.kernel_slug})"
              + ("" if args.license else f" and licence {BundleSpec.license}")
              + "; `kaggle datasets create` needs your own user name: pass --owner YOUR_KAGGLE_NAME", file=sys.stderr)
    spec = BundleSpec([Path(r) for r in args.runs], Path(args.out), args.owner or BundleSpec.owner,
                      args.dataset_slug, args.dataset_title, args.kernel_slug, args.kernel_title, args.competition,
                      args.license or BundleSpec.license, args.weights, args.tta)
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
