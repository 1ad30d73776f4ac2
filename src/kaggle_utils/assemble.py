"""Old path of :mod:`kaggle_utils.data.assemble`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "ROLES", "STAGES", "TABLE_FILE", "DROPPED_FILE", "PROBLEMS_FILE", "TEST_FILE", "STAMP_FILE",
        "DATASET_COLUMN", "GROUP", "RESIZE_ONLY", "SourceSpec", "parse_sources", "competition",
        "load_specs", "drop_cross_duplicates", "build_table", "summary", "build_caches", "stage_table",
    ], "kaggle_utils.data.assemble"),
}
__getattr__, __dir__ = moved("kaggle_utils.assemble", _EXPORTS, globals())
