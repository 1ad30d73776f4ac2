"""The offline Kaggle bundles: the submission bundle (wheels + checkpoints, inference kernel) and the training
bundle (wheels + config + notebooks + weights, training kernel), verified and planned.

``layout`` (names, paths, errors), ``image`` (what the Kaggle image already has), ``wheels``, ``pretrained``
(ImageNet files), ``bundle`` (:func:`build`), ``verify`` (fresh venv, no network, temp workspace), ``testset``
(what ``--verify`` runs the kernel on: ``--data`` the competition's test set, else a sample), ``plan`` (run
time against the 9 h limit), ``handover`` (a chain's runs, a training kernel's output as input);
``notebook`` (the kernels' notebooks, their one offline-install cell), ``accelerators`` (what a kernel asks
Kaggle for); ``training`` (config reading, the smoke override, epoch times), ``train_bundle``
(:func:`build_training`), ``train_verify`` (its smoke run offline). ``python build_kernel.py`` or ``python -m kaggle_utils.kernel``.
"""

from kaggle_utils._exports import lazy_exports

# name -> defining module, imported on first use (so importing the package stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "RunInfo", "inspect_run", "model_package", "BundleSpec", "dataset_metadata", "kernel_metadata",
        "write_kernel_metadata", "check_accelerator", "validate_dataset_metadata", "validate_kernel_metadata",
        "sha256", "file_table", "resolve_bundle", "resolve_wheels", "write_wheels", "seal", "build",
        "format_sizes", "KAGGLE_LICENSES",
    ], "kaggle_utils.kernel.bundle"),
    **dict.fromkeys([
        "render_notebook", "install_cell",
    ], "kaggle_utils.kernel.notebook"),
    **dict.fromkeys([
        "read_image_list", "installed", "closure", "image_distributions", "KAGGLE_PYTHON",
        "KAGGLE_PLATFORM", "UNDECLARED", "VENV_OWN", "KAGGLE_MARKERS",
    ], "kaggle_utils.kernel.image"),
    **dict.fromkeys([
        "BundleError", "VerifyError", "canonical", "slugify", "REPO_ROOT", "IMAGE_LIST", "WHEEL_CACHE",
        "NOTEBOOK", "COMPETITION", "MODEL_FILES", "ZIP_DATE", "FALLBACK", "INPUT_ENV", "REPORT",
        "VERIFY_REPORT", "PARTS", "EMULATION", "MANIFEST", "OWN", "SLUG", "UPLOAD", "OLD_PARTS",
        "BUNDLE_MARKERS", "inside_bundle",
    ], "kaggle_utils.kernel.layout"),
    **dict.fromkeys([
        "GpuProfile", "RunMeasure", "measure_run", "measure_preprocess", "plan_images", "estimate",
        "format_plan",
    ], "kaggle_utils.kernel.plan"),
    **dict.fromkeys([
        "check_manifest", "write_manifest", "link_image", "network_isolation", "VerifyReport", "run_notebook",
    ], "kaggle_utils.kernel.verify"),
    **dict.fromkeys([
        "layout_test_set", "default_test_images", "competition_folder", "link_competition_test_set",
        "prepare_test_set",
    ], "kaggle_utils.kernel.testset"),
    **dict.fromkeys([
        "wheel_name", "kaggle_compatible", "normalize_wheel", "build_own_wheel", "cached_wheel",
        "fetch_wheel",
    ], "kaggle_utils.kernel.wheels"),
    **dict.fromkeys([
        "latest_chain_runs", "main",
    ], "kaggle_utils.kernel.__main__"),
    **dict.fromkeys([
        "find_weights", "write_weights", "bundle_weights",
    ], "kaggle_utils.kernel.pretrained"),
    **dict.fromkeys([
        "is_run", "run_folders", "final_runs", "chain_workdir", "expand_runs", "kernel_source_models",
    ], "kaggle_utils.kernel.handover"),
    **dict.fromkeys([
        "read_config", "source_dicts", "model_needs", "ModelNeed", "smoke_config", "epoch_times",
        "format_epoch_times", "prune_outputs", "external_mounts", "SMOKE",
    ], "kaggle_utils.kernel.training"),
    **dict.fromkeys([
        "TrainBundleSpec", "build_training", "format_training",
    ], "kaggle_utils.kernel.train_bundle"),
    **dict.fromkeys([
        "verify_training", "TrainVerifyReport", "emulate_inputs", "relocate",
    ], "kaggle_utils.kernel.train_verify"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
