"""Decode + crop + resize to 512: the public kernels' way vs kaggle_utils.data.preprocess, on the raw originals.

Naive (what APTOS kernels do): ``cv2.imread`` at full size, BGR->RGB, gray threshold crop
``img[mask.any(1)][:, mask.any(0)]`` (tol 7), ``cv2.resize`` to 512x512.
Project: ``read_image(path, 512)`` (libjpeg reduced-scale decode where the short side allows; plain PNGs
through imagecodecs' libpng + zlib-ng when installed, pixel-identical to OpenCV) + ``crop_retina`` +
``resize_square(512)``. Both single-threaded (``cv2.setNumThreads(1)``), same process, interleaved per file
so machine noise hits both alike; the best of ``--repeats`` runs counts per file.

Reduced decode only exists for JPEG, so the ratio depends on the file mix: the 10 IDRiD 4288x2848 JPEGs gain
most, the APTOS PNGs (whose full decode dominates both paths) least. The report gives JPEG, PNG/TIFF and
all-file figures; the last line is the headline over *all* raw originals (every image file in --raw).

    python bench/preprocess.py [--raw ../shared/data/raw] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kaggle_utils.data import decode
from kaggle_utils.data.decode import read_image  # noqa: E402
from kaggle_utils.data.preprocess import crop_retina, resize_square

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def naive(path: Path, size: int) -> np.ndarray:
    img = cv2.imread(str(path))
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    mask = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) > 7
    img = img[mask.any(1)][:, mask.any(0)]
    return cv2.resize(img, (size, size))


def project(path: Path, size: int) -> np.ndarray:
    return resize_square(crop_retina(read_image(path, size)), size)


def best_ms(fn: Callable[[Path, int], np.ndarray], path: Path, size: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(path, size)
        times.append(time.perf_counter() - t0)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8, (path, out.shape)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=REPO.parent / "shared" / "data" / "raw")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    files = sorted(p for p in args.raw.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise SystemExit(f"no images in {args.raw}")
    for path in files:  # warm the page cache and both code paths
        naive(path, args.size), project(path, args.size)

    print(f"PNG decoder: project {decode.png_decoder()}, naive cv2.imread")
    rows = []
    print(f"{'file':32s} {'size':>10s} {'naive ms':>9s} {'project ms':>10s} {'ratio':>6s}")
    for path in files:
        n = best_ms(naive, path, args.size, args.repeats)
        p = best_ms(project, path, args.size, args.repeats)
        h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
        rows.append((path, n, p))
        print(f"{path.name:32s} {w:>5d}x{h:<4d} {n:9.1f} {p:10.1f} {n / p:5.1f}x")

    def report(label: str, subset: list[tuple[Path, float, float]]) -> float:
        n = float(np.mean([r[1] for r in subset]))
        p = float(np.mean([r[2] for r in subset]))
        print(f"{label:40s} naive {n:7.1f} ms/image   project {p:6.1f} ms/image   {n / p:5.1f}x")
        return n / p

    print()
    jpeg = [r for r in rows if r[0].suffix.lower() in {".jpg", ".jpeg"}]
    big = [r for r in jpeg if r[0].name.startswith("idrid_")]
    other = [r for r in rows if r not in jpeg]
    if big:
        report(f"IDRiD 4288x2848 JPEG ({len(big)})", big)
    if jpeg:
        report(f"all JPEG ({len(jpeg)})", jpeg)
    if other:
        report(f"PNG/TIFF, full decode only ({len(other)})", other)
    ratio = report(f"all raw originals ({len(rows)})", rows)
    print(f"speed-up: {ratio:.1f}x")


if __name__ == "__main__":
    main()
