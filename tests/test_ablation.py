"""bench/aptos_ablation.py (the README's APTOS ablation table) on a made-up finished workdir: which predictions
each variant scores (fold ensemble or one fold, TTA views or the first), the blend's weights, the step
minutes, and the IDRiD guard's refusal of a run that trained on IDRiD."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kaggle_utils import io

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("aptos_ablation", REPO / "bench" / "aptos_ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def _workdir(tmp_path: Path, trained_on: str = "aptos") -> Path:
    """Two models on 2 folds; model 'a' is exact in fold 0 and in view 0, 'b' is noise everywhere."""
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    grades = np.tile(np.arange(5), 8)
    ids = [f"t{i}" for i in range(40)]
    io.write_csv(work / "data" / "test.csv", pd.DataFrame({"id": ids, "path": "x", "grade": grades}))
    oof_ids = [f"o{i}" for i in range(40)]
    folds = np.repeat([0, 1], 20)
    io.write_csv(work / "data" / "folds.csv", pd.DataFrame({"id": oof_ids, "grade": grades, "fold": folds,
                                                           "dataset": trained_on}))
    io.write_csv(work / "blend" / "summary_models.csv", pd.DataFrame({"model": ["a", "b", "blend"],
                                                                      "weight": [1.0, 0.0, np.nan]}))
    for name in ("a", "b"):
        exact = name == "a"
        noise = rng.uniform(0, 4, size=(40, 4))
        views = {}
        for k in (0, 1):
            views[f"pred_fold{k}_view0"] = grades if exact and k == 0 else noise[:, 2 * k]
            views[f"pred_fold{k}_view1"] = 4 - grades if exact else noise[:, 2 * k + 1]
        io.write_csv(work / "preds" / name / "test_views.csv", pd.DataFrame({"id": ids, **views}))
        good = grades.astype(float) if exact else noise[:, 0]
        io.write_csv(work / "preds" / name / "oof.csv", pd.DataFrame({"id": oof_ids, "grade": grades,
                                                                     "pred": good, "fold": folds}))
        for k in (0, 1):
            part = folds == k
            io.write_csv(work / "runs" / name / f"fold{k}" / "oof.csv",
                         pd.DataFrame({"id": np.array(oof_ids)[part], "grade": grades[part], "pred": good[part],
                                       "fold": k}))
    io.write_json(work / "run_log.json", {"steps": {
        "train:a:fold0": {"seconds": 60}, "train:a:fold1": {"seconds": 60}, "pretrain:b": {"seconds": 30},
        "train:b:fold0": {"seconds": 30}, "infer": {"seconds": 120}}})
    return work


def test_variants_score_the_predictions_they_name(tmp_path):
    work = _workdir(tmp_path)
    one_view = ablation.table(work, guards=None, folds=[0], tta=False)
    assert one_view.loc[("work", "a, fold 0, no TTA"), "holdout_qwk_fixed"] == pytest.approx(1.0)
    assert one_view.loc[("work", "blend, fold 0, no TTA"), "holdout_qwk_fixed"] == pytest.approx(1.0)  # weights 1/0
    assert one_view.loc[("work", "a, fold 0, no TTA"), "train_min"] == pytest.approx(1.0)  # fold 0's step only
    both_views = ablation.table(work, guards=None, folds=[0], tta=True)  # view 1 is 4 - grade: the mean is 2
    assert both_views.loc[("work", "a, fold 0"), "holdout_qwk_fixed"] == pytest.approx(0.0)
    ensemble = ablation.table(work, guards=None)
    assert ensemble.loc[("work", "a"), "holdout_qwk_fixed"] < 0.9  # fold 1's model is noise
    assert ensemble.loc[("work", "a"), "oof_qwk_fixed"] == pytest.approx(1.0)
    row = ensemble.loc[("work", "b")]
    assert row["train_min"] == pytest.approx(1.0) and row["run_min"] == pytest.approx(5.0)
    assert ensemble.loc[("work", "blend"), "train_min"] == pytest.approx(3.0)


def test_guard_refuses_a_run_that_trained_on_idrid(tmp_path, capsys):
    work = _workdir(tmp_path, trained_on="idrid")
    assert ablation.main([str(work)]) == 1
    assert "trained on the guard(s) ['idrid']" in capsys.readouterr().err
    assert ablation.main([str(work), "--guards", "none", "--markdown"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("| work | blend | ")


def test_guard_refuses_a_run_whose_config_lists_its_photographs(tmp_path):
    """A source named anything ('eyepacs' in aptos_baseline.yaml, 'dr_natural' here) that reads the guard's
    label file is training on the guard; the equalised EyePACS (another folder) is not."""
    work = _workdir(tmp_path)
    guard = ablation.GUARDS["eyepacs810"]
    source = {"name": "dr_natural", "reader": "eyepacs", "csv": guard.csv, "images": guard.images, "role": "external"}
    other = {**source, "name": "eyepacs_eq", "csv": "../shared/data/eyepacs256_equalised/trainLabels.csv",
             "images": "../shared/data/eyepacs256_equalised/images"}
    io.write_text(work / "config.yaml", yaml.safe_dump({"data": {"sources": [other]}}))
    assert not ablation.trained_on(work, guard)
    io.write_text(work / "config.yaml", yaml.safe_dump({"data": {"sources": [other, source]}}))
    assert ablation.trained_on(work, guard)
    assert not ablation.trained_on(work, ablation.GUARDS["idrid"])


def test_guard_columns_count_referrals_and_drift():
    y = np.array([0, 0, 0, 1, 2, 2, 3, 4])
    pred = np.array([0.1, 0.2, 1.6, 0.9, 1.4, 2.2, 2.6, 3.9])  # one false referral, one missed
    cols = ablation.guard_columns("g", y, pred, np.array([0.5, 1.5, 2.5, 3.5]))
    assert cols["g_sens"] == pytest.approx(3 / 4) and cols["g_spec"] == pytest.approx(3 / 4)
    assert cols["g_mean_true"] == pytest.approx(y.mean())
    assert cols["g_mean_pred"] == pytest.approx(np.mean([0, 0, 2, 1, 1, 2, 3, 4]))
    shifted = ablation.guard_columns("g", y, pred, np.array([0.5, 1.0, 2.5, 3.5]))  # a lower referable cut
    assert shifted["g_sens"] == 1.0 and shifted["g_auc"] == cols["g_auc"]


def test_a_fold_subset_is_scored_as_its_own_ensemble(tmp_path, capsys):
    work = _workdir(tmp_path)
    subset = ablation.table(work, guards=None, folds=[0, 1])
    ensemble = ablation.table(work, guards=None)
    assert subset.loc[("work", "a, folds 0,1"), "holdout_qwk_fixed"] == ensemble.loc[("work", "a"),
                                                                                      "holdout_qwk_fixed"]
    assert subset.loc[("work", "a, folds 0,1"), "train_min"] == pytest.approx(2.0)
    with pytest.raises(SystemExit, match=r"no model for fold\(s\) \[7\]"):
        ablation.table(work, guards=None, folds=[0, 7])
    assert ablation.main([str(work), "--guards", "none", "--fold", "1,0", "--markdown"]) == 0
    assert "| work | a, folds 0,1 | " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ablation.main([str(work), "--guards", "none", "--folds", "x"])


def test_guard_photographs_take_inferences_natural_recipe_and_a_new_look_is_redone(tmp_path, monkeypatch):
    """A guard's photographs are preprocessed by preprocess.natural_recipe of the run's recipe (what `infer`
    gives a clinic's photograph), and the cached predictions are keyed on that recipe: a changed look is predicted
    again, an unchanged one is reused."""
    from kaggle_utils.data import cache, preprocess
    from kaggle_utils.inference import predict

    work = _workdir(tmp_path)
    io.write_text(work / "config.yaml", "infer: {tta: none}\n")
    ckpt = work / "runs" / "a" / "fold0" / "best.pt"
    ckpt.write_bytes(b"x")
    trained = preprocess.PreprocessConfig(size=224, crop=False, ben_graham=False, natural="ben")
    run = predict.Run("a", ckpt.parent.parent, [], [0], trained, 192, (0.5,) * 3, (0.5,) * 3)
    built, predicted = [], []
    images = tmp_path / "images"
    images.mkdir()
    labels = pd.DataFrame({"image": ["1_left", "1_right"], "level": [0, 2]})
    io.write_csv(tmp_path / "labels.csv", labels)
    for name in labels["image"]:
        (images / f"{name}.jpeg").write_bytes(b"x")
    guard = ablation.Guard("g", "eyepacs", str(tmp_path / "labels.csv"), str(images))

    def build(table, folder, recipe, progress):
        built.append(recipe)
        io.write_csv(Path(folder) / "manifest.csv", table.assign(cache_path=table["path"]))

    monkeypatch.setattr(predict, "load_run", lambda path, name: run)
    monkeypatch.setattr(cache, "build_cache", build)
    monkeypatch.setattr(cache, "load_cache", lambda folder: io.read_csv(Path(folder) / "manifest.csv"))
    monkeypatch.setattr(predict, "predict_runs", lambda runs, test, **kw: predicted.append(1) or {
        "a": pd.DataFrame({"id": test["id"], "pred_fold0": [0.2, 2.4]})})
    views = ablation.guard_predictions(work, ["a"], guard)
    assert built == [preprocess.natural_recipe(trained)]  # at the recipe's size; predicting resizes to 192
    assert built[0].ben_graham and built[0].crop and built[0].size == 224
    assert views["grade"].tolist() == [0, 2] and views["a:pred_fold0_view0"].tolist() == [0.2, 2.4]
    ablation.guard_predictions(work, ["a"], guard)
    assert len(predicted) == 1  # same look: reused
    monkeypatch.setattr(preprocess, "NATURAL_BEN_SIGMA_FRAC", 1 / 30)
    ablation.guard_predictions(work, ["a"], guard)
    assert len(predicted) == 2 and built[-1].ben_sigma_frac == pytest.approx(1 / 30)


def test_prior_shift_rows_refit_cuts_for_each_test_sets_grade_mix(tmp_path, capsys):
    """--prior-shift adds a row per variant whose held-out cuts are refitted for that set's EM-estimated grade
    mix (inference/shift.py): a mostly healthy held-out set gets other cuts than the OOF's, and its QWK is
    scored with them."""
    from kaggle_utils import metrics
    from kaggle_utils.inference import shift

    work = _workdir(tmp_path)
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 20)
    oof = pd.DataFrame({"id": [f"o{i}" for i in range(100)], "grade": y, "fold": np.tile([0, 1], 50),
                        "pred": y + rng.normal(0, 0.5, 100)})
    for name in ("a", "b"):
        io.write_csv(work / "preds" / name / "oof.csv", oof)
    truth = np.r_[np.zeros(80, int), np.ones(20, int)]
    q = truth + rng.normal(0, 0.5, 100)
    ids = [f"t{i}" for i in range(100)]
    io.write_csv(work / "data" / "test.csv", pd.DataFrame({"id": ids, "path": "x", "grade": truth}))
    for name in ("a", "b"):
        io.write_csv(work / "preds" / name / "test_views.csv", pd.DataFrame(
            {"id": ids, **{f"pred_fold{k}_view{v}": q for k in (0, 1) for v in (0, 1)}}))
    p = oof["pred"].to_numpy()
    thr = metrics.optimise_thresholds(p, y)
    cuts = ablation.prior_thresholds(y, p, thr, q)
    prior = shift.estimate_prior(y, p, q, method="em", thresholds=thr, n_boot=0).prior
    assert prior[0] > 0.6 and prior[2:].sum() < 0.05
    np.testing.assert_allclose(cuts, shift.prior_shift_thresholds(p, y, prior, init=thr))
    assert not np.allclose(cuts, thr)
    row = ablation.table(work, guards=None, prior_shift=True).loc[("work", "a, prior shift")]
    assert row["holdout_qwk_oof_thr"] == pytest.approx(metrics.qwk(truth, metrics.apply_thresholds(q, cuts)))
    assert ablation.main([str(work), "--guards", "none", "--prior-shift"]) == 0
    out = capsys.readouterr().out
    assert "a, prior shift" in out and "blend, prior shift" in out
