"""``python -m kaggle_utils.kernel`` (``python build_kernel.py``): build, verify and plan the Kaggle bundle.

With no run folder it bundles the runs of the most recent chain (``outputs/*/run_log.json``), never a folder
inside a bundle (its ``dataset/models/<run>`` copies look like runs). ``--verify --data DIR`` runs the kernel
on the competition's own test set; without ``--data`` on a small bundled sample, and it says so. A chain's
folder, or a training kernel's downloaded output, stands for its runs (:mod:`.handover`). ``--train CONFIG``
builds the training bundle instead (:mod:`.train_bundle`; ``--verify``: :mod:`.train_verify`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.kernel import accelerators
from kaggle_utils.kernel.bundle import BundleSpec, build
from kaggle_utils.kernel.handover import expand_runs, final_runs
from kaggle_utils.kernel.layout import COMPETITION, BundleError, VerifyError, inside_bundle


def latest_chain_runs(outputs: str | os.PathLike = "outputs") -> tuple[list[Path], str]:
    """The run folders of the most recently finished chain under ``outputs`` (its last pseudo-label round's
    runs, which its submission used), and a message saying which; or ``[]`` and a message listing every run
    folder found and how to choose. Lets a bare ``python build_kernel.py`` follow ``make demo``."""
    root = Path(outputs)
    logs = sorted(root.glob("*/run_log.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        work = log.parent
        runs = final_runs(work, root)
        if runs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(log.stat().st_mtime))
            return runs, (f"no run folders given: using the runs of the most recent chain, {work} (run_log.json "
                          f"{when}): {' '.join(str(r) for r in runs)}")
    found = sorted({p.parent.parent for p in root.glob("**/fold*/best.pt")
                    if not inside_bundle(p.parent.parent, root)}) if root.is_dir() else []
    if not found:
        return [], (f"error: no run folders given and none found under {root}/ (a run folder holds fold<k>/best.pt); "
                    "train first (`make demo`), then: python build_kernel.py RUN_DIR [RUN_DIR ...] --owner YOU")
    listed = "\n".join(f"  {r}" for r in found)
    return [], (f"error: no run folders given and no finished chain (run_log.json) under {root}/; run folders "
                f"found:\n{listed}\nname the ones to bundle: python build_kernel.py RUN_DIR [RUN_DIR ...] --owner YOU")


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _verify_options(args: Any) -> str | None:
    """Why the test-set options make no sense together, or None: each one only changes what --verify runs on."""
    given = [f"--{name.replace('_', '-')}" for name in ("data", "verify_images", "verify_limit")
             if getattr(args, name) is not None]
    if given and not args.verify:
        return f"{' and '.join(given)} only choose --verify's test set: add --verify"
    if args.verify_limit is not None and args.data is None:
        return "--verify-limit N takes the first N ids of --data DIR's test.csv: add --data DIR"
    return None


def _loose_images(folder: Path) -> list[Path]:
    """The image files of ``--verify-images DIR``; the competition folder belongs to ``--data`` instead."""
    from kaggle_utils.data.labels import IMAGE_EXTS  # the formats every reader resolves

    if (folder / "test.csv").is_file() and (folder / "test_images").is_dir():
        raise VerifyError("test set", f"{folder} is the competition folder (test.csv + test_images/): "
                                      f"pass it as --data {folder}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS) \
        if folder.is_dir() else []
    if not images:
        raise VerifyError("test set", f"--verify-images {folder}: no {'/'.join(IMAGE_EXTS)} images there")
    return images


TRAIN_ONLY = ("attach", "weights_dataset")  # options of the training bundle only
SUBMISSION_ONLY = ("runs", "competition", "weights", "kernel_source", "data", "verify_images", "verify_limit",
                   "plan", "plan_images")  # options of the submission bundle only


def _parser() -> Any:
    import argparse

    from kaggle_utils.kernel.plan import GPU_PROFILES

    ap = argparse.ArgumentParser(prog="python build_kernel.py", description="Build the Kaggle dataset + kernel "
                                 "bundle from trained runs (submission), or for training a config (--train).")
    ap.add_argument("runs", nargs="*", help="run folders (fold*/best.pt), e.g. outputs/demo/runs/lite0, or a "
                    "chain's folder / a downloaded training kernel output (its runs); default: the runs of the "
                    "most recent chain under outputs/")
    ap.add_argument("--train", metavar="CONFIG", help="build the training bundle of this chain config instead: "
                    "a dataset + GPU kernel that runs it on Kaggle (docs/bundles.md)")
    ap.add_argument("--out", help="bundle folder (default outputs/kernel_bundle; with --train "
                    "outputs/train_bundle_<config>)")
    ap.add_argument("--owner", help=f"your Kaggle user name (default {BundleSpec.owner!r}, with a warning)")
    ap.add_argument("--dataset-slug", help=f"default {BundleSpec.dataset_slug}; with --train "
                    "kaggle-utils-train-<config>")
    ap.add_argument("--dataset-title")
    ap.add_argument("--kernel-slug", help=f"default {BundleSpec.kernel_slug}; with --train the dataset's")
    ap.add_argument("--kernel-title", help="default: from the kernel slug (Kaggle links the two)")
    ap.add_argument("--competition", help=f"default {COMPETITION} (with --train: the config's)")
    ap.add_argument("--license", help=f"one Kaggle licence name (default {BundleSpec.license})")
    ap.add_argument("--accelerator", metavar="NAME", help="what the kernel asks Kaggle for (kernel-metadata.json's "
                    f"machine_shape): {', '.join(accelerators.ACCELERATORS)} or a Kaggle machine_shape; default "
                    f"{accelerators.DEFAULT} (with --train: the config's `accelerator:`, else {accelerators.DEFAULT}); "
                    "p100 is retired (it warns: Kaggle runs it on T4 x2)")
    ap.add_argument("--weights", action="append", default=[], metavar="NAME",
                    help="also bundle these ImageNet weights (not needed for inference)")
    ap.add_argument("--kernel-source", metavar="OWNER/SLUG", help="the training kernel whose output holds the "
                    "runs: the kernel reads them there (attached as a kernel source), the dataset carries no copy")
    ap.add_argument("--attach", action="append", default=[], metavar="OWNER/SLUG", help="with --train: a Kaggle "
                    "dataset the config reads (/kaggle/input/SLUG), attached to the training kernel")
    ap.add_argument("--weights-dataset", action="append", default=[], metavar="OWNER/SLUG", help="with --train: "
                    "a Kaggle dataset holding the ImageNet files not found here (attached instead of bundling them)")
    ap.add_argument("--tta", default="hflip", help="the kernel's TTA (and the plan's)")
    ap.add_argument("--no-build", action="store_true", help="use the bundle already in --out")
    ap.add_argument("--verify", action="store_true", help="install + run the kernel offline in a fresh venv "
                    "(in a temp folder, removed after success; --out gets only verify_report.json); with --train "
                    "the training kernel with the smoke override on an emulated /kaggle/input")
    test = ap.add_mutually_exclusive_group()
    test.add_argument("--data", metavar="DIR", help="the competition folder (test.csv + test_images/*.png, as "
                      "Kaggle mounts it): --verify runs the kernel on its test set (default: a 6-image bundled "
                      "sample, and --verify says so)")
    test.add_argument("--verify-images", metavar="DIR", help="a folder of loose test images (PNG, JPEG, TIFF; "
                      "converted to PNG) for --verify, instead of --data")
    ap.add_argument("--verify-limit", type=_positive, metavar="N",
                    help="with --data: verify on the first N ids of test.csv only (default: all)")
    ap.add_argument("--plan", action="store_true", help="predict the kernel's run time on Kaggle")
    ap.add_argument("--images", type=int, default=13_000, help="test-set size for --plan (default %(default)s)")
    ap.add_argument("--gpu", choices=sorted(GPU_PROFILES),
                    help="price --plan on this GPU profile instead of the accelerator's (default: t4 for t4x2)")
    ap.add_argument("--gpu-fraction", type=float, help="achieved fraction of GPU peak (default per model family)")
    ap.add_argument("--budget-hours", type=float, default=9.0)
    ap.add_argument("--plan-images", help="folder of real images to time preprocessing on")
    return ap


def _mode_problem(args: Any) -> str | None:
    """An option given to the bundle it does not belong to."""
    given = [n for n in (SUBMISSION_ONLY if args.train else TRAIN_ONLY) if getattr(args, n) not in (None, [], False)]
    if not given:
        return None
    flags = [f"--{n.replace('_', '-')}" if n != "runs" else "run folders" for n in given]
    return (f"{', '.join(flags)}: only for the submission bundle (without --train)" if args.train
            else f"{', '.join(flags)}: only with --train CONFIG (the training bundle)")


def _warn_owner(args: Any, dataset: str, kernel: str) -> None:
    if args.owner is None:
        print(f"warning: no --owner: assumed Kaggle user {BundleSpec.owner!r} (dataset {BundleSpec.owner}/{dataset}, "
              f"kernel {BundleSpec.owner}/{kernel})" + ("" if args.license else f" and licence {BundleSpec.license}")
              + "; `kaggle datasets create` needs your own user name: pass --owner YOUR_KAGGLE_NAME", file=sys.stderr)


@contextlib.contextmanager
def _warning_lines() -> Iterator[None]:
    """A retired accelerator as a plain ``warning:`` line on stderr, as Kaggle's client prints its own; any
    other warning is shown as Python shows it."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if issubclass(category, accelerators.RetiredAcceleratorWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", accelerators.RetiredAcceleratorWarning)
        yield


