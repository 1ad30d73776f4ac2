"""Old path of :mod:`kaggle_utils.inference.ensemble`, :mod:`kaggle_utils.inference.pseudo`: an alias kept for
one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "DEFAULT_THRESHOLDS", "THRESHOLD_MODES", "OOF_FILE", "TEST_FILE", "PathLike", "RunSource",
        "EnsembleError", "collect_oof", "collect_test", "true_grades", "model_columns", "blend",
        "blend_score", "fit_blend_weights", "fit_thresholds", "make_submission", "fallback_grade",
        "write_submission", "BlendResult", "blend_runs",
    ], "kaggle_utils.inference.ensemble"),
    **dict.fromkeys([
        "soft_labels", "pseudo_label_test", "next_round_table", "build_pseudo_round",
    ], "kaggle_utils.inference.pseudo"),
}
__getattr__, __dir__ = moved("kaggle_utils.ensemble", _EXPORTS, globals())
