"""bench/aptos_ablation.py (the README's APTOS ablation table) on a made-up finished workdir: which predictions
each variant scores (fold ensemble or one fold, TTA views or the first), the blend's weights, the step
minutes, and the IDRiD guard's refusal of a run that trained on IDRiD."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
    one_view = ablation.table(work, idrid=None, folds=[0], tta=False)
    assert one_view.loc[("work", "a, fold 0, no TTA"), "holdout_qwk_fixed"] == pytest.approx(1.0)
    assert one_view.loc[("work", "blend, fold 0, no TTA"), "holdout_qwk_fixed"] == pytest.approx(1.0)  # weights 1/0
    assert one_view.loc[("work", "a, fold 0, no TTA"), "train_min"] == pytest.approx(1.0)  # fold 0's step only
    both_views = ablation.table(work, idrid=None, folds=[0], tta=True)  # view 1 is 4 - grade: the mean is 2
    assert both_views.loc[("work", "a, fold 0"), "holdout_qwk_fixed"] == pytest.approx(0.0)
    ensemble = ablation.table(work, idrid=None)
    assert ensemble.loc[("work", "a"), "holdout_qwk_fixed"] < 0.9  # fold 1's model is noise
    assert ensemble.loc[("work", "a"), "oof_qwk_fixed"] == pytest.approx(1.0)
    row = ensemble.loc[("work", "b")]
    assert row["train_min"] == pytest.approx(1.0) and row["run_min"] == pytest.approx(5.0)
    assert ensemble.loc[("work", "blend"), "train_min"] == pytest.approx(3.0)


def test_guard_refuses_a_run_that_trained_on_idrid(tmp_path, capsys):
    work = _workdir(tmp_path, trained_on="idrid")
    assert ablation.main([str(work)]) == 1
    assert "trained on IDRiD" in capsys.readouterr().err
    assert ablation.main([str(work), "--no-idrid", "--markdown"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("| work | blend | ")


def test_a_fold_subset_is_scored_as_its_own_ensemble(tmp_path, capsys):
    work = _workdir(tmp_path)
    subset = ablation.table(work, idrid=None, folds=[0, 1])
    ensemble = ablation.table(work, idrid=None)
    assert subset.loc[("work", "a, folds 0,1"), "holdout_qwk_fixed"] == ensemble.loc[("work", "a"),
                                                                                      "holdout_qwk_fixed"]
    assert subset.loc[("work", "a, folds 0,1"), "train_min"] == pytest.approx(2.0)
    with pytest.raises(SystemExit, match=r"no model for fold\(s\) \[7\]"):
        ablation.table(work, idrid=None, folds=[0, 7])
    assert ablation.main([str(work), "--no-idrid", "--fold", "1,0", "--markdown"]) == 0
    assert "| work | a, folds 0,1 | " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ablation.main([str(work), "--no-idrid", "--folds", "x"])