def _accelerator_problem(args: Any) -> str | None:
    """Why ``--accelerator`` names nothing Kaggle could run, checked before any build."""
    if args.accelerator is None:
        return None
    try:
        accelerators.resolve(args.accelerator)
    except ValueError as err:
        return f"--accelerator: {err}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if problem := (_mode_problem(args) or _accelerator_problem(args)
                   or (None if args.train else _verify_options(args))):
        ap.error(problem)
    try:
        return _training(args) if args.train else _submission(args)
    except (BundleError, VerifyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _training(args: Any) -> int:
    """``--train CONFIG``: the training bundle, and with ``--verify`` its smoke run offline."""
    from kaggle_utils.kernel.train_bundle import TrainBundleSpec, build_training, default_out
    from kaggle_utils.kernel.train_verify import verify_training

    spec = TrainBundleSpec(Path(args.train), Path(args.out or default_out(args.train)),
                           args.owner or BundleSpec.owner, args.dataset_slug, args.dataset_title, args.kernel_slug,
                           args.kernel_title, args.license or BundleSpec.license, args.attach, args.weights_dataset,
                           args.accelerator)
    names = spec.names(COMPETITION)
    _warn_owner(args, names.dataset_slug, names.kernel_slug)
    if not args.no_build:
        with _warning_lines():
            build_training(spec)
    if args.verify:
        verify_training(spec.out)
    return 0


def _submission(args: Any) -> int:
    """The submission bundle from trained runs (a chain's folder or a downloaded kernel output: its runs)."""
    from kaggle_utils.kernel.plan import plan
    from kaggle_utils.kernel.testset import competition_folder
    from kaggle_utils.kernel.verify import verify

    if not args.runs:
        found, message = latest_chain_runs()
        print(message, file=sys.stderr if not found else sys.stdout)
        if not found:
            return 2
        args.runs = [str(r) for r in found]
    runs, said = expand_runs(args.runs)
    for line in said:
        print(line)
    spec = BundleSpec(runs, Path(args.out or "outputs/kernel_bundle"), args.owner or BundleSpec.owner,
                      args.dataset_slug or BundleSpec.dataset_slug, args.dataset_title or BundleSpec.dataset_title,
                      args.kernel_slug or BundleSpec.kernel_slug, args.kernel_title, args.competition or COMPETITION,
                      args.license or BundleSpec.license, args.weights, args.tta, args.kernel_source,
                      args.accelerator or accelerators.DEFAULT)
    _warn_owner(args, spec.dataset_slug, spec.kernel_slug)
    images = _loose_images(Path(args.verify_images)) if args.verify_images else None
    if args.data:
        competition_folder(args.data)  # checked before the build: a wrong folder costs nothing
    if not args.no_build:
        with _warning_lines():
            build(spec)
    if args.verify:
        verify(spec.out, images, data=args.data, limit=args.verify_limit)
    if args.plan:
        imgs = sorted(Path(args.plan_images).glob("*.*")) if args.plan_images else None
        acc = accelerators.resolve(args.accelerator).effective()  # a retired P100 runs on T4 x2
        _, table = plan([str(r) for r in runs], args.images, args.tta, args.gpu or acc.profile or "t4",
                        args.gpu_fraction, args.budget_hours, imgs, gpus=max(1, acc.gpus))
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
