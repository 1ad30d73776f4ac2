"""What a bundle is made of: repository paths, file and folder names, the emulation note, and the errors.

The bottom of :mod:`kaggle_utils.kernel`: bundle, verify and plan all read these; it imports nothing of them.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
IMAGE_LIST = REPO_ROOT / "configs" / "kaggle_image.txt"
WHEEL_CACHE = REPO_ROOT / "wheels"
NOTEBOOK = REPO_ROOT / "notebooks" / "kernel.py"
TRAIN_NOTEBOOK = REPO_ROOT / "notebooks" / "train_kernel.py"  # the training kernel (build_kernel.py --train)
CHAIN_NOTEBOOKS = ("preprocess", "train", "infer", "blend")  # what the chain runs: the training bundle ships them
COMPETITION = "aptos2019-blindness-detection"


MODEL_FILES = ("best.pt", "config.json", "oof.csv")  # never last.pt: resume state is useless on Kaggle
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FALLBACK = "OFFLINE-INSTALL-FALLBACK"  # printed by the kernel's install cell when it had to skip resolution
INPUT_ENV = "KAGGLE_UTILS_INPUT"  # read by the kernel's install cell; only --verify sets it
REPORT = "build_report.json"
VERIFY_REPORT = "verify_report.json"
UPLOAD = ("dataset", "kernel")  # the two folders `kaggle datasets create` / `kaggle kernels push` upload
PARTS = (*UPLOAD, REPORT, VERIFY_REPORT)  # everything a build or verify writes in --out (the reports: a few kB)
OLD_PARTS = ("verify",)  # --verify's workspace, which older versions left in --out: a rebuild removes it
BUNDLE_MARKERS = ("dataset-metadata.json", "kernel-metadata.json", REPORT)  # a folder holding one is a bundle('s)
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


SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class BundleError(RuntimeError):
    """The bundle cannot be built as asked; the message names the run, file or package and what to do."""


class VerifyError(RuntimeError):
    """A verify step failed; ``step`` names it and the message names the missing wheel, file or cell."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"[verify: {step}] {message}")
        self.step, self.detail = step, message


def inside_bundle(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a bundle below ``root`` (it or an ancestor up to ``root`` holds a marker file):
    a bundle's ``dataset/models/<run>`` looks like a run folder but is a copy, never a run to bundle."""
    folders = [path, *path.parents]
    below = folders[: folders.index(root) + 1] if root in folders else folders[:1]
    return any((d / m).is_file() for d in below for m in BUNDLE_MARKERS)


def canonical(name: str) -> str:
    """PEP 503 name: ``Efficientnet_Lite.PyTorch`` and ``efficientnet-lite-pytorch`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def slugify(text: str) -> str:
    """Kaggle derives a kernel's URL slug from its title like this (python-slugify, lower case)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
