"""Old path of :mod:`kaggle_utils.inference.shift`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "N_CLASSES", "METHODS", "grade_prior", "confusion_rates", "bbse_prior", "GradeLikelihood",
        "em_prior", "PriorEstimate", "estimate_prior", "importance_weights", "prior_shift_thresholds",
        "resample_to_prior", "shakeup", "shakeup_summary", "flip_rates", "bootstrap_qwk",
        "fold_thresholds", "view_matrix", "uncertainty", "review_list", "blend_uncertainty",
        "run_uncertainty",
    ], "kaggle_utils.inference.shift"),
}
__getattr__, __dir__ = moved("kaggle_utils.shift", _EXPORTS, globals())
