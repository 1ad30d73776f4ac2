"""A real label shift: a model trained on IDRiD (32 % grade 0) predicting EyePACS (80 % grade 0).

Stage ``train`` (resumable; ~12-15 min of one CPU thread): crop + Ben Graham at ``--size`` for both sets (the same
recipe: both are natural-colour photographs), ``--folds`` folds of EfficientNet-Lite0 (real ImageNet weights) for
``--epochs`` epochs on ``../shared/data/idrid_train``; each fold's validation images and the 810 EyePACS photographs
are then predicted with hflip TTA. Stage ``analyse`` (seconds): the test prior is estimated from the predictions
alone (BBSE and EM, bootstrap CI) and QWK on EyePACS is compared under OOF thresholds and prior-shift thresholds;
the EyePACS labels are used only to score. Outputs under ``outputs/shift_idrid/`` (git-ignored).

    python bench/shift_cross_dataset.py [--stage all|train|analyse] [--size 192] [--folds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kaggle_utils import io  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "outputs" / "shift_idrid"


def train_and_predict(size: int, n_folds: int, epochs: int, threads: int) -> None:
    """Cache IDRiD, train the folds, predict OOF (hflip) and EyePACS (hflip) into OUT/preds/lite0."""
    import torch

    from kaggle_utils.data import cache, folds, sources
    from kaggle_utils.data.preprocess import PreprocessConfig
    from kaggle_utils.inference import predict as infer
    from kaggle_utils.training import loop

    torch.set_num_threads(threads)
    t0 = time.time()
    cfg = PreprocessConfig(size=size, ben_graham=True)
    idrid = sources.load_idrid(DATA / "idrid_train" / "labels.csv", DATA / "idrid_train" / "images")
    cache.build_cache(idrid, OUT / "cache", cfg, workers=threads, progress=False)
    table = folds.make_folds(cache.load_cache(OUT / "cache"), n_folds=n_folds, seed=0, group_col=None)
    print(f"cache {time.time() - t0:.0f}s")
    run_dir = OUT / "runs" / "lite0"
    for k in range(n_folds):
        res = loop.train_fold({"out_dir": str(run_dir / f"fold{k}"), "cache_dir": str(OUT / "cache"), "fold": k,
                                "n_folds": n_folds, "model": "efficientnet-lite0", "pretrained": True, "size": size,
                                "epochs": epochs, "batch_size": 16, "lr": 1e-3, "num_workers": 0,
                                "monitor": "val_loss", "progress": False, "seed": 0}, table=table)
        print(f"fold {k}: {res['status']} best {res.get('best')} ({time.time() - t0:.0f}s)")
    preds = OUT / "preds"
    if not (preds / "lite0" / "oof.csv").is_file():
        io.write_csv(preds / "lite0" / "oof.csv", infer.predict_oof(run_dir, tta="hflip", workers=1, progress=False))
    print(f"oof {time.time() - t0:.0f}s")
    eye = sources.load_eyepacs(DATA / "eyepacs1024" / "trainLabels.csv", DATA / "eyepacs1024" / "images", ext=".jpeg")
    io.write_csv(OUT / "eyepacs_labels.csv", eye[["id", "grade"]])
    if not (preds / "lite0" / infer.PRED_FILE).is_file():
        infer.infer([run_dir], eye[["id", "path"]], preds, tta="hflip", workers=1, device="cpu", progress=False)
    print(f"eyepacs {time.time() - t0:.0f}s")


def analyse(n_boot: int) -> dict:
    """Prior estimates and QWK on EyePACS under both threshold choices; writes OUT/shift_summary.json."""
    from kaggle_utils import metrics
    from kaggle_utils.inference import shift

    oof = pd.read_csv(OUT / "preds" / "lite0" / "oof.csv", dtype={"id": str})
    test = pd.read_csv(OUT / "preds" / "lite0" / "test_preds.csv", dtype={"id": str})
    labels = pd.read_csv(OUT / "eyepacs_labels.csv", dtype={"id": str}).set_index("id")["grade"]
    test = test[np.isfinite(test["pred"])]
    y_oof, p_oof = oof["grade"].to_numpy(int), oof["pred"].to_numpy(float)
    p_test, y_test = test["pred"].to_numpy(float), labels.loc[test["id"]].to_numpy(int)
    thr_oof = metrics.optimise_thresholds(p_oof, y_oof)
    true_prior = shift.grade_prior(y_test)
    out: dict = {"n_oof": len(oof), "n_test": len(test), "train_prior": shift.grade_prior(y_oof).tolist(),
                 "true_test_prior": true_prior.tolist(), "oof_qwk": metrics.qwk(y_oof, metrics.apply_thresholds(
                     p_oof, thr_oof)), "thresholds_oof": thr_oof.tolist(),
                 "test_qwk_oof_thresholds": metrics.qwk(y_test, metrics.apply_thresholds(p_test, thr_oof)),
                 "test_qwk_default_thresholds": metrics.qwk(y_test, metrics.apply_thresholds(p_test))}
    for method in shift.METHODS:
        est = shift.estimate_prior(y_oof, p_oof, p_test, method=method, thresholds=thr_oof, n_boot=n_boot, seed=0)
        thr = shift.prior_shift_thresholds(p_oof, y_oof, est.prior, init=thr_oof)
        out[method] = {"prior": est.prior.tolist(), "ci_low": est.low.tolist(), "ci_high": est.high.tolist(),
                       "abs_error": np.abs(est.prior - true_prior).tolist(),
                       "max_abs_error": float(np.abs(est.prior - true_prior).max()), "thresholds": thr.tolist(),
                       "test_qwk": metrics.qwk(y_test, metrics.apply_thresholds(p_test, thr)),
                       "test_hist": np.bincount(metrics.apply_thresholds(p_test, thr), minlength=5).tolist()}
    oracle = shift.prior_shift_thresholds(p_oof, y_oof, true_prior, init=thr_oof)
    out["oracle_prior_thresholds"] = oracle.tolist()
    out["test_qwk_true_prior_thresholds"] = metrics.qwk(y_test, metrics.apply_thresholds(p_test, oracle))
    io.write_json(OUT / "shift_summary.json", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("all", "train", "analyse"), default="all")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--boot", type=int, default=200)
    args = ap.parse_args()
    if args.stage in ("all", "train"):
        train_and_predict(args.size, args.folds, args.epochs, args.threads)
    if args.stage in ("all", "analyse"):
        print(json.dumps(analyse(args.boot), indent=1))


if __name__ == "__main__":
    main()
