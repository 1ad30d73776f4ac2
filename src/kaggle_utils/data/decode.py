"""Decoding fundus files of any camera and format into RGB uint8 arrays.

The format is sniffed from the bytes (not the extension); large JPEGs decode at a reduced libjpeg scale when a
target size allows it; truncated files and unknown formats raise :class:`ImageReadError` with the reason.
PNGs go through imagecodecs when installed (same pixels as OpenCV, faster).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

try:  # optional (requirements.txt pins it): libpng + zlib-ng, ~1.6x faster than OpenCV's PNG decode
    from imagecodecs import png_decode as _png_decode
except ImportError:  # e.g. a Kaggle image without it: OpenCV decodes every PNG, same pixels
    _png_decode = None


class ImageReadError(ValueError):
    """An image file that cannot be turned into pixels; ``reason`` says why (missing, empty, truncated...)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive the trip back from a worker process
        return (type(self), (self.path, self.reason))



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


def to_rgb8(img: np.ndarray, name: str | os.PathLike, order: str = "bgr") -> np.ndarray:
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
            return to_rgb8(fast, name, order="rgb")
        else:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(name, f"OpenCV failed to decode {kind or 'file'}: {exc.err or exc}") from exc
    if img is None or img.size == 0:
        if kind:
            raise ImageReadError(name, f"corrupt {kind.upper()} data: OpenCV could not decode it")
        raise ImageReadError(name, f"not an image format OpenCV can decode (file starts with {data[:12]!r})")
    return to_rgb8(img, name)


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
