"""Duplicate detection on real IDRiD photographs and fold assignment.

Facts about the shared IDRiD copy these tests rely on (measured, see folds.py): five pairs of byte-identical
files under different ids (021/391, 028/327, 045/333, 073/375, 079/279; 021/391 and 028/327 with conflicting
grades), and one pair of different shots of the same eye (013/397, pHash distance 26) that is not a copy.
"""

import hashlib
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kaggle_utils.data import folds, sources

pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")

PARTNERS = ["IDRiD_279", "IDRiD_327", "IDRiD_333", "IDRiD_375", "IDRiD_391", "IDRiD_397"]


def _md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _partition(keys) -> set[frozenset[int]]:
    """Non-singleton groups of row positions sharing a key."""
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _copy(src: Path, dst: Path, scale: float, alpha: float, beta: float, quality: int = 95) -> Path:
    """A re-processed copy: resize, slight brightening, re-encode (format from the suffix)."""
    img = cv2.imread(str(src))
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    img = cv2.convertScaleAbs(img, alpha=alpha, beta=beta)
    assert cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return dst


@pytest.fixture(scope="module")
def idrid_table(shared_data: Path) -> pd.DataFrame:
    root = shared_data / "idrid_train"
    return sources.load_idrid(root / "labels.csv", root / "images")


@pytest.fixture(scope="module")
def grouped(idrid_table, raw_dir, tmp_path_factory) -> pd.DataFrame:
    """90 IDRiD photos + the partners of the known pairs + three real copies, hashed once for this module."""
    tmp = tmp_path_factory.mktemp("copies")
    base = pd.concat([idrid_table.head(90), idrid_table[idrid_table["id"].isin(PARTNERS)]], ignore_index=True)
    src = {i: Path(p) for i, p in zip(base["id"], base["path"], strict=True)}
    copies = pd.DataFrame(
        {
            "id": ["copy_of_IDRiD_010", "copy_of_IDRiD_020", "orig_IDRiD_001"],
            "path": [
                str(_copy(src["IDRiD_010"], tmp / "a.jpg", scale=0.55, alpha=1.08, beta=6, quality=70)),
                str(_copy(src["IDRiD_020"], tmp / "b.png", scale=0.4, alpha=1.1, beta=3)),
                str(shutil.copy(raw_dir / "idrid_IDRiD_001.jpg", tmp / "c.jpg")),  # the 4288x2848 original
            ],
            "grade": base.set_index("id").loc[["IDRiD_010", "IDRiD_020", "IDRiD_001"], "grade"].to_numpy(),
            "source": "copy",
        }
    )
    table = pd.concat([base, copies], ignore_index=True)
    return folds.add_duplicate_groups(table, progress=False)


def test_copies_found_and_distinct_photos_not(grouped):
    ids = grouped["id"].tolist()
    expected = _partition([_md5(p) for p in grouped["path"]])  # byte-identical files
    for copy, orig in [("copy_of_IDRiD_010", "IDRiD_010"), ("copy_of_IDRiD_020", "IDRiD_020"),
                       ("orig_IDRiD_001", "IDRiD_001")]:  # fmt: skip
        expected.add(frozenset({ids.index(copy), ids.index(orig)}))
    assert len(expected) == 8
    assert _partition(grouped["dup_group"]) == expected

    # With a margin, not just on the right side of the threshold.
    hashes = folds.hex_to_hash(grouped["image_hash"])
    pairs = folds.duplicate_pairs(hashes, max_distance=10**6)
    same = pairs.apply(lambda r: frozenset({r.i, r.j}) in expected, axis=1)
    assert pairs.loc[same, "distance"].max() <= folds.DEFAULT_MAX_DISTANCE - 4
    assert pairs.loc[~same, "distance"].min() >= folds.DEFAULT_MAX_DISTANCE + 4
    same_eye = pairs[(pairs.i == ids.index("IDRiD_013")) & (pairs.j == ids.index("IDRiD_397"))]
    assert same_eye["distance"].item() > folds.DEFAULT_MAX_DISTANCE  # two shots of one eye: not a copy


def test_classic_64bit_phash_cannot_tell_fundus_photos_apart(idrid_table):
    """Why the default is the 256-bit hash: at 64 bits distinct photographs collide."""
    rows = idrid_table.head(60)
    grays = [folds.load_gray(p) for p in rows["path"]]  # also exercises array input
    distinct = ~pd.Series([_md5(p) for p in rows["path"]]).duplicated(keep=False).to_numpy()
    small = folds.duplicate_pairs(folds.hash_images(grays, hash_size=8, progress=False)[distinct], 4)
    big = folds.duplicate_pairs(
        folds.hash_images(grays, progress=False)[distinct], folds.DEFAULT_MAX_DISTANCE
    )
    assert len(small) > 0 and len(big) == 0


def test_hash_inputs_and_errors(idrid_table, tmp_path):
    path = idrid_table["path"].iloc[0]
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    h = folds.image_hash(rgb)
    assert h.dtype == np.uint8 and h.shape == (32,) and np.unpackbits(h).sum() == 127  # 255 bits, > median
    for variant in (
        rgb.astype(np.uint16) * 257,
        rgb.astype(np.float32) / 255,
        cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
    ):
        assert np.unpackbits(folds.image_hash(variant) ^ h).sum() <= 4
    assert np.unpackbits(folds.image_hash(path) ^ h).sum() <= 10  # reduced decode vs full decode
    assert folds.dhash(rgb).shape == (32,)

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for bad in (tmp_path / "bad.jpg", tmp_path / "missing.png"):
        with pytest.raises(folds.HashError, match=bad.name):
            folds.image_hash(bad)
    with pytest.raises(ValueError, match="unknown hash method"):
        folds.image_hash(rgb, method="ahash")
    assert folds.hash_images([], progress=False).shape == (0, 32)
    assert folds.duplicate_pairs(np.zeros((0, 32), np.uint8)).empty


