"""How near each natural-colour source comes to the APTOS Ben copy's look, per Ben Graham blur size.

The APTOS copy the models train on was Ben-filtered before it was shrunk to 224 px; a clinic's photograph is
filtered by ``preprocess.natural_recipe`` at the model's size. This prints ``preprocess.look_distance`` (RMS
log-ratio of band energies; 0 = the same contrast at every scale) of each source, filtered with blurs from
r/100 to the 2015 recipe's r/30, to the copy, and marks ``natural_recipe``'s. Labels are not read.

    python bench/look.py [--n 40] [--size 224]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from kaggle_utils.data import preprocess  # noqa: E402
from kaggle_utils.data.decode import read_image  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = {"idrid": ("idrid_train/images", "*.jpg"), "eyepacs810": ("eyepacs1024/images", "*"),
           "eyepacs_equalised": ("eyepacs256_equalised/images", "*")}
FRACTIONS = (100, 80, 64, 56, 48, 40, 30)


def _some(folder: str, pattern: str, n: int) -> list[Path]:
    files = sorted((DATA / folder).glob(pattern))
    return files[:: max(1, len(files) // n)][:n]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="images per source (evenly spaced)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    copy = [read_image(p) for p in _some("aptos2019_ben224/train_images", "*.jpg", args.n)]
    base = preprocess.natural_recipe(preprocess.PreprocessConfig(size=args.size))
    print(f"look distance to the APTOS Ben copy ({args.n} images each; natural_recipe: "
          f"r/{1 / base.ben_sigma_frac:.0f})")
    print("source".ljust(18) + "".join(f"r/{f}".rjust(8) for f in FRACTIONS))
    for name, (folder, pattern) in SOURCES.items():
        photos = [read_image(p) for p in _some(folder, pattern, args.n)]
        cells = []
        for f in FRACTIONS:
            cfg = dataclasses.replace(base, ben_sigma_frac=1 / f)
            d = preprocess.look_distance([preprocess.preprocess_array(p, cfg) for p in photos], copy)
            cells.append(f"{d:.3f}{'*' if abs(1 / f - base.ben_sigma_frac) < 1e-9 else ' '}".rjust(8))
        print(name.ljust(18) + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
