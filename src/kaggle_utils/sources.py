"""Old path of :mod:`kaggle_utils.data.labels`, :mod:`kaggle_utils.data.sources`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "CORE_COLUMNS", "REPORT_COLUMNS", "IMAGE_EXTS", "MAX_LISTED", "OnError", "LoadResult",
        "SourceError", "SourceWarning", "validate",
    ], "kaggle_utils.data.labels"),
    **dict.fromkeys([
        "load_aptos", "load_eyepacs", "load_idrid", "load_messidor", "load_generic", "LOADERS",
        "load_source", "combine", "test_table",
    ], "kaggle_utils.data.sources"),
}
__getattr__, __dir__ = moved("kaggle_utils.sources", _EXPORTS, globals())
