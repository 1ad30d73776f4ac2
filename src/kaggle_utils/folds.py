"""Old path of :mod:`kaggle_utils.data.folds`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "log", "HASH_SIZE", "DEFAULT_MAX_DISTANCE", "DECODE_MIN_SIDE", "HASH_COLUMN", "GROUP_COLUMN",
        "Method", "ImageLike", "HashError", "FoldWarning", "load_gray", "to_gray", "crop_dark_border",
        "phash", "dhash", "HASHERS", "image_hash", "hash_images", "hash_to_hex", "hex_to_hash",
        "duplicate_pairs", "groups_from_pairs", "find_duplicate_groups", "add_duplicate_groups",
        "conflicting_groups", "make_folds", "fold_distribution", "write_folds", "read_folds",
        "holdout_split",
    ], "kaggle_utils.data.folds"),
}
__getattr__, __dir__ = moved("kaggle_utils.folds", _EXPORTS, globals())
