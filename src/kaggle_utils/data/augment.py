"""Train-time augmentation presets (albumentations 2.x) for preprocessed size x size fundus images.

Presets:
    ``seed``         the project's baseline: flips, brightness/contrast, RGB shift, scale/rotate/shear,
                     coarse dropout.
    ``first_place``  the APTOS 2019 1st-place list: contrast +-0.2, brightness +-20 (of 255), hue +-10,
                     saturation +-20, rotation +-180 deg, scale / shift +-0.2, shear +-0.2 rad (+-11.5 deg;
                     read as radians since +-0.2 deg would do nothing), mirror, blur or sharpen.
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

PRESETS = ("seed", "first_place", "none")


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


_PRESETS: dict[str, Callable[[int], list[A.BasicTransform]]] = {
    "seed": _seed_preset,
    "first_place": _first_place_preset,
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
