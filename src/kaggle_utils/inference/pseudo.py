"""Pseudo-labels: soft labels from stage-1 predictions, confident test images as labelled rows, next rounds.

Works on DataFrames and arrays (no torch), like :mod:`kaggle_utils.inference.ensemble` whose blends it reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils import io, metrics
from kaggle_utils.inference.ensemble import DEFAULT_THRESHOLDS, EnsembleError, PathLike, preds_by_id


def soft_labels(given_grades: Sequence[float] | np.ndarray, stage1_preds: Sequence[float] | np.ndarray,
                alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * given + alpha * pred``, clipped to [0, 4]; alpha=0.5 is the 1st place's average.

    Softening noisy labels with a stage-1 model's opinion is what made their 2nd stage generalise; the
    result is a float target, so it only suits regression heads (float grades through encode_targets).
    """
    g, p = np.asarray(given_grades, float), np.asarray(stage1_preds, float)
    if g.shape != p.shape:
        raise EnsembleError(f"{g.shape} grades but {p.shape} predictions")
    if not (np.isfinite(g).all() and np.isfinite(p).all()):
        raise EnsembleError("soft_labels got NaN grades or predictions; drop unlabelled rows first")
    if not 0.0 <= alpha <= 1.0:
        raise EnsembleError(f"alpha must be in [0, 1], got {alpha}")
    return np.clip((1.0 - alpha) * g + alpha * p, 0.0, 4.0)


def pseudo_label_test(test: pd.DataFrame | Sequence[str], test_preds: object,
                      thresholds: Sequence[float] | np.ndarray | None = None, *, soft: bool = True,
                      min_distance: float = 0.0, round_no: int = 1) -> pd.DataFrame:
    """Test rows labelled by the current ensemble: ``id, path, grade, source='pseudo', round, fold=-1``.

    ``soft``: grade is the continuous prediction clipped to [0, 4] (regression targets); otherwise the
    thresholded int grade. ``min_distance`` keeps only rows whose prediction is at least that far from the
    nearest threshold (confident ones). ``fold=-1`` means "train in every fold, validate in none", so
    pseudo rows never leak into OOF scores.
    """
    table = test.copy() if isinstance(test, pd.DataFrame) else pd.DataFrame({"id": list(test)})
    if "id" not in table:
        raise EnsembleError(f"test table needs an id column; has {list(table.columns)}")
    ids = table["id"].astype(str).tolist()
    values = preds_by_id(ids, test_preds)
    if not np.isfinite(values).all():
        bad = [ids[i] for i in np.flatnonzero(~np.isfinite(values))]
        raise EnsembleError(f"{len(bad)} test ids have no prediction to pseudo-label: {bad[:10]}")
    thr = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, float)
    keep = np.abs(values[:, None] - thr[None, :]).min(axis=1) >= min_distance
    grade = (np.clip(values, 0.0, 4.0) if soft
             else np.asarray(metrics.apply_thresholds(values, thr), int))
    path = table["path"].astype(str).to_numpy() if "path" in table else np.full(len(ids), "", dtype=object)
    out = pd.DataFrame({"id": ids, "path": path, "grade": grade, "source": "pseudo",
                        "round": int(round_no), "fold": -1})
    return out[keep].reset_index(drop=True)


