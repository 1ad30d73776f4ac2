# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Blend: OOF-fitted weights and thresholds -> submission.csv, and the report
# Blend weights (non-negative, summing to 1) and QWK thresholds are fitted on the out-of-fold predictions,
# then applied to the test predictions. The report shows OOF QWK per model, per fold and for the blend, the
# confusion matrix, referable-DR sensitivity/specificity/ROC, training curves and Grad-CAM maps.
# Label shift: the test set's grade distribution is estimated from the test predictions alone (`prior_method`:
# `em` or `bbse`), and `thresholds: prior_shift` refits the cut points on OOF reweighted to it (`oof`: as fitted).
# The report also simulates public/private leaderboards (`shakeup_public`/`shakeup_private`, APTOS 2019's sizes)
# and ranks the test images a clinician should look at first (`review.csv`).

# %% tags=["parameters"]
run_dirs = ["outputs/runs/lite0"]
preds_dir = "outputs/preds"
test_csv = "outputs/cache/test.csv"
test_id_col = "id"
out_dir = "outputs/blend"
submission_path = None
method = "qwk"
gradcam_per_grade = 2
cache_dir = "outputs/cache"
thresholds = "oof"  # oof | prior_shift
prior_method = "em"  # em | bbse
prior_boot = 200
shakeup_public = 1928
shakeup_private = 11000
shakeup_sims = 300

# %%
from pathlib import Path

from IPython.display import IFrame, display

from kaggle_utils import io, report
from kaggle_utils.inference import ensemble, shift

submission = Path(submission_path or f"{out_dir}/submission.csv")
submission.unlink(missing_ok=True)  # a blend that fails below must not leave an older submission looking current
names = [Path(d).name for d in run_dirs]
test_ids = io.read_csv(test_csv, text=None)[test_id_col]  # ids as written: NA, null, 0012
# OOF predicted with the test-time TTA (infer's oof_tta) when present, else training's validation pass
oof_sources = {n: (f"{preds_dir}/{n}/oof.csv" if Path(f"{preds_dir}/{n}/oof.csv").is_file() else d)
               for n, d in zip(names, run_dirs, strict=True)}
print("OOF from", oof_sources)
result = ensemble.blend_runs(oof_sources, {n: f"{preds_dir}/{n}" for n in names}, test_ids, method=method,
                             thresholds=thresholds, prior_method=prior_method, n_boot=prior_boot)
io.write_csv(f"{out_dir}/test_blend.csv", result.test)  # the next pseudo-label round reads it
path = ensemble.write_submission(result.submission, submission)  # atomic: whole or absent
print(f"OOF QWK (blend, fitted thresholds): {result.oof_qwk:.4f}")
print(f"weights {result.weights}; thresholds ({result.threshold_mode}) {[round(float(t), 3) for t in result.thresholds]}")
if result.prior is not None:
    print(f"OOF thresholds {[round(float(t), 3) for t in result.thresholds_oof]}; prior_shift thresholds "
          f"{[round(float(t), 3) for t in result.thresholds_prior_shift]}")
    print(result.prior.table().round(3).to_string(index=False))
print(f"{path}: {len(result.submission)} rows; grades {result.submission['diagnosis'].value_counts().sort_index().to_dict()}")

# %%
examples = report.gradcam_for_runs(run_dirs, result.oof, cache_dir, n_per_grade=gradcam_per_grade) \
    if gradcam_per_grade else None
readable = result.test["blend"].notna().to_numpy()
review = None
if len(result.test):
    unc = shift.blend_uncertainty({n: shift.run_uncertainty(f"{preds_dir}/{n}") for n in names}, result.weights)
    review = shift.review_list(unc, result.thresholds)
shift_sets = {"prior_shift": result.thresholds_prior_shift} if result.thresholds_prior_shift is not None else {}
files = report.write_report(out_dir, result.oof, weights=result.weights, thresholds=result.thresholds_oof,
                            curves=report.load_curves(run_dirs), gradcam=examples,
                            title="Diabetic retinopathy grading: out-of-fold report",
                            test_pred=result.test.loc[readable, "blend"].to_numpy(), prior=result.prior,
                            threshold_sets=shift_sets, threshold_mode=result.threshold_mode, review=review,
                            shakeup_sizes=(shakeup_public, shakeup_private), shakeup_sims=shakeup_sims)
print("\n".join(f"{k}: {v}" for k, v in files.items()))
display(IFrame(str(files["html"]), width="100%", height=600)) if "html" in files else None
