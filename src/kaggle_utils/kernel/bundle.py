"""Kaggle submission bundle: an offline dataset (wheels, fold checkpoints, manifest) plus the inference+blend
kernel that installs from it, proven end to end in an emulated Kaggle image with the network off.

    python build_kernel.py [RUN_DIR ...] --out DIR [--owner NAME] [--verify [--data COMP_DIR]] [--plan]
    (no RUN_DIR: the latest chain's runs; COMP_DIR: the competition's test.csv + test_images/)

``DIR/dataset``  (upload with ``kaggle datasets create -p DIR/dataset --dir-mode tar``)
    wheels/            kaggle_utils (built from this checkout) + every runtime dependency the Kaggle image lacks
    models/<run>/fold<k>/{best.pt,config.json,oof.csv}   (best.pt carries model config + preprocessing recipe)
    weights/           only with ``--weights NAME``: inference from fold checkpoints needs no ImageNet weights
    manifest.json      sha256 + size of every dataset and kernel file
    dataset-metadata.json
``DIR/kernel``   (push with ``kaggle kernels push -p DIR/kernel``): kernel.ipynb + kernel-metadata.json
``DIR/build_report.json``  sizes, what was bundled, what the Kaggle image is assumed to provide.
``DIR/verify_report.json`` (``--verify``) what was checked; its workspace is a temp folder, never in ``DIR``.

Why it is built this way:

* Code competitions run kernels with the internet off, so everything beyond the Kaggle image comes from an
  attached dataset via ``pip install --no-index --find-links``. What the image provides is an explicit,
  editable list (``configs/kaggle_image.txt``); the bundle is the dependency closure of kaggle_utils and the
  runs' model packages minus that list's closure, read from the installed metadata (plus imports a package
  makes without declaring them, :data:`~kaggle_utils.kernel.image.UNDECLARED`).
* Same inputs, byte-identical files: our own wheel is rewritten with sorted entries and a fixed 1980 date,
  checkpoints are copied byte for byte, JSON is key-sorted and the notebook carries fixed ids and metadata,
  so the manifest's hashes identify a bundle.
* ``--verify`` (:mod:`kaggle_utils.kernel.verify`) installs and runs the bundle offline in an emulated image;
  ``--plan`` (:mod:`kaggle_utils.kernel.plan`) predicts its run time on a Kaggle GPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_utils import io
from kaggle_utils.kernel import accelerators
from kaggle_utils.kernel.handover import kernel_source_models
from kaggle_utils.kernel.image import closure, image_distributions, installed, read_image_list
from kaggle_utils.kernel.layout import (
    COMPETITION,
    EMULATION,
    IMAGE_LIST,
    MANIFEST,
    MODEL_FILES,
    OLD_PARTS,
    OWN,
    PARTS,
    REPORT,
    SLUG,
    WHEEL_CACHE,
    BundleError,
    canonical,
    slugify,
)
from kaggle_utils.kernel.notebook import render_notebook
from kaggle_utils.kernel.pretrained import bundle_weights
from kaggle_utils.kernel.wheels import build_own_wheel, fetch_wheel, wheel_name

# kaggle-api (kaggle_api_extended.py, docs/datasets_metadata.md): accepted dataset licence names
KAGGLE_LICENSES = frozenset({
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO",
    "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0",
    "GPL-3.0"})


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
    from kaggle_utils.models.registry import get_model_spec

    spec = get_model_spec(model)
    module = (spec.source or "").split(".")[0]
    owners = md.packages_distributions().get(module) if module else None
    if not owners:
        raise BundleError(f"model {model!r} comes from {spec.source or 'an unnamed source'!r}, which is no "
                          f"installed package: register it inside kaggle_utils so the kernel can rebuild it")
    return canonical(owners[0])


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
    kernel_source: str | None = None  # OWNER/SLUG: the runs are that training kernel's output, not in the dataset
    accelerator: str = accelerators.DEFAULT  # what the kernel asks Kaggle for (kernel/accelerators.py)
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

    def machine(self) -> accelerators.Accelerator:
        return accelerators.resolve(self.accelerator)


def dataset_metadata(spec: BundleSpec, runs: Sequence[RunInfo]) -> dict[str, Any]:
    lines = [f"- `{r.name}`: {r.model}, {len(r.folds)} fold(s)" for r in runs]
    models = (f"no checkpoints (the kernel reads them from the training kernel {spec.kernel_source})"
              if spec.kernel_source else "models/<run>/fold<k>/ checkpoints with their OOF predictions")
    return {"title": spec.dataset_title, "id": spec.dataset_id, "licenses": [{"name": spec.license}],
            "description": "Offline bundle built by kaggle_utils `build_kernel.py`: wheels/ (pip install "
                           f"--no-index --find-links), {models}, manifest.json (sha256 of every file).\n\n"
                           + "\n".join(lines) + "\n"}


def kernel_metadata(spec: BundleSpec, code_file: str = "kernel.ipynb",
                    dataset_sources: Sequence[str] | None = None) -> dict[str, Any]:
    """``kernel-metadata.json`` of either bundle: one writer, so both ask Kaggle for the same things (internet
    off, the accelerator ``spec`` names: ``machine_shape`` with ``enable_gpu``/``enable_tpu`` to match)."""
    return {"id": spec.kernel_id, "title": spec.title(), "code_file": code_file, "language": "python",
            "kernel_type": "notebook", "is_private": True, **accelerators.metadata_fields(spec.machine()),
            "enable_internet": False, "dataset_sources": list(dataset_sources or [spec.dataset_id]),
            "competition_sources": [spec.competition],
            "kernel_sources": [spec.kernel_source] if spec.kernel_source else [],
            "model_sources": []}


def write_kernel_metadata(kernel: Path, spec: BundleSpec, code_file: str,
                          dataset_sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``kernel/kernel-metadata.json`` (after the notebook: its ``code_file`` must be there), checked by
    kaggle-api's push rules; returns it."""
    meta = kernel_metadata(spec, code_file, dataset_sources)
    problems = validate_kernel_metadata(meta, kernel)
    if problems:
        raise BundleError(f"kernel metadata invalid: {problems}")
    io.write_json(kernel / "kernel-metadata.json", meta)
    return meta


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


