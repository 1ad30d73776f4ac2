"""Wheels for the bundle: our own built reproducibly from this checkout, the rest from ``wheels/``.

Same inputs, same bytes: entries sorted, a fixed 1980 date, so the manifest's hashes identify a bundle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from kaggle_utils import io
from kaggle_utils.kernel.image import KAGGLE_PLATFORM, KAGGLE_PYTHON
from kaggle_utils.kernel.layout import REPO_ROOT, WHEEL_CACHE, ZIP_DATE, BundleError, canonical


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
