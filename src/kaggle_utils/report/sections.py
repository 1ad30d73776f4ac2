"""The label-shift parts of the report: shake-up simulation, estimated test prior, review list (HTML + files)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils import io, metrics
from kaggle_utils.inference import shift
from kaggle_utils.inference.ensemble import true_grades
from kaggle_utils.report.plots import plot_fold_thresholds, plot_prior, plot_shakeup


def _shakeup_choices(oof: pd.DataFrame, cols: Sequence[str], per_thr: Mapping[str, np.ndarray], head: str,
                     thr_sets: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hard OOF grades per competing choice: each blend member at its cut points, the blend at each set."""
    p = oof[head].to_numpy(float)
    out = {c: metrics.apply_thresholds(oof[c].to_numpy(float), per_thr[c]) for c in cols if c != head}
    out.update({f"{head} @{name}": metrics.apply_thresholds(p, t) for name, t in thr_sets.items()})
    return out


def shakeup_section(oof: pd.DataFrame, cols: Sequence[str], per_thr: Mapping[str, np.ndarray], head: str,
                    thr_sets: Mapping[str, np.ndarray], out: Path, sizes: tuple[int, int],
                    n_sims: int, prior: shift.PriorEstimate | None) -> tuple[list[str], dict[str, Path], dict]:
    """HTML, files and summary numbers of the shake-up simulator (see :func:`kaggle_utils.inference.shift.shakeup`)."""
    y = true_grades(oof["grade"])
    grades = _shakeup_choices(oof, cols, per_thr, head, thr_sets)
    sims = shift.shakeup(y, grades, *sizes, n_sims=n_sims, seed=0)
    tabs = {"as OOF": (sims, shift.shakeup_summary(sims), shift.flip_rates(sims))}
    if prior is not None:
        w = shift.importance_weights(y, prior.prior)
        sw = shift.shakeup(y, grades, *sizes, n_sims=n_sims, seed=1, weights=w)
        tabs["at the estimated test prior"] = (sw, shift.shakeup_summary(sw), shift.flip_rates(sw))
    first = f"{head} @oof"
    ci = shift.bootstrap_qwk(y, grades[first], seed=0)
    paths = {"shakeup": plot_shakeup(sims, out / "shakeup.png"),
             "shakeup_csv": io.write_csv(out / "shakeup_sims.csv", sims)}
    body = ["<h2>Shake-up: public vs private leaderboard</h2>",
            f'<p class="sub">{n_sims} simulated leaderboards of {sizes[0]:,} public / {sizes[1]:,} private images '
            f"drawn from the {len(y)} OOF predictions ({'with replacement: OOF is smaller' if sims.attrs['with_replacement'] else 'disjoint random splits'}); "
            "thresholds held fixed. Every choice sees the same draws, so flip rates are paired.</p>",
            '<div class="cards">', card(ci["qwk"], "CV QWK"),
            card(ci["low"], "95 % bootstrap CI, low"), card(ci["high"], "95 % bootstrap CI, high"), "</div>"]
    for name, (_, summ, flips) in tabs.items():
        body += [f"<h3>Sampled {html.escape(name)}</h3>", html_table(summ),
                 "<p>Chance that the choice better on public is worse on private:</p>",
                 html_table(flips) if len(flips) else "<p>(one choice only)</p>"]
    body.append('<img src="shakeup.png" alt="shake-up">')
    summary = {"cv_qwk_ci": ci, "sizes": list(sizes), "n_sims": n_sims,
               "flip_rates": {k: v[2].to_dict(orient="records") for k, v in tabs.items()},
               "spread": {k: v[1].to_dict(orient="records") for k, v in tabs.items()}}
    if "fold" in oof:
        ft = shift.fold_thresholds(oof[head].to_numpy(float), y, oof["fold"].to_numpy())
        paths["fold_thresholds"] = plot_fold_thresholds(ft, thr_sets["oof"], out / "fold_thresholds.png")
        paths["fold_thresholds_csv"] = io.write_csv(out / "fold_thresholds.csv", ft)
        body += ["<h3>Thresholds fitted per fold</h3>", html_table(ft), '<img src="fold_thresholds.png" alt="fold thresholds">']
        summary["fold_thresholds"] = ft.to_dict(orient="records")
    return body, paths, summary


def shift_section(prior: shift.PriorEstimate, test_pred: np.ndarray, thr_sets: Mapping[str, np.ndarray],
                  mode: str, out: Path) -> tuple[list[str], dict[str, Path]]:
    """HTML and files of the label-shift section: prior table, both threshold sets, test histograms."""
    q = np.asarray(test_pred, float)
    q = q[np.isfinite(q)]
    hists = {name: np.bincount(metrics.apply_thresholds(q, t), minlength=5) for name, t in thr_sets.items()}
    rows = [{"thresholds": name, "in use": "yes" if name == mode else "",
             **{f"t{i + 1}": float(v) for i, v in enumerate(t)},
             **{f"n grade {g}": int(h[g]) for g in range(5)}} for (name, t), h in zip(thr_sets.items(),
                                                                                     hists.values(), strict=True)]
    paths = {"prior": plot_prior(prior, hists, out / "prior_shift.png"),
             "prior_csv": io.write_csv(out / "prior_estimate.csv", prior.table())}
    body = ["<h2>Label shift: estimated test grade distribution</h2>",
            f'<p class="sub">Estimated from the {prior.n_test} test predictions alone ({html.escape(prior.method)}; '
            f"95 % interval from {prior.n_boot} bootstrap resamples of OOF and test rows). The "
            "<code>prior_shift</code> cut points are refitted on OOF rows reweighted to this prior.</p>",
            html_table(prior.table()), html_table(pd.DataFrame(rows)), '<img src="prior_shift.png" alt="prior shift">']
    return body, paths


def review_section(review: pd.DataFrame, out: Path, top: int = 20) -> tuple[list[str], dict[str, Path]]:
    """The ranked list of test images a clinician should look at first (full list in review.csv)."""
    path = io.write_csv(out / "review.csv", review)
    head = review.head(top)
    body = ["<h2>Images to review first</h2>",
            f'<p class="sub">Ranked by <code>p_flip</code>, the chance that another fold or TTA view would put the '
            "image on the other side of the referable-DR cut (grade 1|2): high near the cut or where ensemble "
            f"members disagree. Top {len(head)} of {len(review)}; all in <a href=\"review.csv\">review.csv</a>.</p>",
            html_table(head)]
    return body, {"review_csv": path}


def card(value: float, label: str) -> str:
    return f'<div class="card"><b>{value:.3f}</b><span>{html.escape(label)}</span></div>'


def html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", border=0)
