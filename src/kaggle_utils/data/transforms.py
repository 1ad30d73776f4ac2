"""The preprocessing steps as albumentations ``ImageOnlyTransform`` classes (``CropRetina``,
``StandardiseFraming``, ``ResizeSquare``, ``CircleCrop``, ``LabCLAHE``, ``BenGraham``).

albumentations pulls in torch (~4 s), so the classes are created on first access, e.g.
``transforms.CropRetina`` or :func:`build_transform`. Call :func:`register_transforms` before ``A.from_dict``
on a saved pipeline. The functions in :mod:`kaggle_utils.data.preprocess` stay the single source of truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kaggle_utils.data.preprocess import (
    RESIZE_MODES,
    PreprocessConfig,
    apply_clahe,
    as_config,
    ben_graham,
    circle_crop,
    crop_retina,
    resize_square,
    standardise_framing,
)

TRANSFORM_NAMES = ("CropRetina", "StandardiseFraming", "ResizeSquare", "CircleCrop", "LabCLAHE", "BenGraham")


def register_transforms() -> dict[str, type]:
    """Create (once) and return the albumentations transform classes; needed before ``A.from_dict``."""
    existing = {name: globals()[name] for name in TRANSFORM_NAMES if name in globals()}
    if len(existing) == len(TRANSFORM_NAMES):
        return existing
    from albumentations.core.transforms_interface import ImageOnlyTransform

    class _Step(ImageOnlyTransform):
        """Deterministic preprocessing step (p=1 by default); init args are its serialised state."""

        _args: tuple[str, ...] = ()

        def __init__(self, p: float = 1.0, **kwargs: Any):
            super().__init__(p=p)
            for key, value in kwargs.items():
                setattr(self, key, value)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return self._args

        def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
            return np.ascontiguousarray(self._fn(img))

    class CropRetina(_Step):
        """:func:`crop_retina` as a transform."""

        __qualname__ = "CropRetina"
        _args = ("tol",)

        def __init__(self, tol: float = 7, p: float = 1.0):
            super().__init__(p=p, tol=tol)

        def _fn(self, img: np.ndarray) -> np.ndarray:
            return crop_retina(img, self.tol)

    class StandardiseFraming(_Step):
        """:func:`standardise_framing` as a transform."""

        __qualname__ = "StandardiseFraming"
        _args = ("factor", "tol")

        def __init__(self, factor: float = 1.0, tol: float = 7, p: float = 1.0):
            super().__init__(p=p, factor=factor, tol=tol)

        def _fn(self, img: np.ndarray) -> np.ndarray:
            return standardise_framing(img, self.factor, self.tol)

    class ResizeSquare(_Step):
        """:func:`resize_square` as a transform."""

        __qualname__ = "ResizeSquare"
        _args = ("size", "mode")

        def __init__(self, size: int = 512, mode: str = "pad", p: float = 1.0):
            if mode not in RESIZE_MODES:
                raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
            super().__init__(p=p, size=size, mode=mode)

        def _fn(self, img: np.ndarray) -> np.ndarray:
            return resize_square(img, self.size, self.mode)

    class CircleCrop(_Step):
        """:func:`circle_crop` as a transform."""

        __qualname__ = "CircleCrop"
        _args = ("tol", "radius_frac")

        def __init__(self, tol: float = 7, radius_frac: float = 1.0, p: float = 1.0):
            super().__init__(p=p, tol=tol, radius_frac=radius_frac)

        def _fn(self, img: np.ndarray) -> np.ndarray:
            return circle_crop(img, self.tol, self.radius_frac)

    class LabCLAHE(_Step):
        """:func:`apply_clahe` (L channel of LAB) as a transform."""

        __qualname__ = "LabCLAHE"
        _args = ("clip_limit", "tile_grid")

        def __init__(self, clip_limit: float = 2.0, tile_grid: int = 8, p: float = 1.0):
            super().__init__(p=p, clip_limit=clip_limit, tile_grid=tile_grid)

        def _fn(self, img: np.ndarray) -> np.ndarray:
            return apply_clahe(img, self.clip_limit, self.tile_grid)

    class BenGraham(_Step):
        """:func:`ben_graham` as a transform."""

        __qualname__ = "BenGraham"
        _args = ("sigma", "sigma_frac", "remask", "remask_frac", "tol")

        def __init__(
            self,
            sigma: float | None = None,
            sigma_frac: float = 1 / 30,
            remask: bool = True,
            remask_frac: float = 0.9,
            tol: float = 7,
            p: float = 1.0,
        ):
            super().__init__(
                p=p, sigma=sigma, sigma_frac=sigma_frac, remask=remask, remask_frac=remask_frac, tol=tol
            )

        def _fn(self, img: np.ndarray) -> np.ndarray:
            return ben_graham(img, self.sigma, self.sigma_frac, self.remask, self.remask_frac, self.tol)

    classes = {
        cls.__name__: cls
        for cls in (CropRetina, StandardiseFraming, ResizeSquare, CircleCrop, LabCLAHE, BenGraham)
    }
    globals().update(classes)
    return classes


def __getattr__(name: str) -> Any:  # PEP 562: transform classes appear on first use (and for unpickling)
    if name in TRANSFORM_NAMES:
        return register_transforms()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_transform(cfg: PreprocessConfig | dict[str, Any] | None = None) -> Any:
    """``cfg`` as an ``A.Compose`` over RGB arrays (decoding excluded); same pixels as :func:`preprocess_array`."""
    import albumentations as A

    cfg = as_config(cfg)
    t = register_transforms()
    steps: list[Any] = []
    if cfg.framing is not None:
        steps.append(t["StandardiseFraming"](factor=cfg.framing, tol=cfg.crop_tol))
    elif cfg.crop:
        steps.append(t["CropRetina"](tol=cfg.crop_tol))
    steps.append(t["ResizeSquare"](size=cfg.size, mode=cfg.resize_mode))
    if cfg.circle:
        steps.append(t["CircleCrop"](tol=cfg.crop_tol))
    if cfg.clahe:
        steps.append(t["LabCLAHE"](clip_limit=cfg.clahe_clip, tile_grid=cfg.clahe_grid))
    if cfg.ben_graham:
        steps.append(
            t["BenGraham"](
                sigma=cfg.ben_sigma, sigma_frac=cfg.ben_sigma_frac, remask=cfg.ben_remask, tol=cfg.crop_tol
            )
        )
    return A.Compose(steps)
