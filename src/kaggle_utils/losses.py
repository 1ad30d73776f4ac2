"""Old path of :mod:`kaggle_utils.training.losses`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "LOSS_HEADS", "DEFAULT_LOSS", "RegressionLoss", "ClippedMSELoss", "OrdinalBCELoss",
        "default_loss_for", "check_loss_head", "get_loss",
    ], "kaggle_utils.training.losses"),
}
__getattr__, __dir__ = moved("kaggle_utils.losses", _EXPORTS, globals())