def next_round_table(train_table: pd.DataFrame, test_table: pd.DataFrame, test_preds: object, round_no: int,
                     *, thresholds: Sequence[float] | np.ndarray | None = None, soft: bool = True,
                     min_distance: float = 0.0, train_preds: object = None, alpha: float = 0.5) -> pd.DataFrame:
    """Training table for pseudo-label round ``round_no``: labelled rows + this round's pseudo rows.

    Pseudo rows from earlier rounds are dropped (each round relabels the whole test set with the newer
    model), so calling it again with the same inputs gives the same table. ``train_preds`` (stage-1 OOF
    keyed by id) turns the given grades into :func:`soft_labels`; ``grade_given`` keeps the original label
    (score validation folds on it, not on the soft target; <NA> on pseudo rows). Labelled rows keep their
    order and get ``round=0``; their ``fold`` must already be set (pseudo rows get -1).
    """
    for col in ("id", "grade", "fold"):
        if col not in train_table:
            raise EnsembleError(f"train table needs column {col!r} (make folds first); has {list(train_table.columns)}")
    base = train_table.copy()
    if "source" in base:
        base = base[base["source"] != "pseudo"]
    base = base.reset_index(drop=True)
    base["id"] = base["id"].astype(str)
    overlap = sorted(set(base["id"]) & set(test_table["id"].astype(str)))
    if overlap:
        raise EnsembleError(f"{len(overlap)} test ids are also training ids: {overlap[:10]}")
    # a table from an earlier round already carries the original labels; soften those, never a soft target
    given = base["grade_given"] if "grade_given" in base else base["grade"]
    base["grade_given"] = pd.to_numeric(given, errors="coerce").astype("Float64")
    if train_preds is not None:
        base["grade"] = soft_labels(base["grade_given"].to_numpy(float),
                                    preds_by_id(base["id"].tolist(), train_preds), alpha)
    else:
        base["grade"] = base["grade_given"].astype(float) if soft else given
    base["round"] = 0
    pseudo = pseudo_label_test(test_table, test_preds, thresholds, soft=soft, min_distance=min_distance,
                               round_no=round_no)
    extra = [c for c in test_table.columns if c not in pseudo.columns and c in base.columns]
    if extra:
        pseudo = pseudo.merge(test_table.assign(id=test_table["id"].astype(str))[["id", *extra]],
                              on="id", how="left")
    out = pd.concat([base, pseudo], ignore_index=True)
    out["fold"] = out["fold"].astype(int)
    return out


def build_pseudo_round(test_csv: PathLike, blend_dir: PathLike, cache_dir: PathLike, out_csv: PathLike,
                       round_no: int, test_images: PathLike | None = None, test_ext: str = ".png",
                       soft: bool = True, min_distance: float = 0.0, workers: int | None = None) -> pd.DataFrame:
    """Write ``out_csv``: the test images, preprocessed with ``cache_dir``'s recipe, labelled by the previous
    round's blend (``blend_dir/test_blend.csv`` and the blend's thresholds). Rows carry ``fold=-1``, so the
    train notebook (``extra_csv``) adds them to every fold's training data and never validates on them."""
    from kaggle_utils.data import cache, sources
    from kaggle_utils.data.preprocess import PreprocessConfig

    blend_dir, out_csv = Path(blend_dir), Path(out_csv)
    test = sources.test_table(test_csv, test_images, ext=test_ext)
    leak = sorted(set(test["id"]) & set(cache.load_cache(cache_dir, check_files=False)["id"]))
    if leak:
        raise EnsembleError(f"{len(leak)} test ids are training ids too, e.g. {leak[:5]}: pseudo-labels would "
                            "duplicate them; hold the test set out of the training labels")
    cfg = PreprocessConfig.from_dict(io.read_json(Path(cache_dir) / cache.CONFIG))
    pcache = out_csv.with_suffix("")
    cache.build_cache(test.assign(grade=pd.NA, source="pseudo"), pcache, cfg, workers=workers or os.cpu_count() or 1)
    cached = cache.load_cache(pcache)
    preds = io.read_csv(blend_dir / "test_blend.csv").set_index("id")["blend"]
    cached = cached[cached["id"].isin(preds.index[np.isfinite(preds.to_numpy(float))])]
    summary = io.read_json(blend_dir / "summary.json")
    thresholds = summary.get("thresholds_submission", summary["thresholds"])  # prior_shift ones when chosen
    rows = pseudo_label_test(cached[["id", "path"]], preds, thresholds, soft=soft, min_distance=min_distance,
                             round_no=round_no)
    rows["cache_path"] = rows["id"].map(cached.set_index("id")["cache_path"])
    io.write_csv(out_csv, rows)
    return rows
