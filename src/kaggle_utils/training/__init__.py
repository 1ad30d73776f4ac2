"""Training stage: one fold per call, resumable, single-process or DDP.

``config`` (:class:`TrainConfig`), ``table`` (which rows a fold trains and validates on), ``loop`` (the
:class:`Trainer` and :func:`train_fold`), ``artifacts`` (out_dir files, resume), ``checkpoint`` (file format,
RNG state, :func:`load_model`), ``schedule`` (LR, weight averaging), ``distributed``, ``losses``.
``python -m kaggle_utils.training --config fold0.yaml`` trains one fold.
"""

from kaggle_utils._exports import lazy_exports

# name -> defining module, imported on first use (so importing the package stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "write_curves", "FoldArtifacts",
    ], "kaggle_utils.training.artifacts"),
    **dict.fromkeys([
        "seed_everything", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint",
        "load_model", "init_weights_from",
    ], "kaggle_utils.training.checkpoint"),
    **dict.fromkeys([
        "ConfigMismatchError", "TrainConfig",
    ], "kaggle_utils.training.config"),
    **dict.fromkeys([
        "DistInfo", "init_distributed",
    ], "kaggle_utils.training.distributed"),
    **dict.fromkeys([
        "build_model", "Trainer", "train_fold",
    ], "kaggle_utils.training.loop"),
    **dict.fromkeys([
        "RegressionLoss", "ClippedMSELoss", "OrdinalBCELoss", "default_loss_for", "check_loss_head",
        "get_loss",
    ], "kaggle_utils.training.losses"),
    **dict.fromkeys([
        "LRSchedule", "WeightAverager",
    ], "kaggle_utils.training.schedule"),
    **dict.fromkeys([
        "load_table", "split_fold",
    ], "kaggle_utils.training.table"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
