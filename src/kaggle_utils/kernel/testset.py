"""What the kernel reads as its test set under ``build_kernel.py --verify``, laid out as Kaggle mounts a
competition: the competition's own (``--data DIR``: ``test.csv`` + ``test_images/``), a folder of images
(``--verify-images``), or a small bundled sample, and a line saying which, so a sample run is never taken
for a check on the real test set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from kaggle_utils import io
from kaggle_utils.kernel.layout import REPO_ROOT, VerifyError


def layout_test_set(images: Sequence[Path], comp_dir: Path) -> list[str]:
    """``test.csv`` + ``test_images/<id>.png`` + ``sample_submission.csv``, as Kaggle mounts a competition."""
    import cv2

    (comp_dir / "test_images").mkdir(parents=True, exist_ok=True)
    ids = []
    for path in images:
        rid = Path(path).stem
        dest = comp_dir / "test_images" / f"{rid}.png"
        if Path(path).suffix.lower() == ".png":
            shutil.copyfile(path, dest)
        else:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img is None or not cv2.imwrite(str(dest), img):
                raise VerifyError("test set", f"cannot convert {path} to PNG")
        ids.append(rid)
    if len(set(ids)) != len(ids):
        raise VerifyError("test set", f"test image names repeat: {ids}")
    io.write_text(comp_dir / "test.csv", "id_code\n" + "".join(f"{i}\n" for i in ids))
    io.write_text(comp_dir / "sample_submission.csv", "id_code,diagnosis\n" + "".join(f"{i},0\n" for i in ids))
    return ids


def default_test_images(n: int = 6) -> list[Path]:
    """Real APTOS PNGs (the competition's format) from ../shared/data/raw when present, then sample JPEGs."""
    raw = REPO_ROOT.parent / "shared" / "data" / "raw"
    found = sorted(raw.glob("aptos_*.png"))[:2]
    found += sorted((REPO_ROOT / "data" / "sample" / "images").glob("*.jpg"))[: max(0, n - len(found))]
    return found


def competition_folder(data: str | os.PathLike) -> Path:
    """``data`` if it is laid out like the competition (``test.csv`` + ``test_images/``); checked before the
    build so a wrong folder costs nothing."""
    folder = Path(data)
    missing = [name for name in ("test.csv", "test_images") if not (folder / name).exists()]
    if missing:
        raise VerifyError("test set", f"{folder} is not the competition folder (it lacks {' and '.join(missing)}): "
                                      "pass the folder that holds test.csv and test_images/*.png")
    return folder


def link_competition_test_set(data: Path, comp_dir: Path, limit: int | None = None) -> tuple[list[str], int]:
    """The competition's own test set where the kernel expects it: ``test.csv`` (byte for byte, or its first
    ``limit`` rows) and links to ``test_images/<id>.png``, nothing copied. A missing image stays missing, as
    it would on Kaggle (the kernel gives it the fallback grade). Returns the ids (text as written) and how
    many test.csv lists."""
    from kaggle_utils.data.sources import test_table

    try:
        table = test_table(data / "test.csv", data / "test_images", ext=".png")
    except ValueError as err:  # SourceError: repeated or blank ids, wrong extension, empty file
        raise VerifyError("test set", str(err)) from err
    total = len(table)
    if limit is not None and limit < total:
        table = table.head(limit)
        rows = io.read_csv(data / "test.csv", text=None, na_filter=False, nrows=limit)
        io.write_csv(comp_dir / "test.csv", rows)
    else:
        comp_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "test.csv", comp_dir / "test.csv")
    (comp_dir / "test_images").mkdir(parents=True, exist_ok=True)
    for path in map(Path, table["path"]):
        if path.is_file():
            (comp_dir / "test_images" / path.name).symlink_to(path.resolve())
    ids = table["id"].tolist()
    io.write_text(comp_dir / "sample_submission.csv", "id_code,diagnosis\n" + "".join(f"{i},0\n" for i in ids))
    return ids, total


def prepare_test_set(comp_dir: Path, data: str | os.PathLike | None,
                     images: Sequence[str | os.PathLike] | None, n_images: int = 6, limit: int | None = None
                     ) -> tuple[list[str], str]:
    """Lay out the test set the kernel will read; returns its ids and a line saying which test set it is."""
    if data is not None:
        folder = competition_folder(data)
        ids, total = link_competition_test_set(folder, comp_dir, limit)
        part = f"all {total}" if len(ids) == total else f"the first {len(ids)} of {total}"
        return ids, f"{part} test ids of the competition data {folder} (test.csv + test_images/)"
    chosen = [Path(p) for p in images] if images else default_test_images(n_images)
    if not chosen:
        raise VerifyError("test set", "no test images given and none found in data/sample/images")
    ids = layout_test_set(chosen, comp_dir)
    if images:
        return ids, f"{len(ids)} images from {chosen[0].parent} (as PNGs), not the competition's test set"
    folders = ", ".join(sorted({os.path.relpath(p.parent, REPO_ROOT) for p in chosen}))
    return ids, (f"{len(ids)} bundled sample images ({folders}), not the competition's test set: pass --data DIR "
                 "(the folder with test.csv + test_images/) to verify on it")
