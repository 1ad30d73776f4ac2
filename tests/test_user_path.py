"""Issue 10's reproductions, each first failing on the old code: repeated / NA / empty test ids, a moved
workdir, ``preprocess --table`` grades, and input-quality flags at inference. Real IDRiD photographs."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from train_helpers import register_tiny_model

from kaggle_utils import io
from kaggle_utils.data import cache, sources
from kaggle_utils.data import labels as data_labels
from kaggle_utils.data.__main__ import main as preprocess_main
from kaggle_utils.data.preprocess import PreprocessConfig
from kaggle_utils.inference import predict as infer
from kaggle_utils.run import chain, config


def _sample_table(sample_dir: Path, n: int) -> pd.DataFrame:
    labels = pd.read_csv(sample_dir / "labels.csv").head(n)
    return pd.DataFrame({"id": labels["id_code"].astype(str),
                         "path": [str(sample_dir / "images" / f"{i}.jpg") for i in labels["id_code"]],
                         "grade": labels["diagnosis"]})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sample_dir):
    """Two folds of the tiny test model on 12 real photographs, saved the way training saves them."""
    from kaggle_utils.training.config import TrainConfig
    from kaggle_utils.training.loop import train_fold

    register_tiny_model()
    root = tmp_path_factory.mktemp("user_path")
    cache.build_cache(_sample_table(sample_dir, 12), root / "cache", PreprocessConfig(size=64), workers=1,
                      progress=False)
    table = cache.load_cache(root / "cache")
    table["fold"] = np.arange(len(table)) % 2
    for fold in (0, 1):
        cfg = TrainConfig(out_dir=str(root / "runs" / "tiny" / f"fold{fold}"), cache_dir=str(root / "cache"),
                          model="tiny-cnn-test", pretrained=False, size=64, epochs=1, batch_size=4, fold=fold,
                          num_workers=0, progress=False, augmentation="none")
        train_fold(cfg, table=table)
    return root


# ------------------------------------------------------------------------------------------ test ids


def test_repeated_test_id_is_one_error_before_inference_naming_it(tmp_path):
    (tmp_path / "t.csv").write_text("id_code\na1\nb2\na1\nc3\nb2\n")
    with pytest.raises(data_labels.SourceError, match=r"2 id\(s\) repeat \('a1' x2, 'b2' x2\)") as err:
        sources.test_table(tmp_path / "t.csv", tmp_path / "imgs")
    assert "fold overlap" not in str(err.value) and "\n" not in str(err.value)


def test_na_null_nan_ids_stay_text(tmp_path):
    (tmp_path / "t.csv").write_text("id_code\nNA\nnull\nnan\n0012\n")
    t = sources.test_table(tmp_path / "t.csv", tmp_path / "imgs")
    assert t["id"].tolist() == ["NA", "null", "nan", "0012"]
    assert t["path"].tolist() == [str(tmp_path / "imgs" / f"{i}.png") for i in ("NA", "null", "nan", "0012")]
    (tmp_path / "p.csv").write_text("id,path\nNA,a.png\nNone,b.png\n")
    assert sources.test_table(tmp_path / "p.csv")["id"].tolist() == ["NA", "None"]
    (tmp_path / "blank.csv").write_text("id_code\nx\n\"\"\n")
    with pytest.raises(data_labels.SourceError, match="without an 'id_code'.*line"):
        sources.test_table(tmp_path / "blank.csv", tmp_path / "imgs")


def test_empty_test_set_is_a_clear_error_or_header_only_predictions(tmp_path, tiny_run):
    (tmp_path / "t.csv").write_text("id_code\n")
    with pytest.raises(data_labels.SourceError, match="lists no test images"):  # the notebooks' call: stops here
        sources.test_table(tmp_path / "t.csv", tmp_path / "imgs")
    test = sources.test_table(tmp_path / "t.csv", tmp_path / "imgs", allow_empty=True)
    assert len(test) == 0 and list(test.columns) == ["id", "path"]
    results = infer.infer([tiny_run / "runs" / "tiny"], test, tmp_path / "preds", device="cpu", progress=False)
    assert len(results["tiny"]) == 0  # was IndexError (preds[:, failed] with a float index)
    assert pd.read_csv(tmp_path / "preds" / "tiny" / infer.PRED_FILE).columns[:2].tolist() == ["id", "pred"]
    assert pd.read_csv(tmp_path / "preds" / infer.FAILED_FILE).empty


# ------------------------------------------------------------------------------------- moved workdir


def test_moved_workdir_reruns_with_every_step_skipped(sample_dir, tmp_path, monkeypatch):
    """The chain's real plan (paths inside the workdir are absolute) for a workdir, then for its copy."""
    calls: list[str] = []
    monkeypatch.setattr(chain.Runner, "_execute", lambda self, step, params, out_nb, timeout: calls.append(step.name))
    (tmp_path / "kaggle" / "test_images").mkdir(parents=True)
    pd.DataFrame({"id_code": ["IDRiD_007"]}).to_csv(tmp_path / "kaggle" / "test.csv", index=False)
    cfg = {"data": {"source": "idrid", "csv": str(sample_dir / "labels.csv"), "images": str(sample_dir / "images")},
           "folds": {"n_folds": 2}, "preprocess": {"size": 64},
           "models": [{"name": "lite0", "model": "efficientnet-lite0", "size": 64}],
           "test": {"csv": str(tmp_path / "kaggle" / "test.csv"), "images": str(tmp_path / "kaggle" / "test_images")}}
    chain.run_chain(cfg, tmp_path / "tiny")
    assert len(calls) >= 4  # preprocess, two folds, infer, blend
    first = list(calls)
    shutil.copytree(tmp_path / "tiny", tmp_path / "tiny_moved")
    shutil.rmtree(tmp_path / "tiny")
    chain.run_chain(cfg, tmp_path / "tiny_moved")
    assert calls == first  # nothing ran again
    keys = [s.key(tmp_path / "tiny_moved") for s in chain.plan(config.load_config(cfg), (tmp_path / "tiny_moved"))]
    assert keys == [s.key(tmp_path / "x") for s in chain.plan(config.load_config(cfg), tmp_path / "x")]