def test_groups_from_pairs_is_transitive_and_numbered_by_first_row():
    pairs = pd.DataFrame({"i": [3, 1], "j": [4, 3], "distance": [5, 7]})
    assert folds.groups_from_pairs(6, pairs).tolist() == [0, 1, 2, 1, 1, 3]


def test_folds_keep_groups_together_and_report_conflicts(grouped):
    with pytest.warns(folds.FoldWarning, match=r"2 duplicate group\(s\) have conflicting grades") as rec:
        out = folds.make_folds(grouped, n_folds=5, seed=0)
    msg = next(str(w.message) for w in rec if w.category is folds.FoldWarning)
    assert "IDRiD_021" in msg and "IDRiD_391" in msg and "[1, 2]" in msg
    assert out["fold"].between(0, 4).all() and out["fold"].dtype == np.int64
    assert (out.groupby("dup_group")["fold"].nunique() == 1).all()
    fold = out.set_index("id")["fold"]
    assert fold["copy_of_IDRiD_010"] == fold["IDRiD_010"] and fold["orig_IDRiD_001"] == fold["IDRiD_001"]
    conflicts = folds.conflicting_groups(out)
    assert sorted(conflicts["id"]) == ["IDRiD_021", "IDRiD_028", "IDRiD_327", "IDRiD_391"]
    assert out.drop(columns="fold").equals(grouped)  # a copy, input untouched
    assert "fold" not in grouped.columns


def _labels(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv).rename(columns={"id_code": "id", "diagnosis": "grade"})
    df["dup_group"] = np.arange(len(df))
    return df


@pytest.mark.parametrize(
    "csv, tol", [("idrid_train/labels.csv", 0.03), ("aptos2019_train_labels.csv", 0.005)]
)
def test_folds_are_stratified(shared_data, csv, tol):
    table = _labels(shared_data / csv)
    out = folds.make_folds(table, n_folds=5, seed=3)
    dist = folds.fold_distribution(out)
    assert (dist.iloc[:-1] - dist.iloc[-1]).abs().to_numpy().max() < tol
    sizes = out["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 2 and len(sizes) == 5


def test_folds_are_deterministic_from_seed(shared_data):
    table = _labels(shared_data / "idrid_train/labels.csv")
    a = folds.make_folds(table, seed=7)["fold"]
    assert a.equals(folds.make_folds(table, seed=7)["fold"])
    assert (a != folds.make_folds(table, seed=8)["fold"]).mean() > 0.5


def test_make_folds_errors():
    table = pd.DataFrame({"id": list("abcdef"), "grade": pd.array([0, 1, 0, 1, 0, None], dtype="Int64")})
    with pytest.raises(ValueError, match=r"1 row\(s\) have no grade \(e.g. \['f'\]\)"):
        folds.make_folds(table, n_folds=2, group_col=None)
    table = table.dropna()
    with pytest.raises(ValueError, match="run add_duplicate_groups"):
        folds.make_folds(table, n_folds=2)
    with pytest.raises(ValueError, match="n_folds must be >= 2"):
        folds.make_folds(table, n_folds=1, group_col=None)
    with pytest.raises(ValueError, match="only 1 group"):
        folds.make_folds(table.assign(g=0), n_folds=2, group_col="g")
    plain = folds.make_folds(table, n_folds=2, group_col=None)  # every row its own group
    assert sorted(plain["fold"].value_counts().tolist()) == [2, 3]
    assert (plain.groupby("fold")["grade"].nunique() == 2).all()


def test_write_read_roundtrip(grouped, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", folds.FoldWarning)
        out = folds.make_folds(grouped, seed=1)
    path = folds.write_folds(out, tmp_path / "folds.csv")
    back = folds.read_folds(path)
    pd.testing.assert_frame_equal(back, out, check_dtype=False)
    assert str(back["grade"].dtype) == "Int64" and back["fold"].dtype == np.int64
    assert back["image_hash"].str.len().eq(64).all()
    with pytest.raises(ValueError, match="missing column"):
        folds.write_folds(grouped, tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="make_folds"):
        folds.read_folds(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("id,grade\na,1\n")
    with pytest.raises(ValueError, match="not a folds file"):
        folds.read_folds(tmp_path / "bad.csv")


def test_holdout_split_keeps_duplicate_groups_and_grades():
    import pandas as pd

    from kaggle_utils.data.folds import holdout_split

    grades = [g for g in range(5) for _ in range(12)]
    table = pd.DataFrame({"id": [f"i{k}" for k in range(60)], "grade": grades,
                          "dup_group": [k // 2 for k in range(60)]})
    train, test = holdout_split(table, 12, seed=0)
    assert len(train) + len(test) == 60 and 8 <= len(test) <= 16
    assert set(train["id"]).isdisjoint(test["id"])
    assert set(train["dup_group"]).isdisjoint(test["dup_group"])
    assert test["grade"].nunique() >= 4
    again = holdout_split(table, 12, seed=0)[1]
    assert again["id"].tolist() == test["id"].tolist()