def seal(dataset: Path, kernel: Path, head: dict[str, Any]) -> dict[str, Any]:
    """Write ``dataset/manifest.json``: ``head``, sha256 + size of every dataset and kernel file, and the
    bundle's identity (the sha256 of that listing)."""
    files, kfiles = file_table(dataset, skip={MANIFEST}), file_table(kernel)
    listing = json.dumps([files, kfiles], sort_keys=True).encode()
    manifest = {**head, "files": files, "kernel_files": kfiles, "bundle_sha256": hashlib.sha256(listing).hexdigest()}
    io.write_json(dataset / MANIFEST, manifest)
    return manifest


def copy_file(src: Path, dest: Path) -> None:
    with src.open("rb") as fin, io.atomic_write(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def clear_out(out: Path) -> None:
    """Empty the parts a build writes, refusing folders that hold anything else."""
    parts = (*PARTS, *OLD_PARTS)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in parts) if out.is_dir() else []
    if foreign:
        raise BundleError(f"{out} is not a kernel bundle (it holds {foreign[:5]}); choose another --out")
    for part in parts:
        path = out / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_accelerator(spec: BundleSpec) -> accelerators.Accelerator:
    """The accelerator the kernel asks for; a retired one warns (as Kaggle's client does at push) but stays
    asked for: the metadata says what was chosen, Kaggle decides what it runs on."""
    try:
        acc = spec.machine()
    except ValueError as err:  # a config's `accelerator:` or --accelerator
        raise BundleError(str(err)) from err
    accelerators.warn_if_retired(acc)
    return acc


def check_names(spec: BundleSpec) -> None:
    if not spec.owner or not SLUG.match(spec.owner):
        raise BundleError(f"--owner {spec.owner!r} must be your Kaggle user name (lowercase, digits, hyphens)")
    problems = validate_dataset_metadata(dataset_metadata(spec, []))
    problems += validate_kernel_metadata(kernel_metadata(spec))
    if problems:
        raise BundleError("invalid Kaggle names: " + "; ".join(problems))


def resolve_bundle(spec: BundleSpec, runs: Sequence[RunInfo]) -> dict[str, Any]:
    """Which distributions go into wheels/ for these runs (:func:`resolve_wheels` of their model packages)."""
    return resolve_wheels(spec.image_list, {r.package for r in runs})


def resolve_wheels(image_list: Path, packages: Iterable[str]) -> dict[str, Any]:
    """The closure of kaggle_utils and ``packages`` (model packages), minus the Kaggle image's closure: one
    rule for the submission and the training bundle. Returns {bundle: {name: needed-by}, image: [...], ...}."""
    dists = installed()
    image_names = read_image_list(image_list)
    image, image_missing = image_distributions(image_names, dists)
    own = dists.get(OWN)
    if own is None:
        raise BundleError("kaggle_utils is not installed in this environment (pip install -e .)")
    roots = [OWN, *sorted(set(packages))]
    need, missing = closure(roots, dists, stop=image)
    bundle = {n: p for n, p in need.items() if n not in image}
    missing = [m for m in missing if m not in image]
    if missing:
        raise BundleError(f"needed but not installed here, so no version to bundle: {missing}; "
                          f"install them (requirements.txt) or add them to {image_list}")
    return {"bundle": bundle, "image": sorted(n for n in need if n in image),
            "image_not_installed_here": image_missing, "versions": {n: dists[n].version for n in bundle}}


