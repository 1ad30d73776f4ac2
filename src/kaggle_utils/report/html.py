"""The out-of-fold report as one HTML page: :func:`write_report` gathers tables, plots and sections.

Figures are built on :class:`matplotlib.figure.Figure` (Agg canvas when saved), not pyplot, so this never
changes a notebook's backend or leaks open figures. torch is imported only inside the Grad-CAM functions:
the rest runs in a CPU-only environment from CSVs alone.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils import io, metrics
from kaggle_utils.inference import shift
from kaggle_utils.inference.ensemble import DEFAULT_THRESHOLDS, blend, model_columns, true_grades
from kaggle_utils.report.gradcam import plot_gradcam_grid
from kaggle_utils.report.plots import (
    PathLike,
    fold_table,
    model_table,
    plot_confusion,
    plot_fold_qwk,
    plot_model_qwk,
    plot_pred_distribution,
    plot_roc,
    plot_training_curves,
    qwk_at,
)
from kaggle_utils.report.sections import card, html_table, review_section, shakeup_section, shift_section

BLEND = "blend"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em}.sub{color:#666}.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.8em 1.2em;min-width:9em}
.card b{display:block;font-size:1.8em}.card span{color:#666;font-size:.85em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4}"""


def write_report(out_dir: PathLike, oof: pd.DataFrame, *, weights: Mapping[str, float] | None = None,
                 thresholds: Sequence[float] | None = None, curves: Mapping[str, pd.DataFrame] | None = None,
                 gradcam: Sequence[Mapping[str, Any]] | None = None, title: str = "OOF report",
                 notes: str = "", test_pred: Sequence[float] | None = None,
                 prior: shift.PriorEstimate | None = None, threshold_sets: Mapping[str, Sequence[float]] | None = None,
                 threshold_mode: str = "oof", review: pd.DataFrame | None = None,
                 shakeup_sizes: tuple[int, int] = (shift.APTOS_PUBLIC, shift.APTOS_PRIVATE),
                 shakeup_sims: int = 300) -> dict[str, Path]:
    """Write ``report.html`` + PNGs + CSV tables + ``summary.json`` into ``out_dir``; returns name -> path.

    ``oof``: wide table from :func:`ensemble.collect_oof` (id, grade, fold, one column per model; a ``blend``
    column is used as is). With several models and no blend column the blend uses ``weights`` (equal if
    None). ``thresholds``: the blend's cut points (fitted on the blend OOF if None). ``curves``: from
    :func:`load_curves`; ``gradcam``: from :func:`gradcam_examples`. PNGs are separate files next to the
    HTML (referenced relatively), so copy the folder, not just the page.
    Label shift (with ``prior`` and ``test_pred``, the blended test predictions): the estimated test prior and
    each of ``threshold_sets`` (name -> cut points; ``threshold_mode`` names the one in use) with the test's
    predicted-grade histogram. Shake-up (always; ``shakeup_sizes`` = public, private; ``shakeup_sims=0`` skips
    it) and ``review`` (:func:`shift.review_list`), the images to look at first.
    """
    out = Path(out_dir)
    oof = oof.copy()
    models = [c for c in model_columns(oof) if c != BLEND]
    if not models and BLEND not in oof:
        raise ValueError(f"OOF table has no prediction columns: {list(oof.columns)}")
    if BLEND in oof or len(models) == 1:
        cols = [*models, BLEND] if BLEND in oof else models
    else:
        w = np.asarray([(weights or {}).get(m, 1.0 if weights is None else 0.0) for m in models], float)
        if w.sum() <= 0:
            raise ValueError(f"weights {dict(weights or {})} give no weight to any model in {models}")
        weights = dict(zip(models, w / w.sum(), strict=True))
        oof[BLEND] = blend(oof[models], w / w.sum())
        cols = [*models, BLEND]
    head = cols[-1]
    y = true_grades(oof["grade"])
    p = oof[head].to_numpy(float)
    thr = np.asarray(metrics.optimise_thresholds(p, y) if thresholds is None else thresholds, float)

    per_thr = {c: np.asarray(metrics.optimise_thresholds(oof[c].to_numpy(float), y), float) for c in cols[:-1]}
    per_thr[head] = thr
    mtab = model_table(oof, cols, per_thr, weights)
    ftab = fold_table(oof, cols, per_thr)
    hard = np.asarray(metrics.apply_thresholds(p, thr), int)
    ref = metrics.referable_dr(y, p, float(thr[1]))  # the blend's own 1|2 cut: agrees with the grades
    blend_qwk = float(metrics.qwk(y, hard))

    paths: dict[str, Path] = {}
    paths["confusion"] = plot_confusion(y, hard, out / "confusion.png", title=head)
    paths["roc"] = plot_roc(y, p, out / "roc_referable.png", threshold=float(thr[1]))
    paths["model_qwk"] = plot_model_qwk(mtab, out / "model_qwk.png")
    if len(ftab):
        paths["fold_qwk"] = plot_fold_qwk(ftab, out / "fold_qwk.png")
    paths["pred_distribution"] = plot_pred_distribution(y, p, out / "pred_distribution.png", thr)
    if curves:
        paths["curves"] = plot_training_curves(curves, out / "training_curves.png")
    if gradcam:
        paths["gradcam"] = plot_gradcam_grid(gradcam, out / "gradcam.png")
    paths["models_csv"] = io.write_csv(out / "summary_models.csv", mtab)
    paths["folds_csv"] = io.write_csv(out / "summary_folds.csv", ftab)
    summary = {"title": title, "prediction": head, "n": int(len(oof)), "qwk": blend_qwk,
               "qwk_default_thresholds": qwk_at(y, p, DEFAULT_THRESHOLDS), "thresholds": thr.tolist(),
               "referable": {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in ref.items()},
               "weights": {k: float(v) for k, v in (weights or {}).items()}}
    sets = {"oof": thr, "0.5..3.5": np.asarray(DEFAULT_THRESHOLDS, float)}
    sets.update({k: np.asarray(v, float) for k, v in (threshold_sets or {}).items()})
    extra: list[str] = []
    if prior is not None and test_pred is not None:
        html_part, files = shift_section(prior, np.asarray(test_pred, float), sets, threshold_mode, out)
        extra += html_part
        paths.update(files)
        summary["prior"] = prior.to_dict()
    summary["threshold_sets"] = {k: v.tolist() for k, v in sets.items()}
    summary["threshold_mode"] = threshold_mode
    summary["thresholds_submission"] = sets.get(threshold_mode, thr).tolist()  # what the test grades used
    if shakeup_sims:
        html_part, files, summary["shakeup"] = shakeup_section(oof, cols, per_thr, head, sets, out, shakeup_sizes,
                                                               shakeup_sims, prior)
        extra += html_part
        paths.update(files)
    if review is not None:
        html_part, files = review_section(review, out)
        extra += html_part
        paths.update(files)
    paths["summary"] = io.write_json(out / "summary.json", summary)

    ref_tab = pd.DataFrame([{"sensitivity": ref["sensitivity"], "specificity": ref["specificity"],
                             "AUC": ref["auc"], "threshold": ref["threshold"],
                             "referable / all": f"{ref['n_pos']} / {ref['n_pos'] + ref['n_neg']}"}])
    img = {k: v.name for k, v in paths.items() if v.suffix == ".png"}

    def figure(key: str, caption: str) -> str:
        return (f'<h2>{html.escape(caption)}</h2><img src="{img[key]}" alt="{html.escape(caption)}">'
                if key in img else "")

    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{len(oof)} out-of-fold images; grades from <b>{html.escape(head)}</b> with cut points '
        f"{' / '.join(f'{t:.3f}' for t in thr)}. {html.escape(notes)}</p>",
        '<div class="cards">', card(blend_qwk, f"OOF QWK ({head}, fitted cut points)"),
        card(summary["qwk_default_thresholds"], "OOF QWK (cut points 0.5..3.5)"),
        card(ref["sensitivity"], "referable DR sensitivity"), card(ref["specificity"], "referable DR specificity"),
        card(ref["auc"], "referable DR AUC"), "</div>",
        '<p class="sub">Cut points (and blend weights, if fitted) come from these same OOF predictions, so the '
        "fitted-cut-point numbers are slightly optimistic; the 0.5..3.5 QWK is the unbiased one. Per-fold QWK "
        "uses each column's global cut points; the spread across folds is the honest error bar.</p>",
        "<h2>Referable DR (grade &ge; 2)</h2>", html_table(ref_tab),
        "<h2>Per model</h2>", html_table(mtab), figure("model_qwk", "OOF QWK per model"),
        "<h2>Per fold</h2>", html_table(ftab) if len(ftab) else "<p>No fold column.</p>",
        figure("fold_qwk", "QWK per fold"),
        figure("confusion", "Confusion matrix"), figure("roc", "ROC, referable DR"),
        figure("pred_distribution", "Predictions by true grade"), figure("curves", "Training curves"),
        figure("gradcam", "Grad-CAM examples per grade"), *extra,
    ]
    files = sorted([*(v.name for v in paths.values()), "report.html"])
    body.append("<h2>Files</h2><ul>" + "".join(f'<li><a href="{f}">{f}</a></li>' for f in files) + "</ul>")
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
    paths["html"] = io.write_text(out / "report.html", page)
    return paths
