"""preprocess.py on real fundus photographs (shared raw originals and the bundled IDRiD sample)."""

from __future__ import annotations

import dataclasses
import io
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kaggle_utils.data import decode, preprocess, transforms
from kaggle_utils.data.preprocess import PreprocessConfig, preprocess_array

IMAGE_EXTS = {".jpg", ".png", ".tif"}
# Reduced-scale libjpeg decode vs full decode, both area-resized to 512 px wide: measured mean |diff| 0.15-0.22
# grey levels and p99 1 on the ten 4288x2848 IDRiD originals (1/4 scale). The bound leaves ~2x headroom.
REDUCED_DECODE_MAD = 0.5
REDUCED_DECODE_P99 = 2


@pytest.fixture(scope="module")
def raw_files(raw_dir: Path) -> list[Path]:
    files = sorted(p for p in raw_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    assert len(files) >= 20, f"expected the shared raw originals in {raw_dir}"
    return files


@pytest.fixture(scope="module")
def full(raw_files: list[Path]) -> dict[str, np.ndarray]:
    """Every raw original decoded at full size, once per module."""
    return {p.name: decode.read_image(p) for p in raw_files}


@pytest.fixture(scope="module")
def idrid(full: dict[str, np.ndarray]) -> np.ndarray:
    """An IDRiD original at 1/4 scale (1072x712): retina cut at top and bottom, black side borders."""
    return np.ascontiguousarray(full["idrid_IDRiD_001.jpg"][::4, ::4])


@pytest.fixture(scope="module")
def circle_img(full: dict[str, np.ndarray]) -> np.ndarray:
    """scikit-image's retina: a full circle inside a square frame."""
    return full["skimage_retina.jpg"]


def reference_bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    """Independent retina box: clearly bright pixels (> 20), specks removed, largest component."""
    mask = (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) > 20).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    x, y, w, h, _ = stats[1:][stats[1:, cv2.CC_STAT_AREA].argmax()]
    return int(x), int(y), int(x + w), int(y + h)


def bright_fraction(img: np.ndarray) -> float:
    return float((cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) > 20).mean())


# ------------------------------------------------------------------------------------------------ reading


def test_every_raw_original_reads_as_rgb_uint8(raw_dir: Path, full: dict[str, np.ndarray]) -> None:
    manifest = pd.read_csv(raw_dir / "manifest.csv")
    assert len(full) == len(manifest)
    for row in manifest.itertuples():
        img = full[row.file]
        assert img.dtype == np.uint8 and img.shape == (row.height, row.width, 3), row.file
        assert 20 < img.mean() < 200, row.file


def test_reduced_decode_matches_full_decode(raw_files: list[Path], full: dict[str, np.ndarray]) -> None:
    originals = [p for p in raw_files if p.name.startswith("idrid_")]
    assert len(originals) == 10
    for path in originals:
        ref = full[path.name]
        assert ref.shape == (2848, 4288, 3)
        red = decode.read_image(path, target_size=512)
        assert red.shape == (712, 1072, 3), "1/4 scale keeps the 2848 px short side >= 512; 1/8 would not"
        size = (512, round(512 * 2848 / 4288))
        a = cv2.resize(ref, size, interpolation=cv2.INTER_AREA).astype(np.int16)
        b = cv2.resize(red, size, interpolation=cv2.INTER_AREA).astype(np.int16)
        diff = np.abs(a - b)
        assert diff.mean() < REDUCED_DECODE_MAD, (path.name, diff.mean())
        assert np.percentile(diff, 99) <= REDUCED_DECODE_P99, path.name


def test_reduction_is_conservative(raw_dir: Path) -> None:
    chase = raw_dir / "chase_Image_01L.jpg"  # 999x960: half scale (480) would fall below 512
    assert decode.read_image(chase, 512).shape == (960, 999, 3)
    assert decode.read_image(chase, 256).shape == (480, 500, 3)
    assert decode.read_image(chase, 100).shape == (120, 125, 3)
    png = raw_dir / "aptos_1ae3c58759fb.png"  # no reduced decode for PNG: full size, always
    assert decode.read_image(png, 64).shape == (1050, 1050, 3)


