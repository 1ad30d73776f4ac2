"""The APTOS ablation table from one finished chain workdir (``make aptos`` writes ``outputs/aptos_cpu``).

Every model of the chain and the blend, scored on the same folds: out-of-fold QWK with thresholds fitted on the
OOF (optimistic: fitted on what they score) and with the fixed 0.5..3.5 cuts, per-fold spread, referable-DR AUC,
then the held-out competition images (``holdout:`` in the config, never trained on, never used for fitting)
scored with the OOF-fitted thresholds: the honest number. Reads only CSVs; seconds.

    python bench/aptos_ablation.py [outputs/aptos_cpu]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kaggle_utils import metrics  # noqa: E402


def _score(y: np.ndarray, pred: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    return (metrics.qwk(y, metrics.apply_thresholds(pred, thr)),
            metrics.qwk(y, metrics.apply_thresholds(pred, metrics.DEFAULT_THRESHOLDS)))


def table(workdir: Path) -> pd.DataFrame:
    """One row per model column of the blend's OOF (the blend included)."""
    blend_dir = workdir / "blend"
    models = pd.read_csv(blend_dir / "summary_models.csv")
    names = [m for m in models["model"] if m != "blend"]
    parts = [pd.read_csv(workdir / "preds" / m / "oof.csv", dtype={"id": str}).set_index("id") for m in names]
    oof = pd.DataFrame({m: p["pred"] for m, p in zip(names, parts, strict=True)})
    oof["grade"], oof["fold"] = parts[0]["grade"], parts[0]["fold"]
    oof["blend"] = oof[names].to_numpy() @ models.set_index("model").loc[names, "weight"].to_numpy(float)
    truth = pd.read_csv(workdir / "data" / "test.csv", dtype={"id": str}).set_index("id")["grade"]
    test = pd.read_csv(blend_dir / "test_blend.csv", dtype={"id": str}).set_index("id").loc[truth.index]
    y, yt = oof["grade"].to_numpy(int), truth.to_numpy(int)
    rows = []
    for col in [c for c in oof.columns if c not in ("grade", "fold")]:
        p = oof[col].to_numpy(float)
        thr = metrics.optimise_thresholds(p, y)
        fitted, fixed = _score(y, p, thr)
        per_fold = [metrics.qwk(y[f], metrics.apply_thresholds(p[f], metrics.DEFAULT_THRESHOLDS))
                    for f in (oof["fold"] == k for k in sorted(oof["fold"].unique()))]
        h_fitted, h_fixed = _score(yt, test[col].to_numpy(float), thr)
        rows.append({"model": col, "oof_qwk_fitted": fitted, "oof_qwk_fixed": fixed,
                     "fold_qwk_fixed_mean": np.mean(per_fold), "fold_qwk_fixed_sd": np.std(per_fold),
                     "referable_auc": metrics.referable_dr(y, p)["auc"],
                     "holdout_qwk_oof_thr": h_fitted, "holdout_qwk_fixed": h_fixed,
                     "holdout_referable_auc": metrics.referable_dr(yt, test[col].to_numpy(float))["auc"]})
    return pd.DataFrame(rows).set_index("model")


def main(argv: list[str]) -> int:
    workdir = Path(argv[0] if argv else "outputs/aptos_cpu")
    if not (workdir / "blend" / "summary_models.csv").exists():
        print(f"error: {workdir} has no finished blend; run `make aptos` first", file=sys.stderr)
        return 1
    df = table(workdir)
    n_oof = len(pd.read_csv(workdir / "preds" / df.index[0] / "oof.csv"))
    n_test = len(pd.read_csv(workdir / "data" / "test.csv"))
    print(f"{workdir}: {n_oof} OOF images (5 folds), {n_test} held-out images")
    print(df.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
