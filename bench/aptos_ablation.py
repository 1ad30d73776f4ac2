"""The APTOS ablation table from finished chain workdirs (``make aptos`` writes ``outputs/aptos_cpu``).

Every model of each chain and its blend, scored on the same folds: out-of-fold QWK with thresholds fitted on the
OOF (optimistic: fitted on what they score) and with the fixed 0.5..3.5 cuts, per-fold spread, referable-DR AUC,
then the held-out competition images (``holdout:`` in the config, never trained on, never used for fitting)
scored with the OOF-fitted thresholds: the honest number. The generalisation guards, left out of training: the
same fold models on photographs of other cameras and countries that the run never trained on (IDRiD, 413,
India; the natural-colour EyePACS-810, USA), preprocessed the way the chain treats an external source (retina
crop, Ben Graham, stretched to the model's size). Per guard: QWK with the OOF-fitted thresholds and with the
fixed cuts, referable AUC, sensitivity and specificity at the fitted referable cut, and the mean predicted
grade beside the true one (a camera shift shows as drift). The script refuses a workdir that trained on a
guard. ``train_min`` is the model's training step time (stage 1 included), ``run_min`` the whole chain's.

    python bench/aptos_ablation.py [outputs/aptos_cpu [outputs/aptos_baseline ...]] [--folds K[,K...]]
        [--no-tta] [--guards idrid,eyepacs810 | --guards none] [--adapt-bn 0,0.5,1] [--prior-shift]

``--folds 0`` scores one fold's model, ``--folds 0,1,2`` an ensemble of three of the five (the time-for-quality
trade of training fewer fold models; their OOF covers those folds only). ``--adapt-bn`` adds a row per mix of
test-time BatchNorm adaptation (inference/adapt.py), each test set (held-out, every guard) adapted to itself;
``--prior-shift`` a row per variant whose cut points are refitted for each test set's EM-estimated grade mix.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from kaggle_utils import io, metrics  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class Guard(NamedTuple):
    """A labelled set from a camera the runs did not train on."""

    name: str
    reader: str
    csv: str
    images: str


GUARDS = {
    "idrid": Guard("idrid", "idrid", str(DATA / "idrid_train" / "labels.csv"), str(DATA / "idrid_train" / "images")),
    "eyepacs810": Guard("eyepacs810", "eyepacs", str(DATA / "eyepacs1024" / "trainLabels.csv"),
                        str(DATA / "eyepacs1024" / "images")),
}


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


def trained_on(workdir: Path, guard: Guard) -> bool:
    """Whether the chain in ``workdir`` had ``guard``'s photographs among its sources (by label file or image
    folder in its config, or by a dataset of the guard's name in its table)."""
    names = set(io.read_csv(workdir / "data" / "folds.csv")["dataset"].astype(str).str.lower())
    if any(guard.name.rstrip("0123456789") == n or guard.name in n for n in names):
        return True
    config = workdir / "config.yaml"
    if not config.is_file():
        return False
    own = {os.path.realpath(guard.csv), os.path.realpath(guard.images)}
    for source in (yaml.safe_load(config.read_text()).get("data") or {}).get("sources") or []:
        paths = {os.path.realpath(workdir.parent.parent / source[k]) for k in ("csv", "images") if k in source}
        paths |= {os.path.realpath(source[k]) for k in ("csv", "images") if k in source}
        if paths & own:
            return True
    return False


def _views(workdir: Path, names: list[str], tag: str, table: pd.DataFrame, recipe_of: object,
           adapt_bn: float) -> pd.DataFrame:
    """Every model's prediction per fold and TTA view (``<model>:pred_fold<k>_view<v>``) on ``table`` (``id,
    path, grade``), through ``recipe_of(run)`` (a cache recipe, or None: the run's own); cached in
    ``<workdir>/guards/<tag>/`` and redone when a checkpoint, the images, the recipe or the adaptation change."""
    from kaggle_utils.data import cache
    from kaggle_utils.inference import predict

    runs = {n: predict.load_run(workdir / "runs" / n, name=n) for n in names}
    recipes = {n: recipe_of(run) for n, run in runs.items()}
    looks = {n: "own" if r is None else json.dumps(r.to_dict(), sort_keys=True) for n, r in recipes.items()}
    stamps = sorted(f"{p}:{p.stat().st_mtime_ns}" for r in runs.values() for p in predict.fold_checkpoints(r.folder))
    key = hashlib.sha256("\n".join([tag, str(adapt_bn), *table["path"].astype(str), *stamps, *looks.values()]
                                   ).encode()).hexdigest()[:16]
    out = workdir / "guards" / tag / f"preds_{key}.csv"
    if out.is_file():
        return _read(out)
    tta = (yaml.safe_load((workdir / "config.yaml").read_text()).get("infer") or {}).get("tta", "none")
    parts = []
    for name, run in runs.items():
        recipe = recipes[name]
        test = table[["id", "path"]]
        if recipe is not None:
            look = hashlib.sha256(looks[name].encode()).hexdigest()[:8]
            folder = workdir / "guards" / tag / f"cache{recipe.size}_{look}"
            cache.build_cache(table, folder, recipe, progress=False)
            cached = cache.load_cache(folder)
            if len(cached) < len(table):
                print(f"warning: {len(table) - len(cached)} {tag} image(s) failed to preprocess", file=sys.stderr)
            test = pd.DataFrame({"id": cached["id"].astype(str), "path": cached["cache_path"]})
        result = predict.predict_runs([run], test, tta=tta, progress=False, adapt_bn=adapt_bn)[name].set_index("id")
        views = [c for c in result.columns if c.startswith("pred_fold") and "_view" in c]
        if not views:  # no TTA: the folds' columns are the one view
            views = [c for c in result.columns if c.startswith("pred_fold")]
            result = result.rename(columns={c: f"{c}_view0" for c in views})
            views = [f"{c}_view0" for c in views]
        parts.append(result[views].add_prefix(f"{name}:"))
    df = pd.concat(parts, axis=1)
    df["grade"] = table.set_index("id").loc[df.index, "grade"].astype(int)
    io.write_csv(out, df.reset_index())
    return df


