"""The out-of-fold report: tables, plots, Grad-CAM and the label-shift sections, written as one HTML page.

``plots`` (tables and figures), ``gradcam``, ``sections`` (shake-up, prior shift, review list) and ``html``
(:func:`write_report`).
"""

from kaggle_utils._exports import lazy_exports

# name -> defining module, imported on first use (so importing the package stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "plot_gradcam_grid", "find_target_layer", "grad_cam", "overlay", "to_tensor",
        "gradcam_examples", "select_examples", "gradcam_for_runs", "IMAGENET_MEAN", "IMAGENET_STD",
    ], "kaggle_utils.report.gradcam"),
    **dict.fromkeys([
        "write_report", "BLEND",
    ], "kaggle_utils.report.html"),
    **dict.fromkeys([
        "model_table", "fold_table", "load_curves", "plot_confusion", "plot_roc", "plot_model_qwk",
        "plot_fold_qwk", "plot_training_curves", "plot_pred_distribution", "plot_prior", "plot_shakeup",
        "plot_fold_thresholds", "PathLike",
    ], "kaggle_utils.report.plots"),
    **dict.fromkeys([
        "shakeup_section", "shift_section", "review_section",
    ], "kaggle_utils.report.sections"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
