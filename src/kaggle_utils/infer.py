"""Old path of :mod:`kaggle_utils.data.sources`, :mod:`kaggle_utils.inference.predict`: an alias kept for one
release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "TTA_MODES", "PRED_FILE", "FAILED_FILE", "VIEWS_FILE", "FLAGGED_FILE", "TINY_PX", "DARK_P99",
        "InferenceError", "Run", "fold_checkpoints", "checkpoint_preprocess", "load_run", "tta_views",
        "tta_batches", "quality_flag", "default_workers", "iter_batches", "predict_batch",
        "predict_runs", "write_predictions", "infer", "predict_oof",
    ], "kaggle_utils.inference.predict"),
    **dict.fromkeys([
        "test_table",
    ], "kaggle_utils.data.sources"),
}
__getattr__, __dir__ = moved("kaggle_utils.infer", _EXPORTS, globals())