def write_wheels(plan: dict[str, Any], wheels_dir: Path, cache: Path) -> list[dict[str, Any]]:
    """kaggle_utils built from this checkout and every other wheel of ``plan`` copied from ``cache``."""
    wheels_dir.mkdir(parents=True)
    bundled = []
    for name in sorted(plan["bundle"]):
        if name == OWN:
            path = build_own_wheel(wheels_dir)
        else:
            cached = fetch_wheel(name, plan["versions"][name], cache)
            path = wheels_dir / cached.name
            copy_file(cached, path)
        bundled.append({"name": name, "version": wheel_name(path)[1], "file": f"wheels/{path.name}",
                        "size": path.stat().st_size, "needed_by": plan["bundle"][name] or "kernel"})
    return bundled


def _check_runs_outside(runs: Sequence[Path], out: Path) -> None:
    """A run folder inside ``--out`` (a bundle's own ``dataset/models/<run>``) would be emptied before it is read."""
    inside = [str(r) for r in runs if out.resolve() in (r.resolve(), *r.resolve().parents)]
    if inside:
        raise BundleError(f"run folders {inside} lie inside --out {out}, which the build empties first: "
                          "bundle the training run folders (outputs/<chain>/runs/<run>) or choose another --out")


def build(spec: BundleSpec, progress: bool = True) -> dict[str, Any]:
    """Write the dataset and kernel folders; returns the build report (also written to ``out``)."""
    say = print if progress else (lambda *a, **k: None)
    acc = check_accelerator(spec)
    check_names(spec)
    _check_runs_outside(spec.runs, Path(spec.out))
    runs = [inspect_run(r) for r in spec.runs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise BundleError(f"run folder names must be unique (they become models/<run>): {names}")
    plan = resolve_bundle(spec, runs)
    out = Path(spec.out)
    clear_out(out)
    dataset, kernel = out / "dataset", out / "kernel"

    say(f"[kernel] wheels: kaggle_utils (built here) + {sorted(set(plan['bundle']) - {OWN}) or 'nothing else'}")
    bundled = write_wheels(plan, dataset / "wheels", spec.wheel_cache)

    models_dir, local_models = f"/kaggle/input/{spec.dataset_slug}/models", None
    if spec.kernel_source:  # the kernel reads the training kernel's output, mounted as a kernel source
        models_dir, local_models = kernel_source_models(spec.runs, spec.kernel_source)
    else:
        for run in runs:
            for fold in run.folds:
                for f in MODEL_FILES:
                    copy_file(fold / f, dataset / "models" / run.name / fold.name / f)
    weights = bundle_weights(spec.weights, dataset / "weights")[0]

    packages = ["kaggle_utils"] + sorted(n for n in plan["bundle"] if n != OWN)
    install = {"DATASET": spec.dataset_slug, "PACKAGES": packages}
    params = {"models_dir": models_dir,
              "test_csv": f"/kaggle/input/{spec.competition}/test.csv",
              "test_images": f"/kaggle/input/{spec.competition}/test_images", "tta": spec.tta}
    io.write_text(kernel / "kernel.ipynb", render_notebook(install, params))
    write_kernel_metadata(kernel, spec, "kernel.ipynb")
    dmeta = dataset_metadata(spec, runs)
    io.write_json(dataset / "dataset-metadata.json", dmeta)
    if problems := validate_dataset_metadata(dmeta, dataset):
        raise BundleError(f"dataset metadata invalid: {problems}")

    manifest = seal(dataset, kernel, {"dataset": spec.dataset_id, "kernel": spec.kernel_id,
                                      "competition": spec.competition})
    files, kfiles = manifest["files"], manifest["kernel_files"]

    def size(prefix: str, table: dict[str, dict[str, Any]]) -> int:
        return sum(v["size"] for k, v in table.items() if k.startswith(prefix))

    sizes = {"wheels": size("wheels/", files), "weights": size("weights/", files),
             "models": size("models/", files), "kernel": size("", kfiles),
             "metadata": size("dataset-metadata.json", files) + (dataset / MANIFEST).stat().st_size}
    report = {
        "dataset": spec.dataset_id, "kernel": spec.kernel_id, "competition": spec.competition,
        "accelerator": accelerators.describe(acc),
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
    if local_models is not None:
        report["kernel_source"] = {"kernel": spec.kernel_source, "models_dir": models_dir, "local": str(local_models)}
    io.write_json(out / REPORT, report)
    say(format_sizes(report))
    return report


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
                                                     for m in report["models"])
             + (f" -- not copied: read from kernel source {ks['kernel']} at {ks['models_dir']}"
                if (ks := report.get("kernel_source")) else ""),
             f"  kernel   {_mb(s['kernel'])}  kernel.ipynb + kernel-metadata.json ({report['accelerator']})",
             f"  metadata {_mb(s['metadata'])}  dataset-metadata.json + manifest.json",
             f"  not bundled (assumed on the Kaggle image, {report['image_list']}): "
             + ", ".join(report["assumed_on_kaggle_image"])]
    return "\n".join(lines)
