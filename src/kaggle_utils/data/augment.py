"""Train-time augmentation presets (albumentations 2.x) for preprocessed size x size fundus images.

Presets:
    ``seed``         the project's baseline: flips, brightness/contrast, RGB shift, scale/rotate/shear,
                     coarse dropout.
    ``first_place``  the APTOS 2019 1st-place list: contrast +-0.2, brightness +-20 (of 255), hue +-10,
                     saturation +-20, rotation +-180 deg, scale / shift +-0.2, shear +-0.2 rad (+-11.5 deg;
                     read as radians since +-0.2 deg would do nothing), mirror, blur or sharpen.
    ``camera``       ``seed`` plus what differs between cameras and clinics once an image is preprocessed:
                     local contrast around the Ben grey (sources filtered at other sigmas and resolutions
                     differ 2x), blur or sharpening (focus, resolution), gamma, colour casts, JPEG quality,
                     vignetting and uneven illumination, and a smaller or cut field of view.
    ``none``         identity (validation / test-time).

Every preset ends in ``Resize(size, size)`` (a no-op on size x size input), so the output is always
size x size uint8. Geometric transforms fill with black, like the fundus background.

Seeding: albumentations 2.0.8's ``Compose(seed=s)`` seeds *every* child transform with the same s, so
two transforms with equal p (horizontal and vertical flip) fire together on every call. :func:`reseed`
instead gives the whole pipeline one shared random stream; call it with ``base_seed + worker_id`` in a
DataLoader ``worker_init_fn`` so workers do not repeat each other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

PRESETS = ("seed", "first_place", "camera", "none")
BEN_GREY = 128  # the background and mean level of a Ben-Graham-filtered image


class LocalContrast(A.ImageOnlyTransform):
    """Scale every pixel's distance from ``centre`` by a factor drawn log-uniformly from ``factor_range``: how
    strongly a source's preprocessing brought out local detail (Ben's filter at another sigma or resolution)."""

    def __init__(self, factor_range: tuple[float, float] = (0.5, 2.0), centre: float = BEN_GREY, p: float = 0.5):
        super().__init__(p=p)
        if not 0 < factor_range[0] <= factor_range[1]:
            raise ValueError(f"factor_range must be 0 < low <= high, got {factor_range}")
        self.factor_range, self.centre = tuple(factor_range), float(centre)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        lo, hi = np.log(self.factor_range)
        return {"factor": float(np.exp(self.py_random.uniform(lo, hi)))}

    def apply(self, img: np.ndarray, factor: float = 1.0, **params: object) -> np.ndarray:
        lut = np.clip(self.centre + factor * (np.arange(256) - self.centre), 0, 255).astype(np.uint8)
        return cv2.LUT(img, lut)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("factor_range", "centre")


class FieldOfView(A.ImageOnlyTransform):
    """Cover what lies outside a circle of ``radius_range`` x half the side (a camera with a smaller field of
    view), and with ``cut_p`` also a band at top and bottom (photographs framed to cut the retina, as APTOS and
    IDRiD are), with ``fill``."""

    def __init__(self, radius_range: tuple[float, float] = (0.85, 1.05), cut_p: float = 0.3,
                 cut_range: tuple[float, float] = (0.0, 0.12), fill: int = BEN_GREY, p: float = 0.3):
        super().__init__(p=p)
        self.radius_range, self.cut_p, self.cut_range = tuple(radius_range), float(cut_p), tuple(cut_range)
        self.fill = int(fill)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        cut = self.py_random.uniform(*self.cut_range) if self.py_random.random() < self.cut_p else 0.0
        return {"radius": self.py_random.uniform(*self.radius_range), "cut": cut}

    def apply(self, img: np.ndarray, radius: float = 1.0, cut: float = 0.0, **params: object) -> np.ndarray:
        h, w = img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (w // 2, h // 2), max(1, round(radius * min(h, w) / 2)), 255, -1)
        band = round(cut * h)
        if band:
            mask[:band], mask[h - band:] = 0, 0
        return cv2.copyTo(img, mask, np.full_like(img, self.fill))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("radius_range", "cut_p", "cut_range", "fill")


def _seed_preset(size: int) -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RGBShift(r_shift_limit=10, g_shift_limit=10, b_shift_limit=10, p=0.3),
        A.Affine(scale=(0.9, 1.1), keep_ratio=True, rotate=(-180, 180), shear=(-10, 10),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.8),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.04, 0.1), hole_width_range=(0.04, 0.1),
                        fill=0, p=0.3),
    ]


def _first_place_preset(size: int) -> list[A.BasicTransform]:
    shear = math.degrees(0.2)
    return [
        A.RandomBrightnessContrast(brightness_limit=20 / 255, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=0, p=0.5),
        A.Affine(scale=(0.8, 1.2), keep_ratio=True, translate_percent=(-0.2, 0.2), rotate=(-180, 180),
                 shear=(-shear, shear), interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT,
                 fill=0, p=1.0),
        A.HorizontalFlip(p=0.5),
        A.OneOf([A.Blur(blur_limit=(3, 5), p=1.0), A.Sharpen(alpha=(0.2, 0.5), lightness=(0.8, 1.0), p=1.0)],
                p=0.3),
    ]


def _camera_preset(size: int) -> list[A.BasicTransform]:
    return [
        *_seed_preset(size),
        LocalContrast(factor_range=(0.5, 2.0), p=0.6),
        A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.2), blur_limit=0, p=1.0),
                 A.MotionBlur(blur_limit=(3, 5), p=1.0),
                 A.Sharpen(alpha=(0.1, 0.3), lightness=(0.95, 1.05), p=1.0)], p=0.4),
        A.RandomGamma(gamma_limit=(85, 118), p=0.3),
        A.RGBShift(r_shift_limit=8, g_shift_limit=6, b_shift_limit=8, p=0.3),
        A.Illumination(mode="gaussian", effect_type="darken", intensity_range=(0.05, 0.2), center_range=(0.4, 0.6),
                       sigma_range=(0.6, 1.0), p=0.25),  # vignetting
        A.Illumination(mode="linear", effect_type="both", intensity_range=(0.03, 0.12), p=0.25),  # uneven light
        FieldOfView(p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.4),
    ]


_PRESETS: dict[str, Callable[[int], list[A.BasicTransform]]] = {
    "seed": _seed_preset,
    "first_place": _first_place_preset,
    "camera": _camera_preset,
    "none": lambda size: [],
}


def reseed(transform: A.BaseCompose, seed: int) -> A.BaseCompose:
    """Make ``transform`` deterministic from ``seed`` with one random stream shared by all its children."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform


def get_augmentation(preset: str, size: int, seed: int | None = None) -> A.Compose:
    """The albumentations pipeline of ``preset`` for size x size uint8 RGB images.

    With ``seed`` the sequence of augmentations is reproducible (see :func:`reseed`); without, it draws
    fresh entropy.
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {PRESETS}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    pipeline = A.Compose([*_PRESETS[preset](size), A.Resize(size, size, interpolation=cv2.INTER_AREA)])
    return pipeline if seed is None else reseed(pipeline, seed)
