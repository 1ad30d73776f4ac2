"""Fundus preprocessing: decode, retina crop, circle mask, Ben Graham, CLAHE, square resize.

Each step is a plain function on RGB uint8 arrays and, for training pipelines, an albumentations
``ImageOnlyTransform`` (``CropRetina``, ``StandardiseFraming``, ``ResizeSquare``, ``CircleCrop``, ``LabCLAHE``,
``BenGraham``). :class:`PreprocessConfig` names one recipe; :func:`preprocess_image` applies it to a file or
array and :func:`build_transform` returns the same recipe as an ``A.Compose``.

Importing this module imports neither albumentations nor torch (albumentations pulls in torch when it is
installed, ~4 s): the transform classes are created on first access, e.g. ``preprocess.CropRetina`` or
:func:`build_transform`. Call :func:`register_transforms` before ``A.from_dict`` on a saved pipeline.

Command line: ``python -m kaggle_utils.preprocess --source aptos --csv train.csv --images train_images
--out cache/aptos512 --size 512 [--ben] [--clahe] [--circle] [--workers N]`` caches a whole table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .io import dataclass_from_dict

try:  # optional (requirements.txt pins it): libpng + zlib-ng, ~1.6x faster than OpenCV's PNG decode
    from imagecodecs import png_decode as _png_decode
except ImportError:  # e.g. a Kaggle image without it: OpenCV decodes every PNG, same pixels
    _png_decode = None

__all__ = [
    "ImageReadError",
    "PreprocessConfig",
    "read_image",
    "decode_image",
    "png_decoder",
    "opencv_png",
    "retina_bbox",
    "retina_circle",
    "crop_retina",
    "circle_crop",
    "ben_graham",
    "apply_clahe",
    "resize_square",
    "standardise_framing",
    "preprocess_array",
    "preprocess_image",
    "build_transform",
    "register_transforms",
    "main",
]

RESIZE_MODES = ("pad", "crop", "stretch")
TRANSFORM_NAMES = ("CropRetina", "StandardiseFraming", "ResizeSquare", "CircleCrop", "LabCLAHE", "BenGraham")


class ImageReadError(ValueError):
    """An image file that cannot be turned into pixels; ``reason`` says why (missing, empty, truncated...)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive the trip back from a worker process
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------------- decoding

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
    (b"GIF8", "gif"),
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
)
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _sniff(data: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the JPEG frame header, without decoding; None if the header is odd."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _jpeg_truncated(data: bytes) -> bool:
    """True when no end-of-image marker follows the last start-of-scan.

    libjpeg decodes a truncated file into a grey-bottomed image with only a warning on stderr, so cv2 returns
    pixels; entropy-coded data cannot contain FFD9 or FFDA (0xFF is byte-stuffed), so this check is exact
    apart from a thumbnail's EOI, which sits before the main image's scans.
    """
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _reduction(height: int, width: int, target_size: int | None) -> int:
    """Largest libjpeg downscale (8, 4, 2) whose reduced short side still covers ``target_size``.

    The short side bounds the retina diameter (retinas are cut at top/bottom, never larger than the frame),
    so the retina keeps at least ``target_size`` pixels across and the final resize only ever shrinks.
    """
    if not target_size:
        return 1
    short = min(height, width)
    for factor in (8, 4, 2):
        if -(-short // factor) >= target_size:  # libjpeg rounds reduced sizes up
            return factor
    return 1


def _decode_png_fast(data: bytes) -> np.ndarray | None:
    """Plain PNGs (8/16-bit gray, RGB or RGBA; not interlaced; no tRNS) via imagecodecs, as RGB(A)/gray.

    APTOS images are 3216x2136 PNGs whose decode is nearly all of their preprocessing time: OpenCV's wheel
    inflates with zlib 1.2.11, imagecodecs' libpng with zlib-ng (and it releases the GIL, so threaded loaders
    still overlap). Pixel-identical to OpenCV (tested). None means "let OpenCV do it": imagecodecs missing,
    a rarer PNG flavour, or a decode error (OpenCV then reports the file the usual way).
    """
    if _png_decode is None or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    depth, colour, interlace = data[24], data[25], data[28]
    if depth not in (8, 16) or colour not in (0, 2, 6) or interlace:
        return None
    idat = data.find(b"IDAT", 33)
    if idat < 0 or (colour != 6 and data.find(b"tRNS", 33, idat) >= 0):
        return None
    try:
        return _png_decode(data)
    except Exception:  # noqa: BLE001 - any failure: fall back to OpenCV and its error reporting
        return None


def png_decoder() -> str:
    """Which library decodes plain PNGs here (benchmarks and plans print it)."""
    if _png_decode is None:
        return "OpenCV"
    import imagecodecs

    return f"imagecodecs {imagecodecs.__version__}"


@contextlib.contextmanager
def opencv_png() -> Iterator[None]:
    """Decode every PNG with OpenCV inside the block, as where imagecodecs is missing (e.g. for timings)."""
    global _png_decode
    saved, _png_decode = _png_decode, None
    try:
        yield
    finally:
        _png_decode = saved


def _to_rgb8(img: np.ndarray, name: str | os.PathLike, order: str = "bgr") -> np.ndarray:
    """A decoded image (BGR/BGRA as OpenCV gives, RGB/RGBA with ``order="rgb"``, or gray; 8/16-bit/float)
    -> RGB uint8; alpha is composited on black."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
    elif img.dtype.kind == "f":
        img = np.nan_to_num(img.astype(np.float32))
        scale = 255.0 if float(img.max(initial=0.0)) <= 1.0 else 1.0
        img = np.clip(img * scale + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        info = np.iinfo(img.dtype)
        img = np.clip(img.astype(np.float64) * (255.0 / info.max) + 0.5, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    rgb_in = order == "rgb"
    if channels == 4:
        alpha = img[:, :, 3]
        rgb = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB if rgb_in else cv2.COLOR_BGRA2RGB)
        if int(alpha.min()) == 255:
            return rgb
        return cv2.multiply(rgb, cv2.merge([alpha, alpha, alpha]), scale=1.0 / 255.0)
    if channels == 3:
        return np.ascontiguousarray(img) if rgb_in else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageReadError(name, f"unsupported number of channels: {channels}")


def decode_image(
    data: bytes, target_size: int | None = None, name: str | os.PathLike = "<bytes>"
) -> np.ndarray:
    """Encoded bytes -> RGB uint8; see :func:`read_image`. ``name`` only labels errors."""
    if not data:
        raise ImageReadError(name, "zero-byte file")
    kind = _sniff(data)
    buf = np.frombuffer(data, np.uint8)
    try:
        if kind == "jpeg":
            if _jpeg_truncated(data):
                raise ImageReadError(name, "truncated JPEG (no end-of-image marker after the last scan)")
            size = _jpeg_size(data)
            factor = _reduction(*size, target_size) if size else 1
            img = cv2.imdecode(buf, _REDUCED_FLAGS[factor])
        elif kind == "png" and (fast := _decode_png_fast(data)) is not None:
            return _to_rgb8(fast, name, order="rgb")
        else:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(name, f"OpenCV failed to decode {kind or 'file'}: {exc.err or exc}") from exc
    if img is None or img.size == 0:
        if kind:
            raise ImageReadError(name, f"corrupt {kind.upper()} data: OpenCV could not decode it")
        raise ImageReadError(name, f"not an image format OpenCV can decode (file starts with {data[:12]!r})")
    return _to_rgb8(img, name)


def read_image(path: str | os.PathLike, target_size: int | None = None) -> np.ndarray:
    """Read any image OpenCV understands as RGB uint8 (H, W, 3).

    Bytes are read in Python and decoded with ``cv2.imdecode`` (unicode paths work). With ``target_size``,
    JPEGs are decoded at 1/2, 1/4 or 1/8 scale inside libjpeg when the reduced short side stays
    >= ``target_size`` (about 5x faster for 4288x2848 originals; other formats decode at full size).
    Plain PNGs go through imagecodecs when it is installed (same pixels, ~1.6x faster; see
    :func:`_decode_png_fast`).
    Grayscale -> 3 channels, RGBA -> composited on black, 16-bit/float -> 8-bit.
    Raises :class:`ImageReadError` for missing, empty, truncated, corrupt or non-image files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file: {exc.strerror or exc}") from None
    return decode_image(data, target_size=target_size, name=path)


# ----------------------------------------------------------------------------------------- retina geometry

BBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def retina_bbox(img: np.ndarray, tol: float = 7, work_size: int = 256) -> BBox | None:
    """Bounding box (x0, y0, x1, y1) of the retina, or None when there is no bright region.

    Works on a ~``work_size`` px strided subsample (~1 ms at any resolution), median-filtered so isolated
    JPEG noise in the black border cannot widen the box. The threshold is ``tol`` above the border's own black level (DRIVE's border is ~8, not 0).
    Only the large connected bright regions count, so text labels and specks are ignored; the box is then
    grown by one work pixel on each side, so it never cuts into the retina.
    """
    h, w = img.shape[:2]
    step = max(1, max(h, w) // work_size)
    if img.ndim == 2:
        gray = np.ascontiguousarray(img[::step, ::step])
    else:  # numpy copies one strided channel ~5x faster than a strided (h, w, 3) block
        small = cv2.merge([np.ascontiguousarray(img[::step, ::step, c]) for c in range(img.shape[2])])
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small
    gray = cv2.medianBlur(gray, 3)
    ring = np.concatenate([gray[:2].ravel(), gray[-2:].ravel(), gray[:, :2].ravel(), gray[:, -2:].ravel()])
    dark = ring[ring < 40]
    black = float(np.median(dark)) if dark.size >= 0.05 * ring.size else 0.0
    mask = (gray > black + tol).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.max() < 0.02 * mask.size:
        return None
    keep = stats[1:][areas >= 0.25 * areas.max()]
    sx0 = int(keep[:, cv2.CC_STAT_LEFT].min())
    sy0 = int(keep[:, cv2.CC_STAT_TOP].min())
    sx1 = int((keep[:, cv2.CC_STAT_LEFT] + keep[:, cv2.CC_STAT_WIDTH]).max())
    sy1 = int((keep[:, cv2.CC_STAT_TOP] + keep[:, cv2.CC_STAT_HEIGHT]).max())
    sh, sw = gray.shape
    x0 = max(0, (sx0 - 1) * step)
    y0 = max(0, (sy0 - 1) * step)
    x1 = w if sx1 >= sw else min(w, (sx1 + 1) * step)
    y1 = h if sy1 >= sh else min(h, (sy1 + 1) * step)
    return x0, y0, x1, y1


def retina_circle(img: np.ndarray, tol: float = 7, bbox: BBox | None = None) -> tuple[float, float, float]:
    """Estimated retina circle (cx, cy, r) in pixels.

    The radius comes from the longer side of the retina box, i.e. from its width when the photograph cuts the
    retina off at top and bottom (APTOS/IDRiD framing). A box touching one edge only is a circle cut on that
    side, so its centre is one radius from the opposite edge. No retina found: the inscribed circle.
    """
    h, w = img.shape[:2]
    box = bbox if bbox is not None else retina_bbox(img, tol)
    if box is None:
        return w / 2, h / 2, min(h, w) / 2
    x0, y0, x1, y1 = box
    r = max(x1 - x0, y1 - y0) / 2

    def centre(lo: int, hi: int, limit: int) -> float:
        if hi - lo >= 2 * r * 0.98:  # full extent on this axis
            return (lo + hi) / 2
        if lo == 0 and hi < limit:
            return hi - r
        if hi == limit and lo > 0:
            return lo + r
        return (lo + hi) / 2

    return centre(x0, x1, w), centre(y0, y1, h), r


def _circle_mask(shape: tuple[int, ...], cx: float, cy: float, r: float) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    shift = 4  # sub-pixel centre and radius
    cv2.circle(mask, (round(cx * 16), round(cy * 16)), max(1, round(r * 16)), 255, -1, cv2.LINE_8, shift)
    return mask


# -------------------------------------------------------------------------------------------- image steps


def crop_retina(img: np.ndarray, tol: float = 7) -> np.ndarray:
    """Cut the black border around the retina (a view, no copy); the input itself if no retina is found.

    Unlike the public kernels' ``img[mask.any(1)][:, mask.any(0)]`` this ignores border noise and labels and
    costs ~1 ms at any resolution (see :func:`retina_bbox`).
    """
    box = retina_bbox(img, tol)
    if box is None:
        return img
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def circle_crop(img: np.ndarray, tol: float = 7, radius_frac: float = 1.0, fill: int = 0) -> np.ndarray:
    """Set everything outside the (estimated) retina circle to ``fill``; same shape as the input."""
    cx, cy, r = retina_circle(img, tol)
    mask = _circle_mask(img.shape, cx, cy, r * radius_frac)
    return cv2.copyTo(img, mask, np.full_like(img, fill))


def ben_graham(
    img: np.ndarray,
    sigma: float | None = None,
    sigma_frac: float = 1 / 30,
    remask: bool = True,
    remask_frac: float = 0.9,
    tol: float = 7,
) -> np.ndarray:
    """Ben Graham's local-contrast normalisation: ``4*img - 4*GaussianBlur(img, sigma) + 128``, clipped.

    ``sigma`` defaults to ``sigma_frac`` x retina radius: his 2015 recipe used radius 300 px and sigma 10
    (= r/30), so a 512 px retina gets sigma ~8.5 (pass ``sigma=10`` for the APTOS kernels' fixed value).
    ``remask`` greys (128) everything outside ``remask_frac`` x radius, hiding the bright ring the blur
    leaves at the retina edge, as in the original recipe; where the photograph cuts the retina off (top and
    bottom), the straight edge is pulled in by the same margin, since the blur rings there too.
    """
    box = retina_bbox(img, tol)
    cx, cy, r = retina_circle(img, tol, bbox=box)
    if sigma is None:
        sigma = max(0.5, sigma_frac * r)
    blur = cv2.GaussianBlur(img, (0, 0), sigma)
    out = cv2.addWeighted(img, 4.0, blur, -4.0, 128.0)
    if remask:
        mask = _circle_mask(img.shape, cx, cy, r * remask_frac)
        if box is not None:
            margin = round(r * (1 - remask_frac))
            x0, y0, x1, y1 = box
            mask[: y0 + margin] = 0
            mask[max(0, y1 - margin) :] = 0
            mask[:, : x0 + margin] = 0
            mask[:, max(0, x1 - margin) :] = 0
        out = cv2.copyTo(out, mask, np.full_like(out, 128))
    return out


def apply_clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """CLAHE on the L channel of LAB: local contrast up, colours (lesion hue) untouched."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink by block averaging (integer INTER_AREA fast path) then bilinear; upscale bicubic.

    Bilinear alone aliases beyond 2x; INTER_AREA at a non-integer ratio is ~6x slower than this combination.
    """
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(img)
    factor = int(min(w / width, h / height))
    if factor >= 2:
        hh, ww = h // factor * factor, w // factor * factor
        img = cv2.resize(img[:hh, :ww], (ww // factor, hh // factor), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
    interp = cv2.INTER_LINEAR if w >= width and h >= height else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


def resize_square(img: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """Square ``size`` x ``size`` image.

    ``pad``: fit the long side and pad the short one with black (no retina lost, aspect kept);
    ``crop``: centre-crop to the short side first (cut retinas fill the frame); ``stretch``: plain resize,
    as most public kernels do (distorts cut retinas).
    """
    h, w = img.shape[:2]
    if mode == "stretch":
        return _resize(img, size, size)
    if mode == "crop":
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        return _resize(img[y0 : y0 + side, x0 : x0 + side], size, size)
    if mode != "pad":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = size / max(h, w)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    small = _resize(img, nw, nh)
    out = np.zeros((size, size) + img.shape[2:], img.dtype)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out


def standardise_framing(img: np.ndarray, factor: float = 1.0, tol: float = 7) -> np.ndarray:
    """Square crop centred on the retina circle, side = ``factor`` x diameter, padded black where needed.

    Makes every source framed alike: with ``factor=1`` a retina cut at top/bottom gets black caps and a
    full circle fits exactly; with ``factor`` ~0.85 full circles are cut like the APTOS/IDRiD ones.
    """
    cx, cy, r = retina_circle(img, tol)
    side = max(1, round(2 * r * factor))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = img.shape[:2]
    out = np.zeros((side, side) + img.shape[2:], img.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


# ------------------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """One preprocessing recipe; saved beside a cache as preprocess.json so a cache knows how it was made.

    Order: decode -> crop_retina (or standardise_framing when ``framing`` is set) -> resize_square ->
    circle_crop -> CLAHE -> Ben Graham.
    """

    size: int = 512
    crop: bool = True
    crop_tol: float = 7
    framing: float | None = None  # standardise_framing factor; None = off
    resize_mode: str = "pad"
    circle: bool = False
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    ben_graham: bool = False
    ben_sigma: float | None = None  # None: ben_sigma_frac x retina radius
    ben_sigma_frac: float = 1 / 30
    ben_remask: bool = True
    reduced_decode: bool = True  # libjpeg 1/2-1/8 scale decode when the size allows

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 8:
            raise ValueError(f"PreprocessConfig.size must be an int >= 8, got {self.size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"PreprocessConfig.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}"
            )
        if self.framing is not None and not self.framing > 0:
            raise ValueError(f"PreprocessConfig.framing must be > 0 or None, got {self.framing!r}")
        if self.ben_sigma is not None and not self.ben_sigma > 0:
            raise ValueError(f"PreprocessConfig.ben_sigma must be > 0 or None, got {self.ben_sigma!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are an error."""
        return dataclass_from_dict(cls, data)


def _as_config(cfg: PreprocessConfig | dict[str, Any] | None) -> PreprocessConfig:
    if cfg is None:
        return PreprocessConfig()
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_dict(cfg)


def preprocess_array(img: np.ndarray, cfg: PreprocessConfig | dict[str, Any] | None = None) -> np.ndarray:
    """Apply ``cfg`` to an RGB array (gray or 16-bit are converted first); returns uint8 size x size x 3."""
    cfg = _as_config(cfg)
    if img.dtype != np.uint8 or img.ndim == 2 or img.shape[2] != 3:
        if img.ndim == 3 and img.shape[2] in (3, 4):  # RGB(A) -> the BGR(A) order _to_rgb8 expects
            img = img[:, :, [2, 1, 0, 3][: img.shape[2]]]
        img = _to_rgb8(np.ascontiguousarray(img), "<array>")
    if cfg.framing is not None:
        img = standardise_framing(img, cfg.framing, cfg.crop_tol)
    elif cfg.crop:
        img = crop_retina(img, cfg.crop_tol)
    img = resize_square(img, cfg.size, cfg.resize_mode)
    if cfg.circle:
        img = circle_crop(img, cfg.crop_tol)
    if cfg.clahe:
        img = apply_clahe(img, cfg.clahe_clip, cfg.clahe_grid)
    if cfg.ben_graham:
        img = ben_graham(img, cfg.ben_sigma, cfg.ben_sigma_frac, cfg.ben_remask, tol=cfg.crop_tol)
    return img


def preprocess_image(
    path_or_array: str | os.PathLike | np.ndarray, cfg: PreprocessConfig | dict[str, Any] | None = None
) -> np.ndarray:
    """Read (reduced-scale when allowed) and preprocess one image; uint8 RGB ``cfg.size`` square."""
    cfg = _as_config(cfg)
    if isinstance(path_or_array, np.ndarray):
        img = path_or_array
    else:
        img = read_image(path_or_array, cfg.size if cfg.reduced_decode else None)
    return preprocess_array(img, cfg)


# ----------------------------------------------------------------------------- albumentations transforms


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

    cfg = _as_config(cfg)
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


# --------------------------------------------------------------------------------------------------- CLI


def _load_table(args: argparse.Namespace) -> tuple[Any, Any]:
    """(table, rows the source reader dropped with reasons, or None)."""
    import warnings

    import pandas as pd

    from kaggle_utils import sources  # lazy: only the CLI needs the readers

    if args.table:
        if not Path(args.table).is_file():
            raise SystemExit(f"error: --table {args.table} not found")
        table = pd.read_csv(args.table, dtype=str, keep_default_na=False, na_values=[""])
        missing = {"id", "path"} - set(table.columns)
        if missing:
            raise SystemExit(
                f"error: --table {args.table} lacks column(s) {sorted(missing)} (need id,path[,grade])"
            )
        if table["id"].isna().any():
            lines = [int(i) + 2 for i in table.index[table["id"].isna()][:10]]
            raise SystemExit(f"error: --table {args.table}: rows without an id at CSV line(s) {lines}")
        dup = table["id"][table["id"].duplicated()]
        if len(dup):
            raise SystemExit(f"error: --table {args.table}: {dup.nunique()} id(s) repeat: {sorted(set(dup))[:10]}")
        if "grade" in table.columns:  # blank = unlabelled (kept); anything but an integer 0-4 is an error
            grades, problems = sources._parse_grades(table["grade"], table.index)
            if problems:
                bad = [f"{table.at[i, 'id']}={table.at[i, 'grade']!r}" for i in list(problems)[:10]]
                more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
                raise SystemExit(f"error: --table {args.table}: {len(problems)} grade(s) not an integer 0-4: "
                                 f"{', '.join(bad)}{more}")
            table["grade"] = grades
        return table, None
    if not (args.source and args.csv and args.images):
        raise SystemExit("error: give --table table.csv, or --source with --csv and --images")
    extra = {k: v for k in ("id_col", "grade_col", "path_col", "ext") if (v := getattr(args, k)) is not None}
    # "skip" so one missing image does not stop a 35k-image run; the dropped rows count as failures below
    # (source_report.csv lists them, so the reader's "pass return_report=True" hint is not for CLI users).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sources.SourceWarning)
            return sources.load_source(
                args.source, csv=args.csv, image_dir=args.images, on_error="skip", return_report=True, **extra
            )
    except sources.SourceError as err:
        raise SystemExit(f"error: {str(err).splitlines()[0]}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Preprocess a whole table into a cache (and, with --folds N, write duplicate-aware folds.csv for training).
    Exit status 0 when every row was cached, 1 if any image failed or a label row was skipped (the summary line
    counts both), 2 on a usage, input or config-clash error (one `error:` line)."""
    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.preprocess", description=main.__doc__)
    src = parser.add_argument_group("input (either --table, or --source/--csv/--images)")
    src.add_argument("--source", choices=["aptos", "eyepacs", "idrid", "messidor", "generic"])
    src.add_argument("--csv", help="label CSV of the source")
    src.add_argument("--images", help="image folder of the source")
    src.add_argument("--id-col", help="generic source: id column")
    src.add_argument("--grade-col", help="generic source: grade column")
    src.add_argument("--path-col", help="generic source: image path column")
    src.add_argument("--ext", help="image extension when paths are built from ids (e.g. .png)")
    src.add_argument("--table", help="CSV with id,path[,grade,source] columns instead of a source reader")
    parser.add_argument("--out", required=True, help="cache folder (images/, manifest.csv, preprocess.json)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="pad")
    parser.add_argument("--no-crop", action="store_true", help="keep the black border")
    parser.add_argument("--framing", type=float, default=None, help="standardise_framing factor (e.g. 1.0)")
    parser.add_argument("--circle", action="store_true", help="mask outside the retina circle")
    parser.add_argument("--clahe", action="store_true", help="CLAHE on the L channel")
    parser.add_argument("--ben", action="store_true", help="Ben Graham local-contrast normalisation")
    parser.add_argument("--ben-sigma", type=float, default=None, help="fixed blur sigma (default: radius/30)")
    parser.add_argument("--full-decode", action="store_true", help="no reduced-scale JPEG decoding")
    parser.add_argument("--format", choices=["png", "jpg"], default="png", help="cache image format")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--force", action="store_true", help="discard a cache made with another config")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--folds", type=int, metavar="N",
                        help="also write OUT/folds.csv: N grade-stratified folds, duplicate images kept together")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed (default %(default)s)")
    args = parser.parse_args(argv)
    if args.folds is not None and args.folds < 2:
        parser.error("--folds needs N >= 2")

    from kaggle_utils import cache
    from kaggle_utils.io import write_csv

    cfg = PreprocessConfig(
        size=args.size,
        crop=not args.no_crop,
        framing=args.framing,
        resize_mode=args.resize_mode,
        circle=args.circle,
        clahe=args.clahe,
        ben_graham=args.ben,
        ben_sigma=args.ben_sigma,
        reduced_decode=not args.full_decode,
    )
    try:
        table, dropped = _load_table(args)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 2
    try:
        manifest = cache.build_cache(
            table,
            args.out,
            cfg,
            workers=args.workers,
            force=args.force,
            fmt=args.format,
            progress=not args.no_progress,
        )
    except cache.CacheError as exc:  # config clash, unusable table (e.g. ids that clash as file names)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = manifest[manifest["status"] != "ok"]
    for row in failed.head(20).itertuples():
        print(f"failed: {row.id} ({row.path}): {row.reason}", file=sys.stderr)
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more failures", file=sys.stderr)
    n_dropped = 0 if dropped is None else int(dropped["row"].nunique() if "row" in dropped else len(dropped))
    if n_dropped:
        report = Path(args.out) / "source_report.csv"
        write_csv(report, dropped)
        print(
            f"source reader skipped {n_dropped} label row(s) ({len(dropped)} problem(s): missing/bad images or labels): see {report}",
            file=sys.stderr,
        )
    folds_note = ""
    if args.folds:
        try:
            folds_note = _write_folds(args.out, args.folds, args.seed, args.workers, not args.no_progress)
        except ValueError as exc:
            print(f"{cache.summary_line(manifest, args.out)}; no folds.csv", file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 2
    skipped = f"; {n_dropped} label row(s) skipped" if n_dropped else ""
    status = 1 if len(failed) or n_dropped else 0
    print(f"{cache.summary_line(manifest, args.out)}{skipped}{folds_note}"
          + ("" if status == 0 else f" (exit status {status})"))
    return status


def _write_folds(out: str, n_folds: int, seed: int, workers: int | None, progress: bool) -> str:
    """``out/folds.csv`` from the cached (ok) rows with grades, duplicate groups found on the cached images."""
    from kaggle_utils import cache, folds

    cached = cache.load_cache(out)
    labelled = cached[cached["grade"].notna()].reset_index(drop=True)
    if len(labelled) < n_folds:
        raise ValueError(f"only {len(labelled)} labelled image(s) cached: too few for {n_folds} folds")
    table = folds.add_duplicate_groups(labelled, path_col="cache_path", workers=workers, progress=progress)
    table = folds.make_folds(table, n_folds=n_folds, seed=seed)
    path = folds.write_folds(table, Path(out) / "folds.csv")
    return f"; {n_folds} folds: {path}"


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s copy: cache.py checks isinstance(cfg, PreprocessConfig)
    # against kaggle_utils.preprocess, and worker processes unpickle from there too.
    from kaggle_utils.preprocess import main as _main

    sys.exit(_main())
