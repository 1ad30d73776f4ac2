"""Old path of :mod:`kaggle_utils.run.estimate`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "CPU_GFLOPS", "CPU_LOADER_S_224", "KAGGLE_LOADER_WORKERS", "Cost", "forward_gflop", "describe",
        "format_plan",
    ], "kaggle_utils.run.estimate"),
}
__getattr__, __dir__ = moved("kaggle_utils.run_plan", _EXPORTS, globals())