def test_moved_training_run_resumes_without_a_settings_mismatch(tmp_path, tiny_run):
    from kaggle_utils.training.config import TrainConfig
    from kaggle_utils.training.loop import train_fold

    shutil.copytree(tiny_run, tmp_path / "moved")
    out = tmp_path / "moved" / "runs" / "tiny" / "fold0"
    saved = io.read_json(out / "config.json")
    assert saved["cache_dir"] == str(tiny_run / "cache")  # absolute, the old place
    cfg = TrainConfig.from_dict({**saved, "out_dir": str(out), "cache_dir": str(tmp_path / "moved" / "cache")})
    table = cache.load_cache(tmp_path / "moved" / "cache")
    table["fold"] = np.arange(len(table)) % 2
    result = train_fold(cfg, table=table)  # was ConfigMismatchError: cache_dir saved '<old>' vs now '<moved>'
    assert result["status"] == "completed" and result["resumed"]
    with pytest.raises(ValueError, match="lr: saved"):  # a real change is still refused
        train_fold(cfg.replace(lr=0.5), table=table)


# ------------------------------------------------------------------------------- preprocess --table


def test_preprocess_table_bad_grades_are_an_error_naming_the_ids(sample_dir, tmp_path, capsys):
    table = _sample_table(sample_dir, 6).astype({"grade": str})
    table.loc[[1, 3, 4], "grade"] = ["7", "x", "-1"]
    table.loc[5, "grade"] = ""  # unlabelled: allowed
    table.to_csv(tmp_path / "t.csv", index=False)
    rc = preprocess_main(["--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "c"), "--size", "64",
                          "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    ids = table["id"].tolist()
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"{ids[1]}='7'" in err and f"{ids[3]}='x'" in err and f"{ids[4]}='-1'" in err and ids[0] not in err
    assert not (tmp_path / "c" / "manifest.csv").exists()  # nothing cached


def test_preprocess_table_repeated_id_is_one_error_line(sample_dir, tmp_path, capsys):
    table = _sample_table(sample_dir, 3)
    pd.concat([table, table.iloc[[1]]]).to_csv(tmp_path / "t.csv", index=False)
    rc = preprocess_main(["--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "c"), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"error: --table {tmp_path / 't.csv'}: 1 id(s) repeat: ['{table['id'][1]}']"


def test_preprocess_summary_counts_skipped_label_rows_and_matches_exit_status(sample_dir, tmp_path, capsys):
    labels = pd.read_csv(sample_dir / "labels.csv").head(4)
    bad = pd.DataFrame({"id_code": ["missing_1", "missing_2", labels["id_code"][0] + "_x"],
                        "diagnosis": [1, 2, 9]})
    pd.concat([labels, bad]).to_csv(tmp_path / "labels.csv", index=False)
    rc = preprocess_main(["--source", "idrid", "--csv", str(tmp_path / "labels.csv"), "--images",
                          str(sample_dir / "images"), "--out", str(tmp_path / "c"), "--size", "64", "--workers", "1",
                          "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "cache: 4 ok / 0 failed" in out and "3 label row(s) skipped" in out and "(exit status 1)" in out
    assert "return_report" not in out + err  # a Python-API hint, meaningless on the command line
    assert len(pd.read_csv(tmp_path / "c" / "source_report.csv")) >= 3


# ------------------------------------------------------------------------------------- quality flags


def test_suspect_images_are_graded_but_flagged(sample_dir, tmp_path, tiny_run):
    real = _sample_table(sample_dir, 4)
    src = cv2.imread(real["path"][0])
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "tiny.jpg"), cv2.resize(src, (30, 30), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(img_dir / "black.jpg"), np.zeros((680, 1024, 3), np.uint8))
    specks = np.zeros((680, 1024, 3), np.uint8)
    specks[::16, ::16] = 255  # bright, but no region anywhere near the size of a retina
    cv2.imwrite(str(img_dir / "specks.png"), specks)
    (img_dir / "broken.jpg").write_bytes(b"not an image")
    extra = pd.DataFrame({"id": ["tiny", "black", "specks", "broken"],
                          "path": [str(img_dir / n) for n in ("tiny.jpg", "black.jpg", "specks.png", "broken.jpg")]})
    table = pd.concat([real[["id", "path"]], extra], ignore_index=True)
    res = infer.infer([tiny_run / "runs" / "tiny"], table, tmp_path / "preds", device="cpu", progress=False)["tiny"]
    by_id = res.set_index("id")
    assert (by_id.loc[real["id"], "flag"] == "").all()  # real photographs are not flagged
    assert by_id.loc["tiny", "flag"].startswith("tiny image (30x30 px)")
    assert by_id.loc["black", "flag"].startswith("nearly black")
    assert by_id.loc["specks", "flag"].startswith("no retina found")
    assert np.isfinite(by_id.loc[["tiny", "black", "specks"], "pred"]).all()  # still graded
    assert by_id.loc["broken", "status"] == "failed" and np.isnan(by_id.loc["broken", "pred"])
    flagged = pd.read_csv(tmp_path / "preds" / infer.FLAGGED_FILE, dtype=str)
    assert flagged["id"].tolist() == ["tiny", "black", "specks"] and (flagged["status"] == "flagged").all()
    assert pd.read_csv(tmp_path / "preds" / infer.FAILED_FILE)["id"].tolist() == ["broken"]
    line = chain.test_summary({"failed_images": str(tmp_path / "preds" / infer.FAILED_FILE),
                             "flagged_images": str(tmp_path / "preds" / infer.FLAGGED_FILE)})
    assert line.startswith("test images: 1 unreadable (fallback grade) (broken: ") and "3 flagged (tiny: tiny" in line


def test_no_readable_test_image_is_an_error_not_a_submission_of_fallback_grades(tmp_path, tiny_run):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    table = pd.DataFrame({"id": ["broken", "gone"], "path": [str(tmp_path / "broken.jpg"), str(tmp_path / "gone.png")]})
    with pytest.raises(infer.InferenceError, match=r"none of the 2 test images could be read \(broken: "):
        infer.infer([tiny_run / "runs" / "tiny"], table, tmp_path / "preds", device="cpu", progress=False)
    assert len(pd.read_csv(tmp_path / "preds" / infer.FAILED_FILE)) == 2  # written first, for a look
