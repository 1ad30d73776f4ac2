"""Fundus preprocessing operations: retina crop, circle mask, Ben Graham, CLAHE, square resize.

Each step is a plain function on RGB uint8 arrays; :mod:`kaggle_utils.data.transforms` wraps the same
functions as albumentations transforms. :class:`PreprocessConfig` names one recipe; :func:`preprocess_image`
decodes a file (:mod:`kaggle_utils.data.decode`) and applies it. Importing this imports neither albumentations
nor torch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from kaggle_utils.data.decode import read_image, to_rgb8
from kaggle_utils.io import dataclass_from_dict

__all__ = [
    "PreprocessConfig",
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
    "looks_ben_filtered",
    "natural_recipe",
]

RESIZE_MODES = ("pad", "crop", "stretch")
NATURAL_MODES = ("as_is", "ben")


BEN_MAX_OFFSET = 40.0  # looks_ben_filtered's limits (grey levels), measured on ../shared/data
BEN_MAX_LOW_FREQ = 8.0
# Ben Graham's blur as a share of the retina radius when a natural photograph is brought to the APTOS Ben
# copy's look (``natural_recipe``). The copy was filtered before it was shrunk to 224 px, so at 224 its
# high-pass keeps finer detail than the 2015 recipe's r/30: the band energies of its centre (look_distance)
# sit nearest IDRiD's at r/48 and natural EyePACS's at r/56 (bench/look.py). On both left-out guards
# (docs/recipes.md) r/40 lifts referable AUC and QWK over r/30 and keeps the mean grade within 0.15 of the
# truth; finer blurs lift EyePACS AUC a little more but push both guards' grades up by 0.1-0.35.
NATURAL_BEN_SIGMA_FRAC = 1 / 40

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
    # For a recipe of already Ben-filtered copies (resize only): "ben" brings a natural-colour photograph that
    # does not look filtered (:func:`looks_ben_filtered`) to that look first (crop, stretch, Ben Graham), so a
    # model trained on the APTOS copy grades a clinic's own photographs; "as_is" uses every input as it is.
    natural: str = "as_is"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 8:
            raise ValueError(f"PreprocessConfig.size must be an int >= 8, got {self.size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"PreprocessConfig.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}"
            )
        if self.framing is not None and not self.framing > 0:
            raise ValueError(f"PreprocessConfig.framing must be > 0 or None, got {self.framing!r}")
        if self.natural not in NATURAL_MODES:
            raise ValueError(f"PreprocessConfig.natural must be one of {NATURAL_MODES}, got {self.natural!r}")
        if self.ben_sigma is not None and not self.ben_sigma > 0:
            raise ValueError(f"PreprocessConfig.ben_sigma must be > 0 or None, got {self.ben_sigma!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are an error."""
        return dataclass_from_dict(cls, data)


def as_config(cfg: PreprocessConfig | dict[str, Any] | None) -> PreprocessConfig:
    if cfg is None:
        return PreprocessConfig()
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_dict(cfg)


def looks_ben_filtered(img: np.ndarray, max_offset: float = BEN_MAX_OFFSET, max_low_freq: float = BEN_MAX_LOW_FREQ
                       ) -> bool:
    """Whether an RGB image is already in Ben Graham's look: its central region sits near grey 128 in every
    channel and carries almost no low-frequency light (illumination and colour are what the filter removes).

    Measured on ../shared/data (the medians of the central half, and the std of the grey image blurred at 1/16
    of its side): all 2,929 APTOS Ben copies pass (offset <= 32, low-frequency std <= 4.9); 0 of 413 IDRiD, 1
    of 810 natural EyePACS and 0 of 2,558 equalised EyePACS photographs do (natural low-frequency std >= 3.2
    but never together with an offset under 40 but that one).
    """
    h, w = img.shape[:2]
    step = max(1, max(h, w) // 128)
    small = np.ascontiguousarray(img[::step, ::step])
    sh, sw = small.shape[:2]
    centre = (slice(sh // 4, 3 * sh // 4), slice(sw // 4, 3 * sw // 4))
    offset = np.abs(np.median(small[centre].reshape(-1, 3), axis=0) - 128.0).max()
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    low = cv2.GaussianBlur(gray, (0, 0), max(2.0, sh / 16))[centre].std()
    return bool(offset <= max_offset and low <= max_low_freq)


def band_energies(img: np.ndarray, scales: tuple[float, ...] = (1, 2, 4, 8, 16)) -> np.ndarray:
    """The look of an image as the std of its central half's grey level between successive Gaussian blurs
    (0-1, 1-2, 2-4, 4-8, 8-16 px at the default scales): how much fine and mid-scale contrast it carries, which is
    what Ben Graham's blur size sets. Compare at the model's size."""
    gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = gray.shape
    centre = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    blurs = [gray, *(cv2.GaussianBlur(gray, (0, 0), float(s)) for s in scales)]
    return np.array([(a - b)[centre].std() for a, b in zip(blurs[:-1], blurs[1:], strict=True)])


def look_distance(images: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """RMS log-ratio of two image sets' median band energies, the finest band left out (JPEG noise lives
    there): 0 when they carry the same contrast at every scale, 0.69 when one has twice the other's."""
    a = np.median([band_energies(i) for i in images], axis=0)[1:]
    b = np.median([band_energies(i) for i in reference], axis=0)[1:]
    return float(np.sqrt(np.mean(np.log(np.maximum(a, 1e-6) / np.maximum(b, 1e-6)) ** 2)))


def natural_recipe(cfg: PreprocessConfig) -> PreprocessConfig:
    """How a natural-colour photograph is brought to the APTOS Ben copy's look at ``cfg``'s size: retina crop,
    stretched to the square, Ben Graham with the copy's fine blur (``NATURAL_BEN_SIGMA_FRAC``)."""
    return dataclasses.replace(cfg, crop=True, framing=None, resize_mode="stretch", circle=False, clahe=False,
                               ben_graham=True, ben_sigma=None, ben_sigma_frac=NATURAL_BEN_SIGMA_FRAC,
                               natural="as_is")


def preprocess_array(img: np.ndarray, cfg: PreprocessConfig | dict[str, Any] | None = None) -> np.ndarray:
    """Apply ``cfg`` to an RGB array (gray or 16-bit are converted first); returns uint8 size x size x 3."""
    cfg = as_config(cfg)
    if img.dtype != np.uint8 or img.ndim == 2 or img.shape[2] != 3:
        if img.ndim == 3 and img.shape[2] in (3, 4):  # RGB(A) -> the BGR(A) order to_rgb8 expects
            img = img[:, :, [2, 1, 0, 3][: img.shape[2]]]
        img = to_rgb8(np.ascontiguousarray(img), "<array>")
    if cfg.natural == "ben" and not looks_ben_filtered(img):
        cfg = natural_recipe(cfg)
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
    cfg = as_config(cfg)
    if isinstance(path_or_array, np.ndarray):
        img = path_or_array
    else:
        img = read_image(path_or_array, cfg.size if cfg.reduced_decode else None)
    return preprocess_array(img, cfg)
