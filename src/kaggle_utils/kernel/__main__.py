"""``python -m kaggle_utils.kernel`` (``python build_kernel.py``): build, verify and plan the Kaggle bundle.

With no run folder it bundles the runs of the most recent chain (``outputs/*/run_log.json``), never a folder
inside a bundle (its ``dataset/models/<run>`` copies look like runs). ``--verify --data DIR`` runs the kernel
on the competition's own test set; without ``--data`` on a small bundled sample, and it says so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.kernel.bundle import BundleSpec, build
from kaggle_utils.kernel.layout import COMPETITION, BundleError, VerifyError, inside_bundle

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # what --verify-images converts to PNG


def _run_folders(folder: Path, root: Path) -> list[Path]:
    """Folders directly under ``folder`` that hold at least one ``fold*/best.pt``, none inside a bundle."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and any(d.glob("fold*/best.pt")) and not inside_bundle(d, root))


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
        runs = _run_folders(rounds[-1] if rounds else work / "runs", root)
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
    if (folder / "test.csv").is_file() and (folder / "test_images").is_dir():
        raise VerifyError("test set", f"{folder} is the competition folder (test.csv + test_images/): "
                                      f"pass it as --data {folder}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if folder.is_dir() else []
    if not images:
        raise VerifyError("test set", f"--verify-images {folder}: no {'/'.join(IMAGE_SUFFIXES)} images there")
    return images


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from kaggle_utils.kernel.plan import GPU_PROFILES, plan
    from kaggle_utils.kernel.testset import competition_folder
    from kaggle_utils.kernel.verify import verify

    ap = argparse.ArgumentParser(prog="python build_kernel.py", description="Build the Kaggle dataset + kernel bundle from trained runs.")
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
    ap.add_argument("--verify", action="store_true", help="install + run the kernel offline in a fresh venv "
                    "(in a temp folder, removed after success; --out gets only verify_report.json)")
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
    ap.add_argument("--gpu", choices=sorted(GPU_PROFILES), default="p100")
    ap.add_argument("--gpu-fraction", type=float, help="achieved fraction of GPU peak (default per model family)")
    ap.add_argument("--budget-hours", type=float, default=9.0)
    ap.add_argument("--plan-images", help="folder of real images to time preprocessing on")
    args = ap.parse_args(argv)
    if problem := _verify_options(args):
        ap.error(problem)
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
        images = _loose_images(Path(args.verify_images)) if args.verify_images else None
        if args.data:
            competition_folder(args.data)  # checked before the build: a wrong folder costs nothing
        if not args.no_build:
            build(spec)
        if args.verify:
            verify(spec.out, images, data=args.data, limit=args.verify_limit)
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
