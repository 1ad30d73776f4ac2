import warnings
from collections import Counter

import albumentations as A
import cv2
import numpy as np
import pytest

from kaggle_utils.data.augment import PRESETS, get_augmentation, reseed

SIZE = 128


@pytest.fixture(scope="module")
def fundus() -> np.ndarray:
    """A fundus-like test image: a textured orange disc on black, asymmetric so flips are visible."""
    rng = np.random.default_rng(0)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    cv2.circle(img, (SIZE // 2, SIZE // 2), SIZE // 2 - 4, (200, 90, 40), -1)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape) * (img > 0), 0, 255).astype(np.uint8)
    cv2.circle(img, (SIZE // 3, SIZE // 2), 8, (250, 220, 150), -1)  # optic disc, off-centre
    return img


@pytest.mark.parametrize("preset", PRESETS)
def test_shape_and_dtype_preserved(preset, fundus):
    aug = get_augmentation(preset, SIZE, seed=0)
    for _ in range(10):
        out = aug(image=fundus)["image"]
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    wide = cv2.resize(fundus, (SIZE + 40, SIZE))  # not yet square: still comes out size x size
    assert aug(image=wide)["image"].shape == (SIZE, SIZE, 3)


def test_none_is_identity(fundus):
    out = get_augmentation("none", SIZE)(image=fundus)["image"]
    assert np.array_equal(out, fundus)


def test_presets_augment_and_differ(fundus):
    seed_aug, first = get_augmentation("seed", SIZE, seed=5), get_augmentation("first_place", SIZE, seed=5)
    for aug in (seed_aug, first):
        assert sum(not np.array_equal(aug(image=fundus)["image"], fundus) for _ in range(5)) >= 4
    assert any(not np.array_equal(seed_aug(image=fundus)["image"], first(image=fundus)["image"]) for _ in range(3))
    seed_names = {t["__class_fullname__"] for t in A.to_dict(seed_aug)["transform"]["transforms"]}
    first_names = {t["__class_fullname__"] for t in A.to_dict(first)["transform"]["transforms"]}
    assert "CoarseDropout" in seed_names - first_names and "HueSaturationValue" in first_names - seed_names


@pytest.mark.parametrize("preset", ["seed", "first_place", "camera"])
def test_seed_determinism(preset, fundus):
    def run(seed):
        aug = get_augmentation(preset, SIZE, seed=seed)
        return [aug(image=fundus)["image"] for _ in range(6)]

    a, b, c = run(11), run(11), run(12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_reseed_keeps_transforms_independent():
    """albumentations' Compose(seed=) makes equal-p flips fire together; our seeding must not."""
    x = np.zeros((8, 8, 3), np.uint8)
    flips = reseed(A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], save_applied_params=True), 3)
    combos = Counter(tuple(n for n, _ in flips(image=x)["applied_transforms"]) for _ in range(200))
    assert len(combos) == 4 and min(combos.values()) > 25


@pytest.mark.parametrize("preset", PRESETS)
def test_serialisable(preset, fundus):
    aug = get_augmentation(preset, SIZE, seed=1)
    data = A.to_dict(aug)
    assert data["transform"]["transforms"][-1]["height"] == SIZE
    with warnings.catch_warnings():  # albumentations 2.0.8 RGBShift.to_dict writes args its __init__ rejects
        warnings.simplefilter("ignore", UserWarning)
        again = reseed(A.from_dict(data), 1)
    assert all(np.array_equal(aug(image=fundus)["image"], again(image=fundus)["image"]) for _ in range(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        get_augmentation("heavy", SIZE)
    with pytest.raises(ValueError, match="positive"):
        get_augmentation("none", 0)


def test_camera_transforms_do_what_they_say():
    """LocalContrast scales distances from the Ben grey (128 stays 128); FieldOfView greys what lies outside
    its circle and, with a cut, bands at top and bottom; the camera preset contains every camera effect."""
    from kaggle_utils.data.augment import FieldOfView, LocalContrast

    ramp = np.tile(np.arange(0, 256, 2, dtype=np.uint8)[None, :, None], (4, 1, 3))
    doubled = LocalContrast(factor_range=(2.0, 2.0), p=1.0)(image=ramp)["image"]
    np.testing.assert_array_equal(doubled[0, :, 0], np.clip(128 + 2 * (ramp[0, :, 0].astype(int) - 128), 0, 255))
    img = np.full((64, 64, 3), 200, np.uint8)
    small = FieldOfView(radius_range=(0.5, 0.5), cut_p=0.0, p=1.0)(image=img)["image"]
    assert (small[32, 32] == 200).all() and (small[0, 0] == 128).all() and (small[32, 2] == 128).all()
    band = FieldOfView(radius_range=(1.5, 1.5), cut_p=1.0, cut_range=(0.1, 0.1), p=1.0)(image=img)["image"]
    assert (band[3, 32] == 128).all() and (band[60, 32] == 128).all() and (band[8:56] == 200).all()
    with pytest.raises(ValueError):
        LocalContrast(factor_range=(0.0, 1.0))
    names = {t["__class_fullname__"] for t in A.to_dict(get_augmentation("camera", SIZE))["transform"]["transforms"]}
    assert {"LocalContrast", "FieldOfView", "ImageCompression", "RandomGamma", "Illumination", "OneOf"} <= {
        n.rsplit(".", 1)[-1] for n in names}
