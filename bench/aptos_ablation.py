"""The APTOS ablation table from finished chain workdirs (``make aptos`` writes ``outputs/aptos_cpu``).

Every model of each chain and its blend, scored on the same folds: out-of-fold QWK with thresholds fitted on the
OOF (optimistic: fitted on what they score) and with the fixed 0.5..3.5 cuts, per-fold spread, referable-DR AUC,
then the held-out competition images (``holdout:`` in the config, never trained on, never used for fitting)
scored with the OOF-fitted thresholds: the honest number. The generalisation guard: the same fold models on the
413 IDRiD photographs (another camera, another country; none of the runs may have trained on them), preprocessed
the way the chain treats an external source (retina crop, Ben Graham, stretched to the model's size), with the
OOF-fitted thresholds and the fixed cuts. ``train_min`` is the model's training step time (stage 1 included),
``run_min`` the whole chain's step time.

    python bench/aptos_ablation.py [outputs/aptos_cpu [outputs/aptos_baseline ...]] [--folds K[,K...]]
        [--no-tta] [--idrid CSV IMAGES | --no-idrid]

``--folds 0`` scores one fold's model, ``--folds 0,1,2`` an ensemble of three of the five (the time-for-quality
trade of training fewer fold models; their OOF covers those folds only).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from kaggle_utils import io, metrics  # noqa: E402

IDRID = ("../shared/data/idrid_train/labels.csv", "../shared/data/idrid_train/images")


def _score(y: np.ndarray, pred: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    return (metrics.qwk(y, metrics.apply_thresholds(pred, thr)),
            metrics.qwk(y, metrics.apply_thresholds(pred, metrics.DEFAULT_THRESHOLDS)))


def _read(path: Path) -> pd.DataFrame:
    return io.read_csv(path).set_index("id")


def step_minutes(workdir: Path, folds: list[int] | None = None) -> tuple[dict[str, float], float]:
    """Training minutes per model (its folds, or only ``folds``, and its stage 1) and the whole chain's step
    minutes."""
    steps = io.read_json(workdir / "run_log.json")["steps"]
    per_model: dict[str, float] = {}
    for name, rec in steps.items():
        kind, _, rest = name.partition(":")
        if kind == "pretrain" or (kind == "train" and (folds is None or rest.rsplit(":fold", 1)[-1] in map(str, folds))):
            model = rest.split(":")[0]
            per_model[model] = per_model.get(model, 0.0) + rec["seconds"] / 60
    return per_model, sum(rec["seconds"] for rec in steps.values()) / 60


def idrid_predictions(workdir: Path, names: list[str], csv: str, images: str) -> pd.DataFrame:
    """Every model's prediction per fold and TTA view (``<model>:pred_fold<k>_view<v>``) on IDRiD; cached in
    ``<workdir>/idrid_guard/`` and redone when a checkpoint changes."""
    from kaggle_utils.data import cache, preprocess, sources
    from kaggle_utils.inference import predict

    runs = {n: workdir / "runs" / n for n in names}
    stamps = sorted(f"{p}:{p.stat().st_mtime_ns}" for r in runs.values() for p in predict.fold_checkpoints(r))
    key = hashlib.sha256("\n".join([csv, images, *stamps]).encode()).hexdigest()[:16]
    out = workdir / "idrid_guard" / f"preds_{key}.csv"
    if out.is_file():
        return _read(out)
    table = sources.load_source("idrid", csv, images)
    tta = (yaml.safe_load((workdir / "config.yaml").read_text()).get("infer") or {}).get("tta", "none")
    parts = []
    for name, run_dir in runs.items():
        run = predict.load_run(run_dir, name=name)
        recipe = preprocess.PreprocessConfig(size=run.size, crop=True, ben_graham=True, resize_mode="stretch")
        cache.build_cache(table, workdir / "idrid_guard" / f"cache{run.size}", recipe, progress=False)
        cached = cache.load_cache(workdir / "idrid_guard" / f"cache{run.size}")
        if len(cached) < len(table):
            print(f"warning: {len(table) - len(cached)} IDRiD image(s) failed to preprocess", file=sys.stderr)
        test = pd.DataFrame({"id": cached["id"].astype(str), "path": cached["cache_path"]})
        result = predict.predict_runs([run], test, tta=tta, progress=False)[name].set_index("id")
        views = [c for c in result.columns if c.startswith("pred_fold") and "_view" in c]
        parts.append(result[views].add_prefix(f"{name}:"))
    df = pd.concat(parts, axis=1)
    df["grade"] = table.set_index("id").loc[df.index, "grade"].astype(int)
    io.write_csv(out, df.reset_index())
    return df


def _n_views(df: pd.DataFrame) -> int:
    return max(int(c.rsplit("view", 1)[1]) for c in df.columns if "_view" in c) + 1


def _mean_views(df: pd.DataFrame, prefix: str, folds: list[int], views: list[int]) -> pd.Series:
    return df[[f"{prefix}pred_fold{k}_view{v}" for k in folds for v in views]].mean(axis=1)


def model_predictions(workdir: Path, name: str, folds: list[int] | None,
                      tta: bool) -> tuple[pd.DataFrame, pd.Series]:
    """One model's OOF (``grade, fold, pred``) and held-out predictions under the ablation's choices: all
    folds or some folds' models, TTA views averaged or the first view alone (then the OOF is training's own
    validation pass, which has no TTA either)."""
    if tta:
        oof = _read(workdir / "preds" / name / "oof.csv")
    else:
        oof = pd.concat([_read(p) for p in sorted((workdir / "runs" / name).glob("fold*/oof.csv"))])
    views = _read(workdir / "preds" / name / "test_views.csv")
    folds = sorted(oof["fold"].unique()) if folds is None else folds
    missing = sorted(set(folds) - set(oof["fold"]))
    if missing:
        raise SystemExit(f"error: {workdir} has no model for fold(s) {missing}")
    oof = oof[oof["fold"].isin(folds)]
    return oof, _mean_views(views, "", folds, list(range(_n_views(views))) if tta else [0])


def table(workdir: Path, idrid: tuple[str, str] | None = IDRID, folds: list[int] | None = None,
          tta: bool = True) -> pd.DataFrame:
    """One row per model of the chain and its blend (the blend's weights over the models' predictions)."""
    models = io.read_csv(workdir / "blend" / "summary_models.csv")
    names = [m for m in models["model"] if m != "blend"]
    weights = models.set_index("model").loc[names, "weight"].to_numpy(float)
    truth = _read(workdir / "data" / "test.csv")["grade"]
    preds = {n: model_predictions(workdir, n, folds, tta) for n in names}
    first = preds[names[0]][0]
    oof = pd.DataFrame({n: preds[n][0]["pred"].loc[first.index] for n in names})
    oof["grade"], oof["fold"] = first["grade"], first["fold"]
    test = pd.DataFrame({n: preds[n][1].loc[truth.index] for n in names})
    oof["blend"], test["blend"] = oof[names].to_numpy() @ weights, test[names].to_numpy() @ weights
    guard = None
    if idrid:
        views = idrid_predictions(workdir, names, *idrid)
        guard = pd.DataFrame({n: _mean_views(views, f"{n}:", sorted(oof["fold"].unique()), list(range(_n_views(views))) if tta else [0])
                              for n in names})
        guard["blend"], guard["grade"] = guard[names].to_numpy() @ weights, views["grade"]
    minutes, run_min = step_minutes(workdir, folds)
    y, yt = oof["grade"].to_numpy(int), truth.to_numpy(int)
    picked = "" if folds is None else f", fold{'s' if len(folds) > 1 else ''} {','.join(map(str, folds))}"
    variant = picked + ("" if tta else ", no TTA")
    rows = []
    for col in [*names, "blend"] if len(names) > 1 else names:
        p = oof[col].to_numpy(float)
        thr = metrics.optimise_thresholds(p, y)
        fitted, fixed = _score(y, p, thr)
        per_fold = [metrics.qwk(y[f], metrics.apply_thresholds(p[f], metrics.DEFAULT_THRESHOLDS))
                    for f in (oof["fold"] == k for k in sorted(oof["fold"].unique()))]
        h_fitted, h_fixed = _score(yt, test[col].to_numpy(float), thr)
        row = {"run": workdir.name, "model": col + variant, "oof_qwk_fitted": fitted, "oof_qwk_fixed": fixed,
               "fold_qwk_fixed_mean": np.mean(per_fold), "fold_qwk_fixed_sd": np.std(per_fold),
               "referable_auc": metrics.referable_dr(y, p)["auc"],
               "holdout_qwk_oof_thr": h_fitted, "holdout_qwk_fixed": h_fixed,
               "holdout_referable_auc": metrics.referable_dr(yt, test[col].to_numpy(float))["auc"]}
        if guard is not None:
            yi, pi = guard["grade"].to_numpy(int), guard[col].to_numpy(float)
            row["idrid_qwk_oof_thr"], row["idrid_qwk_fixed"] = _score(yi, pi, thr)
            row["idrid_referable_auc"] = metrics.referable_dr(yi, pi)["auc"]
        row["train_min"] = sum(minutes.get(m, 0.0) for m in names) if col == "blend" else minutes.get(col, 0.0)
        row["run_min"] = run_min
        rows.append(row)
    return pd.DataFrame(rows).set_index(["run", "model"])


def _fold_list(text: str) -> list[int]:
    try:
        return sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fold numbers like 0 or 0,1,2, got {text!r}") from None


def markdown(df: pd.DataFrame) -> str:
    """The table as Markdown rows, three decimals (minutes: one)."""
    cols = list(df.columns)
    lines = ["| run | model | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (run, model), row in df.iterrows():
        cells = [f"{v:.1f}" if c.endswith("_min") else f"{v:.3f}" for c, v in row.items()]
        lines.append(f"| {run} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="*", default=["outputs/aptos_cpu"])
    ap.add_argument("--idrid", nargs=2, metavar=("CSV", "IMAGES"), default=list(IDRID),
                    help="the generalisation guard's labels and photographs (default: ../shared/data/idrid_train)")
    ap.add_argument("--no-idrid", action="store_true", help="skip the IDRiD columns")
    ap.add_argument("--folds", "--fold", type=_fold_list, metavar="K[,K...]",
                    help="score these folds' models (one, or a smaller ensemble) instead of all the chain's")
    ap.add_argument("--no-tta", action="store_true", help="the first TTA view alone (OOF: training's own)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/recipes.md)")
    args = ap.parse_args(argv)
    frames = []
    for workdir in map(Path, args.workdirs):
        if not (workdir / "blend" / "summary_models.csv").exists():
            print(f"error: {workdir} has no finished blend; run its chain first (`make aptos`)", file=sys.stderr)
            return 1
        trained_on = set(io.read_csv(workdir / "data" / "folds.csv")["dataset"].astype(str).str.lower())
        if not args.no_idrid and any("idrid" in name for name in trained_on):
            print(f"error: {workdir} trained on IDRiD; the guard needs runs that never saw it", file=sys.stderr)
            return 1
        frames.append(table(workdir, None if args.no_idrid else tuple(args.idrid), args.folds, not args.no_tta))
        n_oof = len(io.read_csv(workdir / "data" / "folds.csv"))
        n_test = len(io.read_csv(workdir / "data" / "test.csv"))
        print(f"{workdir}: {n_oof} training rows (OOF on the competition's), {n_test} held-out images")
    df = pd.concat(frames)
    print(markdown(df) if args.markdown else df.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
