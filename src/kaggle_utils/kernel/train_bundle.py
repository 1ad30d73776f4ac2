"""The training bundle (``build_kernel.py --train CONFIG``): a dataset and a GPU kernel that run one config's
chain on Kaggle, offline, and leave runs the submission bundle takes as they are.

``DIR/dataset``  (``kaggle datasets create -p DIR/dataset --dir-mode tar``)
    wheels/            kaggle_utils + the runtime dependencies the Kaggle image lacks (the submission
                       bundle's closure rule, :func:`~kaggle_utils.kernel.bundle.resolve_wheels`)
    config/<name>      the config, byte for byte
    notebooks/         the chain's notebooks (an installed kaggle_utils has no repository beside it)
    weights/           the ImageNet files the config's models start from + their manifest (full sha256)
    manifest.json, dataset-metadata.json
``DIR/kernel``   (``kaggle kernels push -p DIR/kernel``): train_kernel.ipynb + kernel-metadata.json (the
                 accelerator: ``--accelerator``, else the config's ``accelerator:``, else T4 x2; internet off;
                 the competition, this dataset and the ``--attach``/``--weights-dataset`` ones)

Same inputs, same bytes, as the submission bundle (the same wheel normalisation, copies and key-sorted JSON).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_utils import io
from kaggle_utils.kernel import accelerators
from kaggle_utils.kernel.bundle import (
    BundleSpec,
    check_accelerator,
    check_names,
    clear_out,
    copy_file,
    model_package,
    resolve_wheels,
    seal,
    validate_dataset_metadata,
    write_kernel_metadata,
    write_wheels,
)
from kaggle_utils.kernel.layout import (
    CHAIN_NOTEBOOKS,
    COMPETITION,
    EMULATION,
    IMAGE_LIST,
    MANIFEST,
    OWN,
    REPO_ROOT,
    REPORT,
    SLUG,
    TRAIN_NOTEBOOK,
    WHEEL_CACHE,
    BundleError,
    slugify,
)
from kaggle_utils.kernel.notebook import render_notebook
from kaggle_utils.kernel.pretrained import find_weights, write_weights
from kaggle_utils.kernel.training import (
    SMOKE,
    competition_mount,
    external_mounts,
    model_needs,
    not_on_kaggle,
    read_config,
)

CODE_FILE = "train_kernel.ipynb"


@dataclass
class TrainBundleSpec:
    """What to bundle for training and under which Kaggle names (defaults follow the config's file name)."""

    config: Path
    out: Path
    owner: str = BundleSpec.owner
    dataset_slug: str | None = None
    dataset_title: str | None = None
    kernel_slug: str | None = None
    kernel_title: str | None = None
    license: str = BundleSpec.license
    attach: list[str] = field(default_factory=list)  # OWNER/SLUG datasets the config reads (external data)
    weights_datasets: list[str] = field(default_factory=list)  # OWNER/SLUG datasets holding weights not here
    accelerator: str | None = None  # --accelerator; None: the config's `accelerator:`, else t4x2
    image_list: Path = IMAGE_LIST
    wheel_cache: Path = WHEEL_CACHE

    def names(self, competition: str, cfg: dict[str, Any] | None = None) -> BundleSpec:
        """The Kaggle names and accelerator as a :class:`BundleSpec` (so both bundles share its checks and
        metadata); the accelerator is ``--accelerator``, else the config's ``accelerator:``, else t4x2."""
        stem = slugify(Path(self.config).stem)
        slug = f"kaggle-utils-train-{stem}"[:50].strip("-")
        title = f"kaggle_utils training {Path(self.config).stem}"[:50]
        accelerator = self.accelerator or (cfg or {}).get("accelerator") or accelerators.DEFAULT
        return BundleSpec([], Path(self.out), self.owner, self.dataset_slug or slug, self.dataset_title or title,
                          self.kernel_slug or slug, self.kernel_title, competition, self.license,
                          accelerator=str(accelerator))


def _check_refs(refs: list[str], flag: str) -> None:
    for ref in refs:
        owner, _, slug = ref.partition("/")
        if not (SLUG.match(owner) and SLUG.match(slug)):
            raise BundleError(f"{flag} {ref!r} must be OWNER/DATASET-SLUG, as in the dataset's Kaggle URL")


def _read(spec: TrainBundleSpec) -> tuple[dict[str, Any], str]:
    """The config and the competition it trains on; anything a Kaggle kernel could not run is an error."""
    try:
        cfg = read_config(spec.config)
    except (OSError, ValueError) as err:
        raise BundleError(f"--train {spec.config}: {err}") from err
    problems = not_on_kaggle(cfg)
    if problems:
        raise BundleError(f"--train {spec.config} cannot run in a Kaggle kernel: " + "; ".join(problems))
    return cfg, competition_mount(cfg) or COMPETITION


def _notebooks(dest: Path) -> None:
    for name in CHAIN_NOTEBOOKS:
        copy_file(REPO_ROOT / "notebooks" / f"{name}.ipynb", dest / f"{name}.ipynb")


def _weights(cfg: dict[str, Any], spec: TrainBundleSpec) -> dict[str, dict[str, Any]]:
    """The ImageNet files of every model that starts from ImageNet; a path given in the config is its own."""
    needs = model_needs(cfg)
    paths = [n for n in needs if isinstance(n.pretrained, str)]
    outside = [f"{n.name}: {n.pretrained}" for n in paths if not n.pretrained.startswith("/kaggle/input/")]
    if outside:
        raise BundleError(f"pretrained paths outside /kaggle/input (the kernel cannot see them): {outside}")
    return find_weights([n.model for n in needs if n.pretrained is True], spec.weights_datasets)


def _sources(names: BundleSpec, spec: TrainBundleSpec) -> list[str]:
    return list(dict.fromkeys([names.dataset_id, *spec.attach, *spec.weights_datasets]))


def build_training(spec: TrainBundleSpec, progress: bool = True) -> dict[str, Any]:
    """Write the training dataset and kernel; returns the build report (also written to ``out``)."""
    say = print if progress else (lambda *a, **k: None)
    cfg, competition = _read(spec)
    names = spec.names(competition, cfg)
    acc = check_accelerator(names)
    check_names(names)
    _check_refs(spec.attach, "--attach")
    _check_refs(spec.weights_datasets, "--weights-dataset")
    attached = {ref.partition("/")[2] for ref in spec.attach}
    unattached = [m for m in external_mounts(cfg) if m not in attached]
    packages = {model_package(n.model) for n in model_needs(cfg)}
    plan = resolve_wheels(spec.image_list, packages)
    found = _weights(cfg, spec)  # before anything is written: a missing file costs nothing
    out = Path(spec.out)
    clear_out(out)
    dataset, kernel = out / "dataset", out / "kernel"

    say(f"[kernel] training bundle for {spec.config}: kaggle_utils (built here) + "
        f"{sorted(set(plan['bundle']) - {OWN}) or 'nothing else'}")
    wheels = write_wheels(plan, dataset / "wheels", spec.wheel_cache)
    config_name = Path(spec.config).name
    copy_file(Path(spec.config), dataset / "config" / config_name)
    _notebooks(dataset / "notebooks")
    weights, expected = write_weights(found, dataset / "weights")

    pip_names = ["kaggle_utils"] + sorted(n for n in plan["bundle"] if n != OWN)
    install = {"DATASET": names.dataset_slug, "PACKAGES": pip_names}
    params = {"config": f"/kaggle/input/{names.dataset_slug}/config/{config_name}", "kernel_id": names.kernel_id,
              "require_gpu": acc.enable_gpu}  # a CPU kernel must not stop for want of a GPU it did not ask for
    io.write_text(kernel / CODE_FILE, render_notebook(install, params, TRAIN_NOTEBOOK))
    write_kernel_metadata(kernel, names, CODE_FILE, _sources(names, spec))
    dmeta = _dataset_metadata(names, config_name, cfg)
    io.write_json(dataset / "dataset-metadata.json", dmeta)
    if problems := validate_dataset_metadata(dmeta, dataset):
        raise BundleError(f"dataset metadata invalid: {problems}")
    manifest = seal(dataset, kernel, {"kind": "training", "dataset": names.dataset_id, "kernel": names.kernel_id,
                                      "competition": competition, "config": config_name})
    report = _report(spec, names, cfg, manifest, plan, wheels, weights, expected, unattached, pip_names)
    io.write_json(out / REPORT, report)
    say(format_training(report))
    return report


def _dataset_metadata(names: BundleSpec, config_name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    models = "\n".join(f"- `{n.name}`: {n.model}" for n in model_needs(cfg))
    return {"title": names.dataset_title, "id": names.dataset_id, "licenses": [{"name": names.license}],
            "description": f"Offline training bundle built by kaggle_utils `build_kernel.py --train {config_name}`: "
                           "wheels/ (pip install --no-index --find-links), config/, the chain's notebooks/, "
                           "weights/ (ImageNet files + manifest), manifest.json (sha256 of every file).\n\n"
                           + models + "\n"}


def _report(spec: TrainBundleSpec, names: BundleSpec, cfg: dict[str, Any], manifest: dict[str, Any],
            plan: dict[str, Any], wheels: list, weights: list, expected: list, unattached: list[str],
            pip_names: list[str]) -> dict[str, Any]:
    files, kfiles = manifest["files"], manifest["kernel_files"]

    def size(prefix: str, table: dict[str, dict[str, Any]] = files) -> int:
        return sum(v["size"] for k, v in table.items() if k.startswith(prefix))

    sizes = {"wheels": size("wheels/"), "weights": size("weights/"), "config": size("config/"),
             "notebooks": size("notebooks/"), "kernel": size("", kfiles),
             "metadata": size("dataset-metadata.json") + (Path(spec.out) / "dataset" / MANIFEST).stat().st_size}
    return {
        "kind": "training", "config": str(spec.config), "dataset": names.dataset_id, "kernel": names.kernel_id,
        "competition": names.competition, "accelerator": accelerators.describe(names.machine()),
        "bundle_sha256": manifest["bundle_sha256"], "sizes": sizes,
        "total_bytes": sum(sizes.values()), "files": {k: v["size"] for k, v in files.items()},
        "wheels": wheels, "assumed_on_kaggle_image": plan["image"], "image_list": spec.image_list.name,
        "install": f"pip install --no-index --find-links /kaggle/input/{names.dataset_slug}/wheels "
                   + " ".join(pip_names),
        "models": [dataclasses.asdict(n) for n in model_needs(cfg)],
        "weights": weights, "weights_from_attached_datasets": expected,
        "dataset_sources": _sources(names, spec), "unattached_inputs": unattached,
        "workdir": cfg["workdir"], "smoke": SMOKE,
        "upload": ["kaggle datasets create -p dataset --dir-mode tar", "kaggle kernels push -p kernel"],
        "verify_emulation": EMULATION,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:8.2f} MB" if n >= 1e5 else f"{n / 1e3:8.1f} kB"


def format_training(report: dict[str, Any]) -> str:
    s = report["sizes"]
    weights = ", ".join(f"{w['file'][8:]} ({w['name']})" for w in report["weights"]) or "none"
    if report["weights_from_attached_datasets"]:
        weights += "; from the attached " + ", ".join(report["weights_from_attached_datasets"][0]["from"]) + ": " \
            + ", ".join(w["file"] for w in report["weights_from_attached_datasets"])
    lines = [f"[kernel] training bundle {report['dataset']} -> kernel {report['kernel']} "
             f"(sha256 {report['bundle_sha256'][:16]}, {_mb(report['total_bytes']).strip()})",
             f"  wheels    {_mb(s['wheels'])}  " + ", ".join(w["file"][7:] for w in report["wheels"]),
             f"  weights   {_mb(s['weights'])}  {weights}",
             f"  config    {_mb(s['config'])}  " + Path(report["config"]).name,
             f"  notebooks {_mb(s['notebooks'])}  " + ", ".join(f"{n}.ipynb" for n in CHAIN_NOTEBOOKS),
             f"  kernel    {_mb(s['kernel'])}  {CODE_FILE} + kernel-metadata.json ({report['accelerator']}; "
             "attaches " + ", ".join(report["dataset_sources"]) + f" and the competition {report['competition']})"]
    if report["unattached_inputs"]:
        lines.append("warning: the config reads /kaggle/input/" + ", /kaggle/input/".join(report["unattached_inputs"])
                     + ", which kernel-metadata.json does not attach: pass --attach OWNER/SLUG for each (or "
                       "attach them in Kaggle's editor before running)")
    return "\n".join(lines)


def default_out(config: str | os.PathLike) -> Path:
    return Path("outputs") / f"train_bundle_{Path(config).stem}"
