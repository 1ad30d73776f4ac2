import numpy as np
import pandas as pd
import pytest

from kaggle_utils import metrics
from kaggle_utils.inference import ensemble, pseudo
from kaggle_utils.inference.ensemble import EnsembleError


def _truth(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(5, size=n, p=[0.45, 0.1, 0.25, 0.08, 0.12]).astype(float)


def _noisy(y: np.ndarray, sd: float, seed: int) -> np.ndarray:
    return np.clip(y + np.random.default_rng(seed).normal(0, sd, len(y)), 0, 4)


@pytest.mark.parametrize("method", ["qwk", "mse"])
def test_blend_weights_find_the_good_model(method):
    y = _truth()
    good = _noisy(y, 0.35, 1)
    noise = np.random.default_rng(2).uniform(0, 4, len(y))
    p = np.column_stack([noise, good])
    w = ensemble.fit_blend_weights(p, y, method=method)
    assert w.shape == (2,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert w[1] > 0.9
    # same inputs, same weights
    assert np.array_equal(w, ensemble.fit_blend_weights(p, y, method=method))


def test_qwk_blend_not_worse_than_best_single_or_equal():
    y = _truth(600, seed=3)
    p = pd.DataFrame({"a": _noisy(y, 0.7, 4), "b": _noisy(y, 0.8, 5), "c": _noisy(y, 1.2, 6)})
    w = ensemble.fit_blend_weights(p, y, method="qwk")
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    fitted = ensemble.blend_score(p, y, w)
    singles = [ensemble.blend_score(p, y, e) for e in np.eye(3)]
    assert fitted >= max(singles)
    assert fitted >= ensemble.blend_score(p, y, np.full(3, 1 / 3))
    # independent errors: blending should beat the best model, not just match it
    assert fitted > max(singles)


def test_blend_and_shape_errors():
    p = np.array([[1.0, 3.0], [2.0, 4.0]])
    assert np.allclose(ensemble.blend(p, [0.25, 0.75]), [2.5, 3.5])
    with pytest.raises(EnsembleError, match="2 model columns but 3 weights"):
        ensemble.blend(p, [0.2, 0.3, 0.5])
    with pytest.raises(EnsembleError, match="unknown blend method"):
        ensemble.fit_blend_weights(p, [0, 1], method="median")
    assert np.array_equal(ensemble.fit_blend_weights(p[:, :1], [0, 1]), [1.0])


def test_fit_thresholds_are_sorted_and_help():
    y = _truth(400, seed=7)
    pred = np.clip(y * 0.8 + 0.3 + np.random.default_rng(8).normal(0, 0.3, len(y)), 0, 4)  # biased scale
    thr = ensemble.fit_thresholds(pred, y)
    assert thr.shape == (4,) and np.all(np.diff(thr) > 0)
    assert metrics.qwk(y, metrics.apply_thresholds(pred, thr)) >= metrics.qwk(
        y, metrics.apply_thresholds(pred, ensemble.DEFAULT_THRESHOLDS))


def _write_run(root, name, ids, grades, preds, n_folds=2):
    for k in range(n_folds):
        sl = slice(k, None, n_folds)
        df = pd.DataFrame({"id": ids[sl], "grade": grades[sl], "pred": preds[sl], "fold": k})
        (root / name / f"fold{k}").mkdir(parents=True)
        df.to_csv(root / name / f"fold{k}" / "oof.csv", index=False)
    return root / name


def test_collect_oof_from_run_dirs(tmp_path):
    ids = np.array([f"img{i:03d}" for i in range(10)])
    y = np.arange(10) % 5
    a = _write_run(tmp_path, "effb4", ids, y, y + 0.1)
    b = _write_run(tmp_path, "se_resnext", ids, y, y - 0.2)
    wide = ensemble.collect_oof([a, b])
    assert list(wide.columns) == ["id", "grade", "fold", "effb4", "se_resnext"]
    assert len(wide) == 10 and set(wide["fold"]) == {0, 1}
    row = wide.set_index("id").loc["img007"]
    assert row["effb4"] == pytest.approx(y[7] + 0.1) and row["se_resnext"] == pytest.approx(y[7] - 0.2)
    assert ensemble.model_columns(wide) == ["effb4", "se_resnext"]


def test_collect_oof_errors_name_the_ids():
    y = np.array([0, 1, 2])
    a = pd.DataFrame({"id": ["x", "y", "z"], "grade": y, "pred": [0.1, 1.0, 2.0], "fold": 0})
    b = pd.DataFrame({"id": ["x", "y", "w"], "grade": y, "pred": [0.1, 1.0, 2.0], "fold": 0})
    with pytest.raises(EnsembleError, match=r"missing 1 \['z'\].*extra 1 \['w'\]"):
        ensemble.collect_oof({"a": a, "b": b})
    c = a.assign(grade=[0, 1, 3])
    with pytest.raises(EnsembleError, match=r"true grades of 'c'.*\['z'\]"):
        ensemble.collect_oof({"a": a, "c": c})
    with pytest.raises(EnsembleError, match="duplicated ids"):
        ensemble.collect_oof({"a": pd.concat([a, a])})
    with pytest.raises(EnsembleError, match="no oof.csv"):
        ensemble.collect_oof(["/nonexistent/run"])


def test_collect_test_aligns_on_first_model_order():
    a = pd.DataFrame({"id": ["b", "a", "c"], "pred": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"id": ["a", "b", "c"], "pred": [2.5, 1.5, 3.5]})
    wide = ensemble.collect_test({"m1": a, "m2": b})
    assert list(wide["id"]) == ["b", "a", "c"]
    assert list(wide["m2"]) == [1.5, 2.5, 3.5]
    one_fold = ensemble.collect_test({"m1": a.assign(pred_fold0=[0.0, 1.0, 2.0])}, pred_col="pred_fold0")
    assert list(one_fold["m1"]) == [0.0, 1.0, 2.0]


def test_make_submission_order_coverage_and_range():
    test_ids = ["t3", "t1", "t2", "t0", "t4"]
    preds = pd.Series({"t0": -0.3, "t1": 0.9, "t2": 1.7, "t3": 2.6, "t4": 9.0, "extra": 2.0})
    sub = ensemble.make_submission(test_ids, preds)
    assert list(sub.columns) == ["id_code", "diagnosis"]
    assert list(sub["id_code"]) == test_ids
    assert list(sub["diagnosis"]) == [3, 1, 2, 0, 4]
    assert pd.api.types.is_integer_dtype(sub["diagnosis"])
    # fitted thresholds move the cut points
    sub2 = ensemble.make_submission(test_ids, preds, thresholds=[0.5, 1.0, 2.7, 3.5])
    assert list(sub2["diagnosis"]) == [2, 1, 2, 0, 4]
    # array aligned with test ids and a (id, pred) table both work
    arr = ensemble.make_submission(test_ids, preds.reindex(test_ids).to_numpy())
    tab = ensemble.make_submission(test_ids, preds.rename_axis("id").reset_index(name="pred"))
    pd.testing.assert_frame_equal(arr, sub)
    pd.testing.assert_frame_equal(tab, sub)


def test_make_submission_missing_preds_need_fallback(tmp_path):
    test_ids = ["a", "b", "c"]
    preds = {"a": 0.2, "c": 3.1}
    with pytest.raises(EnsembleError, match=r"1 test ids have no prediction: \['b'\]"):
        ensemble.make_submission(test_ids, preds)
    with pytest.warns(UserWarning, match="fallback grade 2"):
        sub = ensemble.make_submission(test_ids, preds, fallback=2)
    assert list(sub["diagnosis"]) == [0, 2, 3]
    with pytest.raises(EnsembleError, match="fallback must be a grade"):
        ensemble.make_submission(test_ids, preds, fallback=7)
    with pytest.raises(EnsembleError, match="test ids repeat"):
        ensemble.make_submission(["a", "a"], [1.0, 2.0])
    assert ensemble.fallback_grade([0, 0, 2, 2, 2, 4]) == 2

    path = ensemble.write_submission(sub, tmp_path / "submission.csv")
    back = pd.read_csv(path, dtype={"id_code": str})
    pd.testing.assert_frame_equal(back, sub)
    with pytest.raises(EnsembleError, match="integers 0-4"):
        ensemble.write_submission(sub.assign(diagnosis=[0, 5, 1]), tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_soft_labels_math():
    g, p = np.array([0, 2, 4, 1]), np.array([1.0, 2.5, 4.6, -0.4])
    assert np.allclose(pseudo.soft_labels(g, p), [0.5, 2.25, 4.0, 0.3])
    assert np.allclose(pseudo.soft_labels(g, p, alpha=0.0), g)
    assert np.allclose(pseudo.soft_labels(g, p, alpha=0.25), [0.25, 2.125, 4.0, 0.65])
    with pytest.raises(EnsembleError):
        pseudo.soft_labels(g, p[:3])
    with pytest.raises(EnsembleError, match="NaN"):
        pseudo.soft_labels([np.nan], [1.0])


def test_pseudo_label_test_soft_hard_and_confidence():
    test = pd.DataFrame({"id": ["p", "q", "r", "s"], "path": ["/t/p.png", "/t/q.png", "/t/r.png", "/t/s.png"]})
    preds = pd.Series({"s": 4.3, "r": 2.45, "q": 1.0, "p": 0.1})
    soft = pseudo.pseudo_label_test(test, preds, round_no=2)
    assert list(soft.columns) == ["id", "path", "grade", "source", "round", "fold"]
    assert list(soft["id"]) == ["p", "q", "r", "s"] and list(soft["path"])[0] == "/t/p.png"
    assert np.allclose(soft["grade"], [0.1, 1.0, 2.45, 4.0])
    assert set(soft["source"]) == {"pseudo"} and set(soft["round"]) == {2} and set(soft["fold"]) == {-1}
    hard = pseudo.pseudo_label_test(test, preds, soft=False)
    assert list(hard["grade"]) == [0, 1, 2, 4]
    confident = pseudo.pseudo_label_test(test, preds, min_distance=0.2)
    assert list(confident["id"]) == ["p", "q", "s"]  # 2.45 is 0.05 from the 2.5 cut point
    with pytest.raises(EnsembleError, match="no prediction"):
        pseudo.pseudo_label_test(test, preds.drop("q"))


def test_next_round_table_is_repeatable():
    train = pd.DataFrame({"id": ["a", "b", "c"], "path": ["/a", "/b", "/c"], "grade": pd.array([0, 2, 4], "Int64"),
                          "source": "aptos", "fold": [0, 1, 0]})
    test = pd.DataFrame({"id": ["x", "y"], "path": ["/x", "/y"]})
    r1 = pseudo.next_round_table(train, test, {"x": 1.2, "y": 3.9}, round_no=1)
    assert list(r1["id"]) == ["a", "b", "c", "x", "y"]
    assert list(r1["round"]) == [0, 0, 0, 1, 1] and list(r1["fold"]) == [0, 1, 0, -1, -1]
    assert list(r1["source"]) == ["aptos"] * 3 + ["pseudo"] * 2
    assert np.allclose(r1["grade"].astype(float), [0, 2, 4, 1.2, 3.9])
    # round 2 from round 1's table: old pseudo rows replaced, not stacked
    r2 = pseudo.next_round_table(r1, test, {"x": 1.4, "y": 3.7}, round_no=2)
    assert list(r2["id"]) == ["a", "b", "c", "x", "y"] and list(r2["round"])[-2:] == [2, 2]
    assert np.allclose(r2["grade"].astype(float)[-2:], [1.4, 3.7])
    pd.testing.assert_frame_equal(r2, pseudo.next_round_table(r1, test, {"x": 1.4, "y": 3.7}, round_no=2))
    # stage-1 OOF softens the given labels too (1st place)
    soft = pseudo.next_round_table(train, test, {"x": 1.2, "y": 3.9}, 1, train_preds={"a": 1.0, "b": 2.0, "c": 3.0})
    assert np.allclose(soft["grade"][:3], [0.5, 2.0, 3.5])
    assert list(soft["grade_given"][:3]) == [0, 2, 4] and soft["grade_given"][3:].isna().all()
    # the next round softens the original labels again, not the already-soft targets
    soft2 = pseudo.next_round_table(soft, test, {"x": 1.2, "y": 3.9}, 2, train_preds={"a": 1.0, "b": 2.0, "c": 3.0})
    assert np.allclose(soft2["grade"][:3], [0.5, 2.0, 3.5]) and list(soft2["grade_given"][:3]) == [0, 2, 4]
    with pytest.raises(EnsembleError, match="also training ids"):
        pseudo.next_round_table(train, pd.DataFrame({"id": ["a"]}), {"a": 1.0}, 1)
    with pytest.raises(EnsembleError, match="make folds first"):
        pseudo.next_round_table(train.drop(columns="fold"), test, {"x": 1.0, "y": 2.0}, 1)


def test_blend_runs_keeps_na_and_null_ids_from_files(tmp_path):
    """test_preds.csv written by inference, read back by the blend: ``NA``/``null`` are ids, not NaN (they
    used to collapse into one duplicated NaN id)."""
    from kaggle_utils.data.sources import test_table
    from kaggle_utils.inference.files import PRED_FILE

    y = _truth(60)
    _write_run(tmp_path / "oof", "lite0", np.array([f"tr{i}" for i in range(60)]), y, _noisy(y, 0.4, 1))
    test_ids = ["NA", "null", "nan", "00123", "None", "t5"]
    pd.DataFrame({"id_code": test_ids}).to_csv(tmp_path / "test.csv", index=False)
    test = test_table(tmp_path / "test.csv", tmp_path / "test_images")
    preds_dir = tmp_path / "preds" / "lite0"
    preds_dir.mkdir(parents=True)
    pd.DataFrame({"id": test["id"], "pred": [0.1, 1.2, 2.1, 3.3, 3.9, 0.0]}).to_csv(preds_dir / PRED_FILE,
                                                                                    index=False)
    result = ensemble.blend_runs({"lite0": tmp_path / "oof" / "lite0"}, {"lite0": preds_dir}, test["id"], n_boot=5)
    assert result.submission["id_code"].tolist() == test_ids
    assert result.test["blend"].notna().all()
