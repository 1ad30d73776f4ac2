"""Label shift, shake-up and per-image uncertainty (kaggle_utils.inference.shift) on real predictions.

``data/idrid_oof_lite0.csv``: the out-of-fold predictions (hflip TTA) of EfficientNet-Lite0 trained on the 413
IDRiD photographs (CC BY 4.0), 3 folds x 3 epochs at 192 px, crop + Ben Graham, written by
``bench/shift_cross_dataset.py --stage train`` (outputs/shift_idrid/preds/lite0/oof.csv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils import metrics
from kaggle_utils.inference import ensemble, shift
from kaggle_utils.report import html

OOF_CSV = Path(__file__).parent / "data" / "idrid_oof_lite0.csv"
EYEPACS_LIKE = np.array([0.80, 0.05, 0.12, 0.01, 0.02])  # roughly eyepacs1024's grade mix
# Stated error, max |estimated - true| over grades, calibrating on ~206 OOF rows of a weak 3-epoch model
# (measured over seeds 0-5: EM 0.05-0.13 with one outlier at 0.34, BBSE 0.09-0.20 with one at 0.69):
PRIOR_ERROR = {"em": 0.10, "bbse": 0.20}
NO_SHIFT_ERROR = 0.20  # EM folds most of grade 3 (18 % of IDRiD) into its neighbours even with no shift


@pytest.fixture(scope="module")
def oof() -> pd.DataFrame:
    return pd.read_csv(OOF_CSV, dtype={"id": str})


def _halves(oof: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint calibration / test-pool halves (stratified by grade): the test is never calibrated on."""
    rng = np.random.default_rng(seed)
    pick = np.zeros(len(oof), bool)
    for g in range(5):
        idx = np.flatnonzero(oof["grade"].to_numpy() == g)
        pick[rng.permutation(idx)[: len(idx) // 2]] = True
    return oof[pick].reset_index(drop=True), oof[~pick].reset_index(drop=True)


def _shifted(pool: pd.DataFrame, prior: np.ndarray, n: int, seed: int) -> pd.DataFrame:
    return pool.iloc[shift.resample_to_prior(pool["grade"], prior, n, seed=seed)].reset_index(drop=True)


def test_fixture_is_real_oof(oof):
    assert len(oof) == 413 and set(oof["grade"]) == {0, 1, 2, 3, 4}
    assert np.bincount(oof["grade"], minlength=5).tolist() == [134, 20, 136, 74, 49]  # IDRiD's counts
    y, p = oof["grade"].to_numpy(), oof["pred"].to_numpy()
    assert metrics.qwk(y, metrics.apply_thresholds(p)) > 0.6  # a real, imperfect model


@pytest.mark.parametrize("method", shift.METHODS)
def test_synthetic_shift_prior_within_stated_error(oof, method):
    """Real OOF predictions resampled to an EyePACS-like prior (80 % grade 0): the estimate from the test
    predictions alone is within PRIOR_ERROR of the truth on every grade, and its bootstrap interval covers
    grade 0's true share in most draws; the training prior (32 % grade 0) is far outside that error."""
    errors, covered = [], []
    for seed in range(3):
        cal, pool = _halves(oof, seed)
        test = _shifted(pool, EYEPACS_LIKE, 1500, seed)
        y, p = cal["grade"].to_numpy(), cal["pred"].to_numpy()
        thr = metrics.optimise_thresholds(p, y)
        est = shift.estimate_prior(y, p, test["pred"], method=method, thresholds=thr, n_boot=40, seed=seed)
        truth = shift.grade_prior(test["grade"])
        errors.append(np.abs(est.prior - truth).max())
        covered.append(est.low[0] <= truth[0] <= est.high[0])
        assert abs(est.train_prior[0] - truth[0]) > 4 * PRIOR_ERROR["em"]
        assert np.isclose(est.prior.sum(), 1) and (est.prior >= 0).all()
    assert max(errors) < PRIOR_ERROR[method], errors
    assert sum(covered) >= 2, covered


def test_synthetic_shift_prior_shift_thresholds_beat_oof_thresholds(oof):
    """Thresholds refitted for the estimated test prior score higher QWK on the shifted set than OOF ones."""
    gains = []
    for seed in range(4):
        cal, pool = _halves(oof, seed)
        test = _shifted(pool, EYEPACS_LIKE, 1500, seed)
        y, p = cal["grade"].to_numpy(), cal["pred"].to_numpy()
        thr_oof = metrics.optimise_thresholds(p, y)
        est = shift.estimate_prior(y, p, test["pred"], method="em", thresholds=thr_oof, n_boot=0)
        thr_new = shift.prior_shift_thresholds(p, y, est.prior, init=thr_oof)
        yt, pt = test["grade"].to_numpy(), test["pred"].to_numpy()
        gains.append(metrics.qwk(yt, metrics.apply_thresholds(pt, thr_new))
                     - metrics.qwk(yt, metrics.apply_thresholds(pt, thr_oof)))
    assert np.mean(gains) > 0.01 and sum(g > 0 for g in gains) >= 3, gains


def test_weighted_qwk_equals_qwk_on_replicated_rows(oof):
    y, p = oof["grade"].to_numpy(), metrics.apply_thresholds(oof["pred"])
    w = np.random.default_rng(0).integers(0, 4, len(y))
    rep = np.repeat(np.arange(len(y)), w)
    assert metrics.qwk(y, p, sample_weight=w) == pytest.approx(metrics.qwk(y[rep], p[rep]), abs=1e-12)
    assert metrics.qwk(y, p, sample_weight=np.ones(len(y))) == pytest.approx(metrics.qwk(y, p))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.qwk(y, p, sample_weight=-np.ones(len(y)))


def test_importance_weights_move_oof_to_the_target_prior(oof):
    w = shift.importance_weights(oof["grade"], EYEPACS_LIKE)
    assert np.allclose(shift.grade_prior(oof["grade"], weights=w), EYEPACS_LIKE)
    assert w.mean() == pytest.approx(1.0)
    # the training prior itself gives unit weights and the OOF thresholds back
    same = shift.prior_shift_thresholds(oof["pred"], oof["grade"], shift.grade_prior(oof["grade"]))
    assert np.allclose(same, metrics.optimise_thresholds(oof["pred"].to_numpy(), oof["grade"].to_numpy()))


def test_no_shift_estimate_stays_near_training_prior(oof):
    cal, pool = _halves(oof, 0)
    train = shift.grade_prior(cal["grade"])
    for method in shift.METHODS:
        est = shift.estimate_prior(cal["grade"], cal["pred"], pool["pred"], method=method, n_boot=0)
        assert np.abs(est.prior - shift.grade_prior(pool["grade"])).max() < NO_SHIFT_ERROR
        assert np.abs(est.prior - train).max() < NO_SHIFT_ERROR


def test_shakeup_sizes_replacement_and_flips(oof):
    y = oof["grade"].to_numpy()
    thr = metrics.optimise_thresholds(oof["pred"].to_numpy(), y)
    grades = {"fitted": metrics.apply_thresholds(oof["pred"], thr), "default": metrics.apply_thresholds(oof["pred"])}
    small = shift.shakeup(y, grades, n_public=60, n_private=300, n_sims=200, seed=0)
    big = shift.shakeup(y, grades, n_sims=100, seed=0)  # APTOS sizes: 12,928 > 413 rows
    assert not small.attrs["with_replacement"] and big.attrs["with_replacement"]
    assert len(small) == 400 and set(small["choice"]) == set(grades)
    s_small, s_big = shift.shakeup_summary(small), shift.shakeup_summary(big)
    # fewer public images -> a wider public range
    width = lambda s: float((s["public_p95"] - s["public_p5"]).iloc[0])  # noqa: E731
    assert width(s_small) > 2 * width(s_big)
    flips = shift.flip_rates(small)
    assert list(flips[["a", "b"]].iloc[0]) == ["fitted", "default"]
    assert 0.0 <= flips["p_public_winner_loses_private"].iloc[0] <= 1.0
    again = shift.shakeup(y, grades, n_public=60, n_private=300, n_sims=200, seed=0)
    pd.testing.assert_frame_equal(small, again)  # seeded


def test_bootstrap_ci_and_fold_thresholds(oof):
    y, p = oof["grade"].to_numpy(), oof["pred"].to_numpy()
    g = metrics.apply_thresholds(p, metrics.optimise_thresholds(p, y))
    ci = shift.bootstrap_qwk(y, g, n_boot=300)
    assert ci["low"] < ci["qwk"] < ci["high"] and 0.01 < ci["high"] - ci["low"] < 0.2
    ft = shift.fold_thresholds(p, y, oof["fold"])
    assert list(ft["fold"]) == ["0", "1", "2", "sd", "range"]
    per_fold = ft.iloc[:3][["t1", "t2", "t3", "t4"]].to_numpy()
    assert (np.diff(per_fold, axis=1) > 0).all()
    assert (ft.iloc[4][["t1", "t2", "t3", "t4"]].to_numpy(float) > 0).any()  # folds disagree


def test_uncertainty_and_review_list():
    ids = [f"i{k}" for k in range(5)]
    # fold x view predictions: i0 confident far from the 1|2 cut, i1 on the cut, i2 members disagree,
    # i3 unreadable, i4 confident grade 4
    base = {"i0": 0.1, "i1": 1.5, "i2": 2.6, "i3": np.nan, "i4": 3.9}
    spread = {"i0": 0.02, "i1": 0.02, "i2": 0.9, "i3": 0.0, "i4": 0.02}
    cols = {}
    for f in range(2):
        for v in range(2):
            sign = (-1) ** (f + v)
            cols[f"pred_fold{f}_view{v}"] = [base[i] + sign * spread[i] * (1 + f) for i in ids]
    unc = shift.uncertainty(pd.DataFrame({"id": ids, **cols}))
    assert unc["n_members"].iloc[0] == 4 and np.isnan(unc.loc[3, "sd_total"])
    assert unc.loc[2, "sd_total"] > 10 * unc.loc[0, "sd_total"]
    rev = shift.review_list(unc, metrics.DEFAULT_THRESHOLDS)
    assert list(rev["id"][:3]) == ["i3", "i1", "i2"] and list(rev["id"][-2:]) in (["i0", "i4"], ["i4", "i0"])
    assert rev.loc[0, "reason"] == "unreadable" and "near referable cut" in rev.loc[1, "reason"]
    assert "members disagree" in rev.loc[2, "reason"] and rev["p_flip"].is_monotonic_decreasing
    # fold columns only (no per-view file): still a spread over folds
    only_folds = shift.uncertainty(pd.DataFrame({"id": ids[:2], "pred_fold0": [0.0, 1.0], "pred_fold1": [0.2, 1.0]}))
    assert only_folds["sd_folds"].tolist() == pytest.approx([0.1, 0.0])


def _run_csvs(oof: pd.DataFrame, test: pd.DataFrame, root: Path) -> tuple[Path, Path]:
    (root / "runs" / "m").mkdir(parents=True)
    (root / "preds" / "m").mkdir(parents=True)
    oof.to_csv(root / "runs" / "m" / "oof.csv", index=False)
    test[["id", "pred"]].to_csv(root / "preds" / "m" / "test_preds.csv", index=False)  # no labels
    return root / "runs" / "m", root / "preds" / "m"


def test_blend_runs_prior_shift_needs_no_test_labels(oof, tmp_path):
    cal, pool = _halves(oof, 1)
    test = _shifted(pool, EYEPACS_LIKE, 600, 1).assign(id=lambda d: [f"t{i}" for i in range(len(d))])
    run, preds = _run_csvs(cal, test, tmp_path)
    plain = ensemble.blend_runs({"m": run}, {"m": preds}, test["id"], n_boot=20)
    shifted = ensemble.blend_runs({"m": run}, {"m": preds}, test["id"], thresholds="prior_shift", n_boot=20)
    assert plain.threshold_mode == "oof" and np.array_equal(plain.thresholds, plain.thresholds_oof)
    assert shifted.threshold_mode == "prior_shift"
    assert np.array_equal(shifted.thresholds, shifted.thresholds_prior_shift)
    assert np.array_equal(shifted.thresholds_oof, plain.thresholds_oof) and shifted.oof_qwk == plain.oof_qwk
    assert shifted.prior.prior[0] > 0.6 > plain.prior.train_prior[0]
    # more test images called grade 0, as the prior says
    assert (shifted.submission["diagnosis"] == 0).mean() > (plain.submission["diagnosis"] == 0).mean()
    with pytest.raises(ensemble.EnsembleError, match="unknown thresholds"):
        ensemble.blend_runs({"m": run}, {"m": preds}, test["id"], thresholds="auto")


def test_report_has_shift_shakeup_and_review_sections(oof, tmp_path):
    cal, pool = _halves(oof, 2)
    test = _shifted(pool, EYEPACS_LIKE, 300, 2)
    y, p = cal["grade"].to_numpy(), cal["pred"].to_numpy()
    thr = metrics.optimise_thresholds(p, y)
    est = shift.estimate_prior(y, p, test["pred"], thresholds=thr, n_boot=20)
    thr_new = shift.prior_shift_thresholds(p, y, est.prior, init=thr)
    unc = shift.uncertainty(test.assign(id=[f"t{i}" for i in range(len(test))]))
    files = html.write_report(tmp_path, cal.rename(columns={"pred": "m"}), thresholds=thr, test_pred=test["pred"],
                                prior=est, threshold_sets={"prior_shift": thr_new}, threshold_mode="prior_shift",
                                review=shift.review_list(unc, thr_new), shakeup_sims=50)
    page = files["html"].read_text()
    for text in ("Label shift", "Shake-up", "Images to review first", "Thresholds fitted per fold",
                 "at the estimated test prior"):
        assert text in page
    for key in ("prior", "shakeup", "fold_thresholds", "review_csv", "prior_csv"):
        assert files[key].is_file()
    summary = pd.read_json(files["summary"], typ="series")
    assert summary["threshold_mode"] == "prior_shift"
    assert summary["thresholds_submission"] == pytest.approx(thr_new.tolist())


def test_notebooks_declare_the_threshold_option():
    root = Path(__file__).resolve().parents[1] / "notebooks"
    for name in ("blend.py", "kernel.py"):
        text = (root / name).read_text()
        params = text.split('tags=["parameters"]', 1)[1].split("# %%", 1)[0]
        assert 'thresholds = "oof"' in params and 'prior_method = "em"' in params, name


def test_inference_writes_every_fold_and_view(sample_dir, tmp_path):
    """Real sample photographs through predict_runs with hflip: test_views.csv holds fold x view predictions
    whose mean is ``pred``, and their spread feeds the per-image uncertainty."""
    import torch
    from train_helpers import register_tiny_model

    from kaggle_utils.data.preprocess import PreprocessConfig
    from kaggle_utils.inference import predict as infer
    from kaggle_utils.models import create_model

    torch.manual_seed(0)
    models = [create_model(register_tiny_model(), pretrained=False).eval() for _ in range(2)]
    run = infer.Run("tiny", tmp_path, models, [0, 1], PreprocessConfig(size=64), 64,
                    tuple(models[0].mean), tuple(models[0].std))
    labels = pd.read_csv(sample_dir / "labels.csv").head(6)
    table = pd.DataFrame({"id": labels["id_code"].astype(str),
                          "path": [str(sample_dir / "images" / f"{i}.jpg") for i in labels["id_code"]]})
    res = infer.predict_runs([run], table, tta="hflip", batch_size=4, workers=1, progress=False)
    infer.write_predictions(res, tmp_path / "preds")
    views = pd.read_csv(tmp_path / "preds" / "tiny" / infer.VIEWS_FILE, dtype={"id": str})
    preds = pd.read_csv(tmp_path / "preds" / "tiny" / infer.PRED_FILE, dtype={"id": str})
    assert [c for c in views.columns if c != "id"] == [f"pred_fold{f}_view{v}" for f in (0, 1) for v in (0, 1)]
    assert not any("_view" in c for c in preds.columns)
    assert np.allclose(views.drop(columns="id").mean(axis=1), preds["pred"], atol=1e-6)
    unc = shift.run_uncertainty(tmp_path / "preds" / "tiny")
    assert unc["n_members"].iloc[0] == 4 and (unc["sd_tta"] > 0).all() and (unc["sd_folds"] > 0).all()
    assert np.allclose(unc["pred"], preds["pred"], atol=1e-6)
