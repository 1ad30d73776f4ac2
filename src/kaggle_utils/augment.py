"""Old path of :mod:`kaggle_utils.data.augment`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "PRESETS", "reseed", "get_augmentation",
    ], "kaggle_utils.data.augment"),
}
__getattr__, __dir__ = moved("kaggle_utils.augment", _EXPORTS, globals())
