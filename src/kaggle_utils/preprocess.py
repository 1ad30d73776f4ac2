"""Old path of :mod:`kaggle_utils.data.__main__`, :mod:`kaggle_utils.data.decode`,
:mod:`kaggle_utils.data.preprocess`, :mod:`kaggle_utils.data.transforms`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "RESIZE_MODES", "BBox", "retina_bbox", "retina_circle", "crop_retina", "circle_crop",
        "ben_graham", "apply_clahe", "resize_square", "standardise_framing", "PreprocessConfig",
        "preprocess_array", "preprocess_image",
    ], "kaggle_utils.data.preprocess"),
    **dict.fromkeys([
        "TRANSFORM_NAMES", "register_transforms", "build_transform", "CropRetina", "StandardiseFraming",
        "ResizeSquare", "CircleCrop", "LabCLAHE", "BenGraham",
    ], "kaggle_utils.data.transforms"),
    **dict.fromkeys([
        "ImageReadError", "png_decoder", "opencv_png", "decode_image", "read_image",
    ], "kaggle_utils.data.decode"),
    **dict.fromkeys([
        "main",
    ], "kaggle_utils.data.__main__"),
}
__getattr__, __dir__ = moved("kaggle_utils.preprocess", _EXPORTS, globals())

if __name__ == "__main__":
    import sys

    from kaggle_utils.data.__main__ import main

    sys.exit(main())
