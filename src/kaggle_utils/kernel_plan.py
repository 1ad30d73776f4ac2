"""Old path of :mod:`kaggle_utils.kernel.plan`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "GpuProfile", "GPU_PROFILES", "ACHIEVED", "KAGGLE_VCPUS", "CPU_SCALING", "OVERHEADS",
        "RunMeasure", "measure_run", "measure_preprocess", "plan_images", "estimate", "format_plan",
        "plan",
    ], "kaggle_utils.kernel.plan"),
}
__getattr__, __dir__ = moved("kaggle_utils.kernel_plan", _EXPORTS, globals())