def test_gray_rgba_16bit_and_unicode_paths(tmp_path: Path, raw_dir: Path, idrid: np.ndarray) -> None:
    bgr = cv2.cvtColor(idrid, cv2.COLOR_RGB2BGR)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    g = decode.read_image(tmp_path / "gray.png")
    assert g.shape == idrid.shape and g.dtype == np.uint8
    assert np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 1], g[..., 2])

    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)  # 16-bit PNG of a real photo
    assert cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    deep = decode.read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and np.abs(deep.astype(int) - idrid).max() <= 1

    rgba_tif = decode.read_image(raw_dir / "drive_21_training.tif")  # a real RGBA TIFF (opaque alpha)
    assert rgba_tif.shape == (584, 565, 3) and rgba_tif.dtype == np.uint8 and rgba_tif.mean() > 30
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    bgra[:, : bgra.shape[1] // 2, 3] = 0  # transparent left half -> black
    cv2.imwrite(str(tmp_path / "alpha.tif"), bgra)
    a = decode.read_image(tmp_path / "alpha.tif")
    assert a.shape == idrid.shape
    assert a[:, : a.shape[1] // 2].max() == 0 and np.array_equal(a[:, -10:], idrid[:, -10:])

    uni = tmp_path / "фундус 眼底.jpg"
    shutil.copyfile(raw_dir / "chase_Image_05R.jpg", uni)
    assert decode.read_image(uni).shape == (960, 999, 3)


def test_bad_files_raise_image_read_error_with_reason(tmp_path: Path, raw_dir: Path) -> None:
    data = (raw_dir / "idrid_IDRiD_003.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("id_code,diagnosis\n000c1434d8d7,2\n")
    (tmp_path / "corrupt.png").write_bytes((raw_dir / "aptos_1ae3c58759fb.png").read_bytes()[:5000])
    expected = {
        "truncated.jpg": "truncated JPEG",
        "empty.jpg": "zero-byte",
        "notes.png": "not an image",
        "corrupt.png": "corrupt PNG",
        "missing.jpg": "file not found",
    }
    for name, reason in expected.items():
        with pytest.raises(decode.ImageReadError) as info:
            decode.read_image(tmp_path / name, 512)
        assert reason in info.value.reason and info.value.path == str(tmp_path / name), (name, info.value)
        assert name in str(info.value)
        again = pickle.loads(pickle.dumps(info.value))  # errors cross process boundaries in the cache
        assert again.reason == info.value.reason


def test_jpeg_with_bytes_after_end_marker_is_fine(tmp_path: Path, raw_dir: Path) -> None:
    (tmp_path / "padded.jpg").write_bytes((raw_dir / "chase_Image_10L.jpg").read_bytes() + b"\x00" * 300)
    assert decode.read_image(tmp_path / "padded.jpg").shape == (960, 999, 3)


# ------------------------------------------------------------------------------------------- PNG decoding


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _pillow_png(img: np.ndarray, mode: str, **save: object) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(img).convert(mode).save(out, format="PNG", **save)
    return out.getvalue()


@pytest.fixture(scope="module")
def patch(idrid: np.ndarray) -> np.ndarray:
    """A 240x320 RGB piece of a real photograph holding retina and black border."""
    return np.ascontiguousarray(idrid[200:440, 60:380])


def test_imagecodecs_png_path_is_pixel_identical_to_opencv(patch: np.ndarray, raw_files: list[Path]) -> None:
    assert decode.png_decoder().startswith("imagecodecs"), "imagecodecs is pinned in requirements.txt"
    bgr = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = np.linspace(0, 255, bgra.shape[1]).astype(np.uint8)  # every alpha level
    flavours = {
        "gray8": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
        "gray16": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257 + 3,
        "rgb8": bgr,
        "rgb16": bgr.astype(np.uint16) * 251,
        "rgba8": bgra,
        "rgba16": bgra.astype(np.uint16) * 257,
    }
    encoded = {name: _png(img) for name, img in flavours.items()}
    encoded |= {p.name: p.read_bytes() for p in raw_files if p.suffix == ".png"}  # the real APTOS PNGs
    assert len(encoded) == 9
    fast = {}
    for name, data in encoded.items():
        assert decode._decode_png_fast(data) is not None, f"{name} should take the imagecodecs path"
        fast[name] = decode.decode_image(data, name=name)
    with decode.opencv_png():
        assert decode.png_decoder() == "OpenCV"
        for name, data in encoded.items():
            assert decode._decode_png_fast(data) is None
            slow = decode.decode_image(data, name=name)
            assert fast[name].dtype == slow.dtype == np.uint8 and fast[name].shape == slow.shape, name
            assert np.array_equal(fast[name], slow), name
    assert decode.png_decoder().startswith("imagecodecs")  # restored after the block
    assert np.array_equal(fast["rgb8"], patch)


def test_rarer_png_flavours_and_corrupt_pngs_go_to_opencv(patch: np.ndarray, raw_dir: Path) -> None:
    fallback = {
        "palette": _pillow_png(patch, "P"),
        "gray+alpha": _pillow_png(patch, "LA"),
        "1-bit": _pillow_png(patch, "1"),
        "rgb+tRNS": _pillow_png(patch, "RGB", transparency=(0, 0, 0)),
    }
    from PIL import Image

    for name, data in fallback.items():
        assert decode._decode_png_fast(data) is None, name
        img = decode.decode_image(data, name=name)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # transparent pixels are black
        assert img.dtype == np.uint8 and np.array_equal(img, expected), name

    good = (raw_dir / "aptos_1ae3c58759fb.png").read_bytes()
    flipped = bytearray(good)
    flipped[good.find(b"IDAT") + 5000] ^= 0xFF  # CRC mismatch inside the image data
    for data in (good[:5000], good[: len(good) // 2], bytes(flipped)):
        assert decode._decode_png_fast(data) is None
        with pytest.raises(decode.ImageReadError, match="corrupt PNG"):
            decode.decode_image(data)


# -------------------------------------------------------------------------------------------- retina crop


def test_crop_keeps_the_whole_retina_on_every_raw_original(full: dict[str, np.ndarray]) -> None:
    for name, img in full.items():
        box = preprocess.retina_bbox(img)
        assert box is not None, name
        x0, y0, x1, y1 = box
        rx0, ry0, rx1, ry1 = reference_bbox(img)
        assert x0 <= rx0 and y0 <= ry0 and x1 >= rx1 and y1 >= ry1, (name, box, (rx0, ry0, rx1, ry1))
        crop = preprocess.crop_retina(img)
        assert crop.shape == (y1 - y0, x1 - x0, 3), name
        # tight: the crop is not mostly black (a full circle fills pi/4 = 0.785 of its square)
        assert bright_fraction(crop) > 0.7, (name, bright_fraction(crop))
        assert x1 - x0 <= (rx1 - rx0) * 1.05 + 2 and y1 - y0 <= (ry1 - ry0) * 1.05 + 2, name
        if name.startswith("idrid_") or img.shape[1] == 3216:  # wide black side borders are gone
            assert crop.shape[1] < 0.9 * img.shape[1], name


def test_crop_at_reduced_scale_agrees_with_full_scale(
    raw_files: list[Path], full: dict[str, np.ndarray]
) -> None:
    for path in raw_files:
        if not path.name.startswith("idrid_"):
            continue
        big = np.array(preprocess.retina_bbox(full[path.name]))
        small = np.array(preprocess.retina_bbox(decode.read_image(path, 512))) * 4
        assert np.abs(big - small).max() <= 0.015 * 4288, (path.name, big, small)


def test_crop_ignores_border_noise_and_labels(idrid: np.ndarray) -> None:
    box = preprocess.retina_bbox(idrid)
    noisy = idrid.copy()
    rng = np.random.default_rng(0)
    border = cv2.cvtColor(noisy, cv2.COLOR_RGB2GRAY) < 15
    noise = np.clip(noisy.astype(np.int16) + rng.normal(0, 4, noisy.shape).round().astype(np.int16), 0, 255)
    noisy[border] = noise[border].astype(np.uint8)
    ys, xs = np.nonzero(border)
    pick = rng.choice(len(ys), 300, replace=False)
    noisy[ys[pick], xs[pick]] = 255  # salt specks in the black border
    cv2.putText(noisy, "L 2019", (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)  # a label
    assert preprocess.retina_bbox(noisy) is not None
    assert np.abs(np.array(preprocess.retina_bbox(noisy)) - np.array(box)).max() <= 8, (box, preprocess.retina_bbox(noisy))
    assert preprocess.retina_bbox(idrid) == box  # the naive any()-crop would keep the label and every speck


def test_crop_never_returns_empty(idrid: np.ndarray) -> None:
    black = np.zeros((300, 400, 3), np.uint8)
    assert preprocess.crop_retina(black).shape == black.shape
    dark = (np.random.default_rng(1).random((300, 400, 3)) * 6).astype(np.uint8)
    assert preprocess.crop_retina(dark).shape == dark.shape
    tiny = idrid[300:310, 500:510]  # all retina, no border
    assert preprocess.crop_retina(tiny).shape == tiny.shape


def test_circle_estimate_for_full_and_cut_retinas(circle_img: np.ndarray) -> None:
    cx, cy, r = preprocess.retina_circle(circle_img)
    h, w = circle_img.shape[:2]
    assert abs(cx - w / 2) < 0.02 * w and abs(cy - h / 2) < 0.02 * h and 0.45 * w < r < 0.52 * w
    y0, y1 = int(cy - 0.75 * r), int(cy + 0.75 * r)
    both = circle_img[y0:y1]  # cut at top and bottom, like APTOS/IDRiD framing
    bx, by, br = preprocess.retina_circle(both)
    assert abs(br - r) < 0.03 * r and abs(by - (cy - y0)) < 0.03 * r and abs(bx - cx) < 0.03 * r
    top = circle_img[y0:]  # cut at the top only: centre is one radius above the bottom of the retina
    tx, ty, tr = preprocess.retina_circle(top)
    assert abs(tr - r) < 0.03 * r and abs(ty - (cy - y0)) < 0.03 * r


def test_circle_crop_masks_outside_only(circle_img: np.ndarray, idrid: np.ndarray) -> None:
    for img in (circle_img, preprocess.crop_retina(idrid)):
        out = preprocess.circle_crop(img)
        assert out.shape == img.shape and out.dtype == np.uint8
        h, w = img.shape[:2]
        assert out[:5, :5].max() == 0 and out[-5:, -5:].max() == 0  # corners
        centre = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
        assert np.array_equal(out[centre], img[centre])
        lost = (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) > 20) & (cv2.cvtColor(out, cv2.COLOR_RGB2GRAY) <= 20)
        assert lost.mean() < 0.01, lost.mean()  # the mask does not eat into the retina


# ---------------------------------------------------------------------------------- colour and framing


def test_ben_graham(idrid: np.ndarray) -> None:
    img = preprocess.resize_square(preprocess.crop_retina(idrid), 256)
    out = preprocess.ben_graham(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    cx, cy, r = preprocess.retina_circle(img)
    yy, xx = np.mgrid[:256, :256]
    inside = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.8 * r) ** 2) & (np.abs(yy - cy) < 0.6 * r)
    outside = (xx - cx) ** 2 + (yy - cy) ** 2 > (0.92 * r) ** 2
    assert abs(out[inside].mean() - 128) < 10  # local mean removed
    assert 5 < out[inside].std() < 60  # vessels and lesions remain
    assert np.all(out[outside] == 128)  # re-masked to neutral grey
    assert not np.array_equal(preprocess.ben_graham(img, sigma=10), preprocess.ben_graham(img, sigma=4))
    free = preprocess.ben_graham(img, remask=False)
    assert np.array_equal(free[inside], out[inside])


def test_ben_sigma_follows_retina_size(idrid: np.ndarray) -> None:
    """Relative sigma: the same retina at two sizes gives the same picture (up to resampling)."""
    crop = preprocess.crop_retina(idrid)
    small = preprocess.ben_graham(preprocess.resize_square(crop, 256))
    big = preprocess.ben_graham(preprocess.resize_square(crop, 512))
    down = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(down.astype(int) - small).mean() < 3


def test_apply_clahe(idrid: np.ndarray) -> None:
    img = preprocess.resize_square(preprocess.crop_retina(idrid), 256)
    out = preprocess.apply_clahe(img, clip_limit=2.0, tile_grid=8)
    assert out.shape == img.shape and out.dtype == np.uint8
    lab_in = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(float)
    lab_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).astype(float)
    retina = lab_in[..., 0] > 30
    lap_in = np.abs(cv2.Laplacian(lab_in[..., 0], cv2.CV_64F))[retina].mean()
    lap_out = np.abs(cv2.Laplacian(lab_out[..., 0], cv2.CV_64F))[retina].mean()
    assert lap_out > 1.3 * lap_in  # more local contrast
    for c in (1, 2):  # hue kept
        assert abs(lab_out[..., c][retina].mean() - lab_in[..., c][retina].mean()) < 4


def test_resize_square_modes(idrid: np.ndarray) -> None:
    crop = preprocess.crop_retina(idrid)  # wider than tall
    h, w = crop.shape[:2]
    pad = preprocess.resize_square(crop, 256, "pad")
    band = round((256 - 256 * h / w) / 2)
    assert pad.shape == (256, 256, 3) and pad.dtype == np.uint8
    assert band > 5 and pad[: band - 1].max() == 0 and pad[-(band - 1) :].max() == 0
    gray = cv2.cvtColor(pad, cv2.COLOR_RGB2GRAY)
    assert gray[band + 2 : -band - 2, 128].min() > 20  # the retina spans the full height between the bands
    cropped = preprocess.resize_square(crop, 256, "crop")
    assert cropped.shape == (256, 256, 3)
    assert cv2.cvtColor(cropped, cv2.COLOR_RGB2GRAY)[:3, 128].min() > 20  # cut retina fills the frame
    assert preprocess.resize_square(crop, 256, "stretch").shape == (256, 256, 3)
    up = preprocess.resize_square(crop[:40, :60], 128)
    assert up.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="resize mode"):
        preprocess.resize_square(crop, 256, "zoom")


def test_standardise_framing_makes_cut_and_full_retinas_alike(circle_img: np.ndarray) -> None:
    cx, cy, r = preprocess.retina_circle(circle_img)
    cut = circle_img[int(cy - 0.8 * r) : int(cy + 0.8 * r)]
    a = preprocess.resize_square(preprocess.standardise_framing(circle_img, 0.8), 128)
    b = preprocess.resize_square(preprocess.standardise_framing(cut, 0.8), 128)
    assert np.abs(a.astype(int) - b).mean() < 4
    full_frame = preprocess.standardise_framing(cut, 1.0)
    side = full_frame.shape[0]
    assert full_frame.shape[1] == side and abs(side - 2 * r) < 0.05 * r
    assert full_frame[: int(0.08 * side)].max() == 0  # black caps where the photo was cut


# ------------------------------------------------------------------------------- config and transforms


def test_config_round_trip_and_validation() -> None:
    cfg = preprocess.PreprocessConfig(size=384, ben_graham=True, ben_sigma=10.0, circle=True, framing=0.9)
    assert preprocess.PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert preprocess.PreprocessConfig.from_dict({"size": 300}).size == 300
    with pytest.raises(ValueError, match="unknown PreprocessConfig keys 'sharpen'; known: .*'size'"):
        preprocess.PreprocessConfig.from_dict({"size": 300, "sharpen": True})
    with pytest.raises(ValueError, match=r"unknown PreprocessConfig keys 'ben_sigm' \(did you mean 'ben_sigma'\?\)$"):
        preprocess.PreprocessConfig.from_dict({"size": 300, "ben_sigm": 10})
    with pytest.raises(ValueError, match="resize_mode"):
        preprocess.PreprocessConfig(resize_mode="zoom")
    with pytest.raises(ValueError, match="size"):
        preprocess.PreprocessConfig(size=0)


def test_preprocess_image_from_path_and_array(raw_dir: Path, full: dict[str, np.ndarray]) -> None:
    cfg = preprocess.PreprocessConfig(size=256, circle=True, clahe=True)
    for name in ("idrid_IDRiD_118.jpg", "aptos_00a8624548a9.png", "drive_22_training.tif"):
        out = preprocess.preprocess_image(raw_dir / name, cfg)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8 and 20 < out.mean() < 200, name
    arr = preprocess.preprocess_image(full["drive_22_training.tif"], cfg)
    assert np.array_equal(arr, preprocess.preprocess_image(raw_dir / "drive_22_training.tif", cfg))
    gray16 = (cv2.cvtColor(full["chase_Image_01L.jpg"], cv2.COLOR_RGB2GRAY).astype(np.uint16)) * 257
    assert preprocess.preprocess_image(gray16, cfg).shape == (256, 256, 3)


def test_transforms_compose_match_functions_and_serialise(idrid: np.ndarray) -> None:
    import albumentations as A

    cfgs = [
        preprocess.PreprocessConfig(size=192, circle=True, clahe=True, ben_graham=True),
        preprocess.PreprocessConfig(size=160, framing=0.9, resize_mode="crop", ben_sigma=6.0, ben_graham=True),
    ]
    for cfg in cfgs:
        pipe = transforms.build_transform(cfg)
        assert isinstance(pipe, A.Compose)
        expected = preprocess.preprocess_array(idrid, cfg)
        assert np.array_equal(pipe(image=idrid)["image"], expected)
        restored = A.from_dict(A.to_dict(pipe))
        assert np.array_equal(restored(image=idrid)["image"], expected)
        assert np.array_equal(pickle.loads(pickle.dumps(pipe))(image=idrid)["image"], expected)
    # standalone use inside a user's Compose, with their own transforms around it
    mixed = A.Compose([transforms.CropRetina(tol=7), transforms.ResizeSquare(size=128, mode="pad"), A.HorizontalFlip(p=1.0)])
    out = mixed(image=idrid)["image"]
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out, preprocess.resize_square(preprocess.crop_retina(idrid), 128)[:, ::-1])
    bg = transforms.BenGraham(sigma=10)
    assert bg.get_transform_init_args() == {
        "sigma": 10,
        "sigma_frac": 1 / 30,
        "remask": True,
        "remask_frac": 0.9,
        "tol": 7,
    }
    assert "BenGraham" in repr(bg) and "sigma=10" in repr(bg)


def test_import_pulls_in_neither_torch_nor_albumentations() -> None:
    code = (
        "import sys, kaggle_utils.data.preprocess, kaggle_utils.data.cache; "
        "bad = [m for m in ('torch', 'albumentations') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_ben_look_is_recognised_on_real_photographs(shared_data: Path) -> None:
    """looks_ben_filtered on real images: the APTOS Ben copies and our own Ben output pass; natural-colour
    photographs of three cameras (IDRiD, EyePACS, the raw originals) and the equalised EyePACS do not."""
    from kaggle_utils.data.decode import read_image
    from kaggle_utils.data.preprocess import looks_ben_filtered, natural_recipe

    def some(folder: str, pattern: str, n: int) -> list[np.ndarray]:
        files = sorted((shared_data / folder).glob(pattern))
        return [read_image(f, 256) for f in files[:: max(1, len(files) // n)][:n]]

    copies = some("aptos2019_ben224/train_images", "*.jpg", 40)
    natural = (some("idrid_train/images", "*.jpg", 15) + some("eyepacs1024/images", "*", 15)
               + some("eyepacs256_equalised/images", "*", 10) + some("raw", "*.[jp][pn]g", 10))
    assert all(looks_ben_filtered(img) for img in copies)
    assert not any(looks_ben_filtered(img) for img in natural)
    recipe = natural_recipe(PreprocessConfig(size=128, crop=False, ben_graham=False, natural="ben"))
    assert all(looks_ben_filtered(preprocess_array(img, recipe)) for img in natural)


def test_natural_mode_filters_photographs_and_leaves_copies_alone(shared_data: Path) -> None:
    """A resize-only recipe with natural="ben" (the APTOS copy's, see assemble.SourceSpec.natural): a natural
    photograph gets the external-source recipe, a Ben copy is only resized; "as_is" resizes both."""
    from kaggle_utils.data.decode import read_image
    from kaggle_utils.data.preprocess import natural_recipe

    copy = read_image(next((shared_data / "aptos2019_ben224" / "train_images").glob("*.jpg")))
    photo = read_image(shared_data / "idrid_train" / "images" / "IDRiD_001.jpg")
    as_is = PreprocessConfig(size=96, crop=False, ben_graham=False, resize_mode="stretch")
    auto = dataclasses.replace(as_is, natural="ben")
    np.testing.assert_array_equal(preprocess_array(copy, auto), preprocess_array(copy, as_is))
    np.testing.assert_array_equal(preprocess_array(photo, auto), preprocess_array(photo, natural_recipe(auto)))
    assert not np.array_equal(preprocess_array(photo, auto), preprocess_array(photo, as_is))
    with pytest.raises(ValueError, match="natural"):
        PreprocessConfig(natural="clahe")
    assert PreprocessConfig.from_dict(auto.to_dict()) == auto


def test_natural_recipe_brings_photographs_nearer_the_ben_copy_look(shared_data: Path) -> None:
    """natural_recipe's blur (NATURAL_BEN_SIGMA_FRAC) gives IDRiD and natural EyePACS photographs band energies
    nearer the APTOS Ben copy's than the 2015 recipe's r/30 does (bench/look.py measures the whole sweep)."""
    from kaggle_utils.data.decode import read_image
    from kaggle_utils.data.preprocess import look_distance, natural_recipe

    def some(folder: str, pattern: str, n: int) -> list[np.ndarray]:
        files = sorted((shared_data / folder).glob(pattern))
        return [read_image(f, 512) for f in files[:: max(1, len(files) // n)][:n]]

    copy = some("aptos2019_ben224/train_images", "*.jpg", 20)
    recipe = natural_recipe(PreprocessConfig(size=224))
    r30 = dataclasses.replace(recipe, ben_sigma_frac=1 / 30)
    assert look_distance(copy, copy) == 0.0
    for folder, pattern in (("idrid_train/images", "*.jpg"), ("eyepacs1024/images", "*")):
        photos = some(folder, pattern, 12)
        ours = look_distance([preprocess_array(p, recipe) for p in photos], copy)
        old = look_distance([preprocess_array(p, r30) for p in photos], copy)
        assert ours < 0.75 * old, (folder, ours, old)
