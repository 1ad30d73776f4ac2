"""ImageNet weight files in a bundle: found offline here (:mod:`kaggle_utils.models.weights`), copied byte
for byte into ``dataset/weights/`` with a weights manifest the kernel points ``$KAGGLE_UTILS_MANIFEST`` at.

The kernel has no repository, so no ``weights/manifest.json`` of its own: the bundle's manifest lists every
file the config's models need, with the full sha256 of each bundled file (computed here, so the kernel's
check is exact even where the repository only knows a hash prefix). A file that is not here can come from a
Kaggle dataset attached to the kernel (``--weights-dataset``): its entry is listed unchanged and the kernel
finds it under ``/kaggle/input/<dataset>/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils import io
from kaggle_utils.kernel.layout import BundleError

WEIGHTS_MANIFEST = "manifest.json"  # dataset/weights/manifest.json


def find_weights(names: Sequence[str], attached: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``name -> manifest entry`` for each of ``names``, with ``path`` (the verified file here) or ``from``
    (the ``attached`` datasets it must come from). Checked before a build writes anything: a file that is
    missing here with no dataset attached for it, or that fails its hash check, is a :class:`BundleError`
    naming the file and where to put it."""
    from kaggle_utils.models import weights

    manifest = weights.load_manifest() if names else {}
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names)):
        if name not in manifest:
            raise BundleError(f"model {name!r} has no entry in {weights.MANIFEST_PATH}: no ImageNet weights "
                              "are known for it; set `pretrained: false` for it in the config")
        row = weights.list_weights(manifest={name: manifest[name]})[0]
        if row["status"] == "ok":
            path = Path(row["path"])
            cand = next((c for c in [manifest[name], *manifest[name].get("alternates", [])]
                         if c["file"] == path.name), manifest[name])
            entry = {**manifest[name], **cand, "file": path.name, "sha256": weights.sha256_file(path)}
            entry.pop("alternates", None)
            found[name] = {**entry, "path": path}
        elif row["status"] == "missing" and attached:
            found[name] = {**manifest[name], "from": list(attached)}
        else:
            problem = row["status"] if row["status"] != "missing" else "not found here"
            raise BundleError(f"ImageNet weights for {name!r}: {manifest[name]['file']} {problem}.\n"
                              + weights.how_to_get(name, manifest[name])
                              + "\nOr take it from a Kaggle dataset attached to the kernel instead of bundling "
                                "it: --weights-dataset OWNER/SLUG (weights/README.md)")
    return found


def write_weights(found: dict[str, dict[str, Any]], dest: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Copy the files :func:`find_weights` found into ``dest`` with the weights manifest the kernel reads;
    returns (bundled files, files expected from attached datasets)."""
    if not found:
        return [], []
    entries, bundled, expected = {}, [], []
    for name, entry in sorted(found.items()):
        entries[name] = {k: v for k, v in entry.items() if k not in ("path", "from")}
        if "path" in entry:
            with entry["path"].open("rb") as fin, io.atomic_write(dest / entry["file"], "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            bundled.append({"name": name, "file": f"weights/{entry['file']}", "size": entry["path"].stat().st_size,
                            "sha256": entry["sha256"]})
        else:
            expected.append({"name": name, "file": entry["file"], "from": entry["from"]})
    io.write_json(dest / WEIGHTS_MANIFEST, entries)
    return bundled, expected


def bundle_weights(names: Sequence[str], dest: Path, attached: Sequence[str] = ()
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`find_weights` then :func:`write_weights`."""
    return write_weights(find_weights(names, attached), dest)
