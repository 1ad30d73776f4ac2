"""The hand-over from the training kernel to the submission bundle: where a chain's runs are.

The training kernel leaves its chain under ``/kaggle/working/<workdir>/`` (``run_log.json``, ``runs/<run>/
fold<k>/best.pt``, ...). That output reaches the submission bundle two ways, both by the same layout:

* downloaded (``kaggle kernels output OWNER/SLUG -p DIR``): ``DIR/<workdir>/...``; ``build_kernel.py DIR``
  (or ``DIR/<workdir>``) finds the chain's runs, as ``DIR/<workdir>/runs/<run>`` names one;
* attached to the submission kernel as a kernel source (``--kernel-source OWNER/SLUG``): Kaggle mounts the
  output at ``/kaggle/input/<slug>/<workdir>/...``, so the kernel reads the checkpoints there and the
  dataset carries no copy of them; the local copy (downloaded, or the folder the chain ran in) is only read
  for what the bundle must know: the folds and each run's model package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kaggle_utils.kernel.layout import SLUG, BundleError, inside_bundle

RUN_LOG = "run_log.json"  # kaggle_utils.run.chain.LOG_FILE (the run layer sits above this one)


def is_run(folder: Path) -> bool:
    """A run folder: ``fold<k>/best.pt`` inside."""
    return folder.is_dir() and any(folder.glob("fold*/best.pt"))


def run_folders(folder: Path, root: Path) -> list[Path]:
    """Folders directly under ``folder`` that hold at least one ``fold*/best.pt``, none inside a bundle."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if is_run(d) and not inside_bundle(d, root))


def final_runs(work: Path, root: Path) -> list[Path]:
    """The runs a chain's submission used: its last pseudo-label round's, else ``runs/``."""
    rounds = sorted((d for d in work.glob("runs_round*") if d.name[10:].isdigit()), key=lambda d: int(d.name[10:]))
    return run_folders(rounds[-1] if rounds else work / "runs", root)


def chain_workdir(folder: Path) -> Path | None:
    """``folder`` when a chain ran in it (``run_log.json``), else the one chain directly under it (a
    downloaded kernel output); None when there is none. Several chains: an error naming them."""
    if (folder / RUN_LOG).is_file():
        return folder
    found = sorted(p.parent for p in folder.glob(f"*/{RUN_LOG}"))
    if len(found) > 1:
        raise BundleError(f"{folder} holds several chains ({', '.join(str(f) for f in found)}): name one")
    return found[0] if found else None


def expand_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Run folders as given, with a chain's folder (or a downloaded kernel output holding one) replaced by
    that chain's final runs; returns them and a line for each replacement."""
    runs, said = [], []
    for given in map(Path, paths):
        work = None if is_run(given) else chain_workdir(given)
        if work is None:
            runs.append(given)  # a run folder, or a mistake inspect_run names
            continue
        found = final_runs(work, given)
        if not found:
            raise BundleError(f"{work} is a chain's folder ({RUN_LOG}) but holds no run with fold*/best.pt: "
                              "did the training kernel finish?")
        said.append(f"{given}: the runs of the chain in {work}: {' '.join(r.name for r in found)}")
        runs.extend(found)
    return runs, said


def kernel_source_models(runs: Sequence[Path], kernel_source: str) -> tuple[str, Path]:
    """Where the submission kernel reads ``runs`` when the training kernel ``OWNER/SLUG`` is attached as a
    kernel source (``/kaggle/input/<slug>/<workdir>/runs``), and the local folder that stands for it.

    The kernel grades with every run of that folder, so ``runs`` must be all of them; the chain's folder
    (``run_log.json``) fixes the path inside the kernel's output."""
    owner, _, slug = kernel_source.partition("/")
    if not (owner and SLUG.match(owner) and SLUG.match(slug) and len(slug) >= 5):
        raise BundleError(f"--kernel-source {kernel_source!r} must be OWNER/KERNEL-SLUG (the training kernel)")
    parents = {r.resolve().parent for r in runs}
    if len(parents) != 1:
        raise BundleError(f"--kernel-source: the runs lie in several folders {sorted(map(str, parents))}; the "
                          "kernel reads one runs folder of the training kernel's output")
    parent = parents.pop()
    every = run_folders(parent, parent)
    if sorted(r.resolve() for r in every) != sorted(r.resolve() for r in runs):
        raise BundleError(f"--kernel-source: the kernel grades with every run in {parent} "
                          f"({[r.name for r in every]}), not only {[r.name for r in runs]}: bundle them all, "
                          "or bundle the checkpoints in the dataset instead (no --kernel-source)")
    work = next((d for d in (parent, *parent.parents) if (d / RUN_LOG).is_file()), None)
    if work is None:
        raise BundleError(f"--kernel-source: {parent} lies in no chain folder ({RUN_LOG}), so where the kernel "
                          "finds it in the training kernel's output is unknown; pass the downloaded output "
                          "(kaggle kernels output OWNER/SLUG -p DIR) or the folder the chain ran in")
    return f"/kaggle/input/{slug}/{parent.relative_to(work.parent).as_posix()}", parent
