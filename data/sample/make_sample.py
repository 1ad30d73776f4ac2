"""Regenerate the bundled demo data (data/sample) from the shared IDRiD copy; deterministic.

60 IDRiD disease-grading training photographs, 12 per DR grade (seeded choice), downscaled from the shared
1024x680 copies to 640 px wide (INTER_AREA) and re-encoded as JPEG quality 90; ``labels.csv`` has
``id_code,diagnosis``. IDRiD is CC BY 4.0: ATTRIBUTION.md and LICENSE.txt travel with the images.

    python data/sample/make_sample.py [--shared ../shared/data] [--out data/sample]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kaggle_utils.io import write_bytes, write_csv

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PER_GRADE = 12
WIDTH = 640
QUALITY = 90
SEED = 0


def choose(labels: pd.DataFrame, per_grade: int = PER_GRADE, seed: int = SEED) -> pd.DataFrame:
    """``per_grade`` ids per grade (grade 1 has only 20 in IDRiD, so equal counts, not proportional)."""
    rng = np.random.default_rng(seed)
    picks = []
    for _, group in labels.sort_values("id_code").groupby("diagnosis", sort=True):
        picks.append(group.iloc[np.sort(rng.choice(len(group), per_grade, replace=False))])
    return pd.concat(picks).sort_values("id_code").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    src = args.shared / "idrid_train"
    labels = pd.read_csv(src / "labels.csv", dtype={"id_code": str})
    chosen = choose(labels)
    for id_code in chosen["id_code"]:
        img = cv2.imread(str(src / "images" / f"{id_code}.jpg"), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {src / 'images' / f'{id_code}.jpg'}")
        h, w = img.shape[:2]
        small = cv2.resize(img, (WIDTH, round(h * WIDTH / w)), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        assert ok
        write_bytes(args.out / "images" / f"{id_code}.jpg", buf.tobytes())
    write_csv(args.out / "labels.csv", chosen[["id_code", "diagnosis"]])
    write_bytes(args.out / "LICENSE.txt", (src / "LICENSE.txt").read_bytes())
    counts = chosen["diagnosis"].value_counts().sort_index().to_dict()
    print(f"wrote {len(chosen)} images to {args.out / 'images'} (grades {counts})")


if __name__ == "__main__":
    main()
