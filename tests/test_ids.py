"""Ids are text in every reader: ``NA``, ``null``, ``nan`` and ``00123`` name images, so each stage that reads
a CSV back must see them as written (not NaN, not 123), while grades and predictions still parse as numbers."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from kaggle_utils import io
from kaggle_utils.data import __main__ as data_cli
from kaggle_utils.data import cache, folds, sources
from kaggle_utils.data.preprocess import PreprocessConfig
from kaggle_utils.inference import ensemble, pseudo, shift
from kaggle_utils.inference.files import PRED_FILE
from kaggle_utils.kernel import verify
from kaggle_utils.run import chain
from kaggle_utils.training.config import TrainConfig
from kaggle_utils.training.table import load_table

IDS = ["NA", "null", "nan", "00123"]
GRADES = [0, 2, 4, 1]
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"


def _csv(where: Path, /, **columns: list) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_csv(where, index=False)
    return where


def _oof(tmp: Path) -> pd.DataFrame:
    _csv(tmp / "m" / "fold0" / "oof.csv", id=IDS, grade=GRADES, pred=[0.1, 2.2, 3.9, 1.1], fold=[0] * 4)
    return ensemble.collect_oof({"m": tmp / "m"})


def _test_preds(tmp: Path) -> pd.DataFrame:
    _csv(tmp / "m" / PRED_FILE, id=IDS, pred=[0.1, 2.2, 3.9, 1.1])
    return ensemble.collect_test({"m": tmp / "m"})


def _uncertainty(tmp: Path) -> pd.DataFrame:
    _csv(tmp / PRED_FILE, id=IDS, pred_fold0=[0.1, 2.2, 3.9, 1.1], pred_fold1=[0.3, 2.0, 3.7, 0.9])
    return shift.run_uncertainty(tmp)


def _folds(tmp: Path) -> pd.DataFrame:
    return folds.read_folds(_csv(tmp / "folds.csv", id=IDS, path=[f"{i}.png" for i in IDS], grade=GRADES,
                                 fold=[0, 1, 0, 1]))


def _manifest(tmp: Path) -> pd.DataFrame:
    _csv(tmp / cache.MANIFEST, id=IDS, cache_path=[f"images/{i}.png" for i in IDS], grade=GRADES,
         source=["aptos"] * 4, status=["ok"] * 4, reason=[""] * 4, path=[f"/raw/{i}.png" for i in IDS])
    return cache.load_cache(tmp, check_files=False)


def _test_table(tmp: Path) -> pd.DataFrame:
    return sources.test_table(_csv(tmp / "test.csv", id_code=IDS), tmp / "test_images")


def _label_file(tmp: Path) -> pd.DataFrame:
    for i in IDS:
        (tmp / "images").mkdir(exist_ok=True)
        shutil.copy(next(SAMPLE_IMAGES.glob("*.jpg")), tmp / "images" / f"{i}.jpg")
    return sources.load_generic(_csv(tmp / "labels.csv", image=IDS, level=GRADES), tmp / "images", id_col="image",
                                grade_col="level", ext=".jpg")


def _data_cli_table(tmp: Path) -> pd.DataFrame:
    csv = _csv(tmp / "table.csv", id=IDS, path=[f"{i}.png" for i in IDS], grade=GRADES)
    return data_cli._load_table(argparse.Namespace(table=str(csv)))[0]


def _train_table(tmp: Path) -> pd.DataFrame:
    csv = _csv(tmp / "table.csv", id=IDS, path=[f"{i}.png" for i in IDS], grade=GRADES, fold=[0, 1, 0, 1])
    return load_table(TrainConfig(table_csv=str(csv)))


def _submission(tmp: Path) -> pd.DataFrame:
    path = _csv(tmp / "submission.csv", id_code=IDS, diagnosis=GRADES)
    verify.check_submission(path, IDS)  # raises when an id went missing on the way in
    return pd.DataFrame({"id": IDS, "grade": GRADES})


def _chain_listing(tmp: Path) -> pd.DataFrame:
    path = _csv(tmp / "failed_images.csv", id=IDS, reason=["unreadable"] * 4)
    line = chain.test_summary({"failed_images": str(path)})
    return pd.DataFrame({"id": [i for i in IDS[:3] if f"{i}: unreadable" in line]})


def _pseudo_round(tmp: Path) -> pd.DataFrame:
    train = tmp / "train_cache"
    _csv(train / cache.MANIFEST, id=["train0"], cache_path=["images/train0.png"], grade=[0], source=["aptos"],
         status=["ok"], reason=[""], path=["/raw/train0.png"])
    io.write_json(train / cache.CONFIG, PreprocessConfig(size=32).to_dict())
    (tmp / "test_images").mkdir()
    for i in IDS:
        shutil.copy(next(SAMPLE_IMAGES.glob("*.jpg")), tmp / "test_images" / f"{i}.jpg")
    _csv(tmp / "blend" / "test_blend.csv", id=IDS, blend=[0.1, 2.2, 3.9, 1.1])
    io.write_json(tmp / "blend" / "summary.json", {"thresholds": [0.5, 1.5, 2.5, 3.5]})
    return pseudo.build_pseudo_round(_csv(tmp / "test.csv", id_code=IDS), tmp / "blend", train,
                                     tmp / "pseudo.csv", round_no=1, test_images=tmp / "test_images",
                                     test_ext=".jpg", soft=False, workers=1)


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "ensemble.collect_oof": _oof, "ensemble.collect_test": _test_preds, "shift.run_uncertainty": _uncertainty,
    "folds.read_folds": _folds, "cache.load_cache": _manifest, "sources.test_table": _test_table,
    "sources.load_generic": _label_file, "data --table": _data_cli_table, "training load_table": _train_table,
    "kernel verify submission": _submission, "chain.test_summary": _chain_listing,
    "pseudo.build_pseudo_round": _pseudo_round,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_keeps_ids_as_text(reader, tmp_path):
    df = READERS[reader](tmp_path)
    expected = IDS[:3] if reader == "chain.test_summary" else IDS  # the summary line shows the first three
    assert sorted(df["id"].tolist()) == sorted(expected), reader
    if "grade" in df.columns:  # grades stay numbers, each on its own id
        assert pd.api.types.is_numeric_dtype(df["grade"]), df["grade"].dtype
        assert dict(zip(df["id"], df["grade"].astype(int), strict=True)) == dict(zip(IDS, GRADES, strict=True))


def test_read_csv_text_columns_and_numbers(tmp_path):
    path = _csv(tmp_path / "t.csv", id=IDS, grade=["0", "", "NA", "3"], pred=["0.5", "nan", "", "1"],
                path=["a", "NA", "", "b"])
    df = io.read_csv(path)
    assert df["id"].tolist() == IDS and df["path"].tolist()[:2] == ["a", "NA"] and pd.isna(df["path"][2])
    assert df["grade"].isna().tolist() == [False, True, True, False] and df["pred"].dtype == float
    assert io.read_csv(path, text=None)["grade"].tolist()[2] == "NA"
    assert io.read_csv(path, text=["grade"])["id"].isna().sum() == 3  # only the named columns are text