def guard_predictions(workdir: Path, names: list[str], guard: Guard, adapt_bn: float = 0.0) -> pd.DataFrame:
    """The models on ``guard``'s photographs, preprocessed as ``infer`` treats a clinic's natural-colour
    photographs (``preprocess.natural_recipe`` of the run's recipe: crop, stretch, Ben in the training copy's
    look; the prediction resizes to the model's size, as ``infer`` does)."""
    from kaggle_utils.data import preprocess, sources

    table = sources.load_source(guard.reader, guard.csv, guard.images)
    return _views(workdir, names, guard.name, table, lambda run: preprocess.natural_recipe(run.preprocess),
                  adapt_bn)


def holdout_predictions(workdir: Path, names: list[str], adapt_bn: float) -> pd.DataFrame:
    """The models on the held-out competition images through their own recipe, adapted to that set."""
    table = io.read_csv(workdir / "data" / "test.csv")
    table["id"] = table["id"].astype(str)
    return _views(workdir, names, "holdout", table, lambda run: None, adapt_bn)


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


def guard_columns(prefix: str, y: np.ndarray, pred: np.ndarray, thr: np.ndarray) -> dict[str, float]:
    """One test set's columns: QWK (OOF thresholds / fixed cuts), referable AUC, sensitivity and specificity
    at the fitted referable cut (predicted grade >= 2), mean predicted (fitted thresholds) and true grade."""
    fitted, fixed = _score(y, pred, thr)
    ref = metrics.referable_dr(y, pred, threshold=float(thr[1]))
    return {f"{prefix}_qwk_oof_thr": fitted, f"{prefix}_qwk_fixed": fixed, f"{prefix}_auc": ref["auc"],
            f"{prefix}_sens": ref["sensitivity"], f"{prefix}_spec": ref["specificity"],
            f"{prefix}_mean_pred": float(metrics.apply_thresholds(pred, thr).mean()),
            f"{prefix}_mean_true": float(y.mean())}


def prior_thresholds(y: np.ndarray, p: np.ndarray, thr: np.ndarray, q: np.ndarray) -> np.ndarray:
    """What the blend's ``thresholds: prior_shift`` submits: the OOF-fitted cuts ``thr`` refitted on the OOF
    rows reweighted to the grade mix that EM estimates for the unlabelled predictions ``q``
    (inference/shift.py): the label-free answer to a new camera's different case mix."""
    from kaggle_utils.inference import shift

    prior = shift.estimate_prior(y, p, q, method="em", thresholds=thr, n_boot=0).prior
    return shift.prior_shift_thresholds(p, y, prior, init=thr)


def _same(thr: np.ndarray, q: np.ndarray) -> np.ndarray:
    return thr


