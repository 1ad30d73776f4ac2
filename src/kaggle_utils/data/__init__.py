"""Data stage: label files -> one table -> preprocessed cache -> folds -> torch Dataset.

``sources`` (reader per dataset) and ``labels`` (row checks) build the table; ``decode`` reads any fundus file;
``preprocess`` holds the image operations and :class:`PreprocessConfig`, ``transforms`` the same operations as
albumentations classes; ``cache`` writes the preprocessed images; ``folds`` finds duplicates and splits;
``assemble`` merges several sources with roles; ``dataset`` and ``augment`` feed training.
``python -m kaggle_utils.data`` is the preprocess command. Importing this package imports no torch.
"""

from kaggle_utils._exports import lazy_exports

# name -> defining module, imported on first use (so importing the package stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "SourceSpec", "parse_sources", "competition", "load_specs", "drop_cross_duplicates",
        "build_table", "summary", "build_caches", "stage_table",
    ], "kaggle_utils.data.assemble"),
    **dict.fromkeys([
        "reseed", "get_augmentation",
    ], "kaggle_utils.data.augment"),
    **dict.fromkeys([
        "CacheError", "CacheConfigError", "summary_line", "build_cache", "load_cache",
    ], "kaggle_utils.data.cache"),
    **dict.fromkeys([
        "read_rgb", "FundusDataset", "EpochSampler", "ShuffleSampler", "GradeBalancedSampler",
        "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_RATES",
    ], "kaggle_utils.data.dataset"),
    **dict.fromkeys([
        "ImageReadError", "png_decoder", "opencv_png", "decode_image", "read_image",
    ], "kaggle_utils.data.decode"),
    **dict.fromkeys([
        "HashError", "FoldWarning", "load_gray", "to_gray", "crop_dark_border", "phash", "dhash",
        "image_hash", "hash_images", "hash_to_hex", "hex_to_hash", "duplicate_pairs",
        "groups_from_pairs", "find_duplicate_groups", "add_duplicate_groups", "conflicting_groups",
        "make_folds", "fold_distribution", "write_folds", "read_folds", "holdout_split",
    ], "kaggle_utils.data.folds"),
    **dict.fromkeys([
        "SourceError", "SourceWarning", "validate",
    ], "kaggle_utils.data.labels"),
    **dict.fromkeys([
        "retina_bbox", "retina_circle", "crop_retina", "circle_crop", "ben_graham", "apply_clahe",
        "resize_square", "standardise_framing", "PreprocessConfig", "preprocess_array",
        "preprocess_image",
    ], "kaggle_utils.data.preprocess"),
    **dict.fromkeys([
        "load_aptos", "load_eyepacs", "load_idrid", "load_messidor", "load_generic", "load_source",
        "combine", "test_table", "extension_mismatch",
    ], "kaggle_utils.data.sources"),
    **dict.fromkeys([
        "register_transforms", "build_transform", "CropRetina", "StandardiseFraming", "ResizeSquare",
        "CircleCrop", "LabCLAHE", "BenGraham",
    ], "kaggle_utils.data.transforms"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
