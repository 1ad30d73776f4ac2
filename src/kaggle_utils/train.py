"""Old path of :mod:`kaggle_utils.training.__main__`, :mod:`kaggle_utils.training.artifacts`,
:mod:`kaggle_utils.training.checkpoint`, :mod:`kaggle_utils.training.config`,
:mod:`kaggle_utils.training.distributed`, :mod:`kaggle_utils.training.loop`,
:mod:`kaggle_utils.training.schedule`, :mod:`kaggle_utils.training.table`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "CHECKPOINT_FORMAT", "seed_everything", "rng_state", "set_rng_state", "save_checkpoint",
        "load_checkpoint", "load_model", "init_weights_from",
    ], "kaggle_utils.training.checkpoint"),
    **dict.fromkeys([
        "DEFAULT_THRESHOLDS", "ConfigMismatchError", "TrainConfig", "PATH_FIELDS",
    ], "kaggle_utils.training.config"),
    **dict.fromkeys([
        "ARTIFACTS", "write_curves",
    ], "kaggle_utils.training.artifacts"),
    **dict.fromkeys([
        "DistInfo", "init_distributed",
    ], "kaggle_utils.training.distributed"),
    **dict.fromkeys([
        "LRSchedule", "WeightAverager",
    ], "kaggle_utils.training.schedule"),
    **dict.fromkeys([
        "load_table", "split_fold",
    ], "kaggle_utils.training.table"),
    **dict.fromkeys([
        "build_model", "Trainer", "train_fold",
    ], "kaggle_utils.training.loop"),
    **dict.fromkeys([
        "main",
    ], "kaggle_utils.training.__main__"),
}
__getattr__, __dir__ = moved("kaggle_utils.train", _EXPORTS, globals())

if __name__ == "__main__":
    import sys

    from kaggle_utils.training.__main__ import main

    sys.exit(main())
