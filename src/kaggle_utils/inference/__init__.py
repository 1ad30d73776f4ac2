"""Inference stage: checkpoints -> test predictions (+ TTA) -> blend, thresholds, submission.

``predict`` runs fold checkpoints over a test table; ``ensemble`` fits blend weights and QWK thresholds and
writes submission.csv; ``shift`` estimates the test grade prior and simulates leaderboard shake-up; ``pseudo``
builds pseudo-label rounds; ``files`` names what a predictions folder holds. Only ``predict`` imports torch.
"""

from kaggle_utils._exports import lazy_exports

# name -> defining module, imported on first use (so importing the package stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "EnsembleError", "collect_oof", "collect_test", "true_grades", "model_columns", "blend",
        "blend_score", "fit_blend_weights", "fit_thresholds", "make_submission", "fallback_grade",
        "write_submission", "BlendResult", "blend_runs",
    ], "kaggle_utils.inference.ensemble"),
    **dict.fromkeys([
        "InferenceError", "Run", "fold_checkpoints", "checkpoint_preprocess", "load_run", "tta_views",
        "tta_batches", "quality_flag", "default_workers", "iter_batches", "predict_batch",
        "predict_runs", "write_predictions", "infer", "predict_oof",
    ], "kaggle_utils.inference.predict"),
    **dict.fromkeys([
        "soft_labels", "pseudo_label_test", "next_round_table", "build_pseudo_round",
    ], "kaggle_utils.inference.pseudo"),
    **dict.fromkeys([
        "grade_prior", "confusion_rates", "bbse_prior", "GradeLikelihood", "em_prior", "PriorEstimate",
        "estimate_prior", "importance_weights", "prior_shift_thresholds", "resample_to_prior",
        "shakeup", "shakeup_summary", "flip_rates", "bootstrap_qwk", "fold_thresholds", "view_matrix",
        "uncertainty", "review_list", "blend_uncertainty", "run_uncertainty",
    ], "kaggle_utils.inference.shift"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