def table(workdir: Path, guards: list[Guard] | None = None, folds: list[int] | None = None,
          tta: bool = True, adapt_bn: float = 0.0, prior_shift: bool = False) -> pd.DataFrame:
    """One row per model of the chain and its blend (the blend's weights over the models' predictions);
    ``prior_shift``: every test set scored with thresholds refitted for its own estimated grade mix."""
    guards = [] if guards is None else guards
    models = io.read_csv(workdir / "blend" / "summary_models.csv")
    names = [m for m in models["model"] if m != "blend"]
    weights = models.set_index("model").loc[names, "weight"].to_numpy(float)
    truth = _read(workdir / "data" / "test.csv")["grade"]
    preds = {n: model_predictions(workdir, n, folds, tta) for n in names}
    first = preds[names[0]][0]
    oof = pd.DataFrame({n: preds[n][0]["pred"].loc[first.index] for n in names})
    oof["grade"], oof["fold"] = first["grade"], first["fold"]
    fold_list = sorted(oof["fold"].unique())
    views_used = (lambda df: list(range(_n_views(df)))) if tta else (lambda df: [0])
    if adapt_bn:  # the held-out set predicted again, adapted to itself
        held = holdout_predictions(workdir, names, adapt_bn)
        test = pd.DataFrame({n: _mean_views(held, f"{n}:", fold_list, views_used(held)) for n in names})
    else:
        test = pd.DataFrame({n: preds[n][1] for n in names})
    test = test.loc[truth.index.astype(test.index.dtype)]
    oof["blend"], test["blend"] = oof[names].to_numpy() @ weights, test[names].to_numpy() @ weights
    scored = {}
    for guard in guards:
        views = guard_predictions(workdir, names, guard, adapt_bn)
        frame = pd.DataFrame({n: _mean_views(views, f"{n}:", fold_list, views_used(views)) for n in names})
        frame["blend"], frame["grade"] = frame[names].to_numpy() @ weights, views["grade"]
        scored[guard.name] = frame
    minutes, run_min = step_minutes(workdir, folds)
    y, yt = oof["grade"].to_numpy(int), truth.to_numpy(int)
    picked = "" if folds is None else f", fold{'s' if len(folds) > 1 else ''} {','.join(map(str, folds))}"
    variant = (picked + ("" if tta else ", no TTA") + (f", AdaBN {adapt_bn:g}" if adapt_bn else "")
               + (", prior shift" if prior_shift else ""))
    rows = []
    for col in [*names, "blend"] if len(names) > 1 else names:
        p = oof[col].to_numpy(float)
        thr = metrics.optimise_thresholds(p, y)
        fitted, fixed = _score(y, p, thr)
        per_fold = [metrics.qwk(y[f], metrics.apply_thresholds(p[f], metrics.DEFAULT_THRESHOLDS))
                    for f in (oof["fold"] == k for k in fold_list)]
        own = functools.partial(prior_thresholds, y, p, thr) if prior_shift else functools.partial(_same, thr)
        h_fitted, h_fixed = _score(yt, test[col].to_numpy(float), own(test[col].to_numpy(float)))
        row = {"run": workdir.name, "model": col + variant, "oof_qwk_fitted": fitted, "oof_qwk_fixed": fixed,
               "fold_qwk_fixed_mean": np.mean(per_fold), "fold_qwk_fixed_sd": np.std(per_fold),
               "referable_auc": metrics.referable_dr(y, p)["auc"],
               "holdout_qwk_oof_thr": h_fitted, "holdout_qwk_fixed": h_fixed,
               "holdout_referable_auc": metrics.referable_dr(yt, test[col].to_numpy(float))["auc"]}
        for name, frame in scored.items():
            q = frame[col].to_numpy(float)
            row.update(guard_columns(name, frame["grade"].to_numpy(int), q, own(q)))
        row["train_min"] = sum(minutes.get(m, 0.0) for m in names) if col == "blend" else minutes.get(col, 0.0)
        row["run_min"] = run_min
        rows.append(row)
    return pd.DataFrame(rows).set_index(["run", "model"])


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected mixes like 0,0.5,1, got {text!r}") from None


def _guard_list(text: str) -> list[Guard]:
    if text == "none":
        return []
    unknown = [g for g in text.split(",") if g not in GUARDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown guard(s) {unknown}; choose from {sorted(GUARDS)} or 'none'")
    return [GUARDS[g] for g in text.split(",")]


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
    ap.add_argument("--guards", type=_guard_list, default=list(GUARDS.values()), metavar="NAME[,NAME]|none",
                    help=f"the sets left out of training to score on (default: {','.join(GUARDS)})")
    ap.add_argument("--folds", "--fold", type=_fold_list, metavar="K[,K...]",
                    help="score these folds' models (one, or a smaller ensemble) instead of all the chain's")
    ap.add_argument("--no-tta", action="store_true", help="the first TTA view alone (OOF: training's own)")
    ap.add_argument("--adapt-bn", type=_float_list, default=[0.0], metavar="MIX[,MIX...]",
                    help="a row per share of test-set BatchNorm statistics (0 = off; default 0)")
    ap.add_argument("--prior-shift", action="store_true",
                    help="also a row per variant with each test set's thresholds fitted for its estimated grade mix")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/recipes.md)")
    args = ap.parse_args(argv)
    frames = []
    for workdir in map(Path, args.workdirs):
        if not (workdir / "blend" / "summary_models.csv").exists():
            print(f"error: {workdir} has no finished blend; run its chain first (`make aptos`)", file=sys.stderr)
            return 1
        seen = [g.name for g in args.guards if trained_on(workdir, g)]
        if seen:
            print(f"error: {workdir} trained on the guard(s) {seen}; a guard needs runs that never saw it "
                  f"(--guards picks others)", file=sys.stderr)
            return 1
        for mix in args.adapt_bn:
            frames.append(table(workdir, args.guards, args.folds, not args.no_tta, mix))
            if args.prior_shift:
                frames.append(table(workdir, args.guards, args.folds, not args.no_tta, mix, prior_shift=True))
        n_oof = len(io.read_csv(workdir / "data" / "folds.csv"))
        n_test = len(io.read_csv(workdir / "data" / "test.csv"))
        print(f"{workdir}: {n_oof} training rows (OOF on the competition's), {n_test} held-out images")
    df = pd.concat(frames)
    print(markdown(df) if args.markdown else df.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
