"""Old path of :mod:`kaggle_utils.data.cache`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "MANIFEST", "CONFIG", "IMAGES", "FIRST_COLUMNS", "CacheError", "CacheConfigError",
        "summary_line", "build_cache", "load_cache",
    ], "kaggle_utils.data.cache"),
}
__getattr__, __dir__ = moved("kaggle_utils.cache", _EXPORTS, globals())
