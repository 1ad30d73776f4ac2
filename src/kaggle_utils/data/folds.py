"""Duplicate-aware, grade-stratified cross-validation folds.

Fundus datasets contain the same photograph more than once: APTOS 2019 train has resized/re-encoded copies
(some graded differently) and our IDRiD copy has five byte-identical pairs under different ids, two of them
with different DR grades. A copy in train and another in validation inflates CV, so copies are found with a
perceptual hash and kept in one fold by ``StratifiedGroupKFold``.

Why a 256-bit pHash and not the classic 64-bit one: every fundus photo is a bright disc on black, so the 8x8
lowest DCT frequencies barely differ between photos. On the 413 IDRiD images the classic hash puts distinct
photographs at Hamming distance 0 while copies reach 4. The 16x16 block (255 bits, DC dropped) of the
border-cropped image puts copies (resize 0.3-1x, JPEG q50-95 or PNG, brightening up to x1.12/+12, and the
4288 px originals vs our 1024 px copies) at <= 12 and distinct photographs at >= 40, except two different
shots of one eye (IDRiD 013/397) at 26. Default threshold 20: a margin of 8 above copies, 6 below that pair.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold
from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

from kaggle_utils.io import TEXT_COLUMNS, read_csv, write_csv

log = logging.getLogger(__name__)

HASH_SIZE = 16  # 16x16 low-frequency DCT block of a 64x64 image -> 255 bits (DC dropped)
DEFAULT_MAX_DISTANCE = 20  # copies measured <= 12, distinct IDRiD photographs >= 26 (see module docstring)
DECODE_MIN_SIDE = 256  # decode at the coarsest libjpeg scale that keeps this many pixels on the short side
HASH_COLUMN = "image_hash"
GROUP_COLUMN = "dup_group"

Method = Literal["phash", "dhash"]
ImageLike = str | os.PathLike | np.ndarray


_REDUCED_FLAGS = (
    (8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
    (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    (1, cv2.IMREAD_GRAYSCALE),
)


class HashError(ValueError):
    """An image that cannot be decoded for hashing; the message names the file."""


class FoldWarning(UserWarning):
    """Duplicate groups whose members carry different grades (they are kept together, not fixed)."""


# -------------------------------------------------------------------------------------------- hashing


def load_gray(path: str | os.PathLike, min_side: int = DECODE_MIN_SIDE) -> np.ndarray:
    """8-bit grayscale, decoded at the coarsest JPEG scale (1/8, 1/4, 1/2) keeping ``min_side`` pixels.

    A 4288x2848 JPEG decodes at 1/8 in a few ms. Other formats cannot be decoded reduced: plain decode.
    """
    path = str(path)
    try:
        with open(path, "rb") as fh:
            is_jpeg = fh.read(2) == b"\xff\xd8"
    except OSError as e:
        raise HashError(f"cannot read image {path}: {e}") from e
    gray = cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8 if is_jpeg else cv2.IMREAD_GRAYSCALE)
    if is_jpeg and gray is not None:
        full_side = min(gray.shape) * 8
        for factor, flag in _REDUCED_FLAGS:
            if full_side // factor >= min_side or factor == 1:
                if factor != 8:
                    gray = cv2.imread(path, flag)
                break
    if gray is None or gray.size == 0:
        raise HashError(f"cannot decode image {path} (corrupt or not an image)")
    return gray


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB/RGBA/gray array (the package's RGB convention) of any depth -> 8-bit gray."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:  # floats in [0, 1] or [0, 255]
        img = img.astype(np.float64) * (255.0 if img.size and img.max() <= 1.0 else 1.0)
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    if img.ndim != 2 or img.size == 0:
        raise HashError(f"expected a non-empty HxW or HxWxC image, got shape {img.shape}")
    return img


def crop_dark_border(
    gray: np.ndarray, rel: float = 0.1, min_level: float = 8.0, min_fill: float = 0.02
) -> np.ndarray:
    """Bounding box of the retina: rows/columns with > ``min_fill`` of pixels brighter than the dark level.

    The threshold is relative to the image (1st/99th percentiles), so a brightened copy crops to the same box;
    copies differing only by black padding or border crop then hash alike. No border found: image unchanged.
    """
    # 1st/99th percentiles from the uint8 histogram: 20x faster than np.percentile
    cdf = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    lo, hi = np.searchsorted(cdf, (0.01 * cdf[-1], 0.99 * cdf[-1]))
    mask = gray > lo + max(min_level, rel * (hi - lo))
    rows = np.flatnonzero(mask.mean(axis=1) > min_fill)
    cols = np.flatnonzero(mask.mean(axis=0) > min_fill)
    if len(rows) < max(8, 0.1 * gray.shape[0]) or len(cols) < max(8, 0.1 * gray.shape[1]):
        return gray
    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _prepare(image: np.ndarray, size: tuple[int, int], crop: bool) -> np.ndarray:
    gray = to_gray(image)
    if crop:
        gray = crop_dark_border(gray)
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def phash(image: np.ndarray, hash_size: int = HASH_SIZE, crop: bool = True) -> np.ndarray:
    """DCT hash: ``hash_size``² lowest frequencies of a (4·hash_size)² image, DC dropped, > median.

    Returns packed bits (uint8, ``ceil((hash_size² - 1) / 8)`` bytes). ``hash_size=8`` is the classic
    32x32 -> 64-bit pHash (too coarse for fundus photos, see the module docstring).
    """
    n = 4 * hash_size
    coeffs = cv2.dct(_prepare(image, (n, n), crop))[:hash_size, :hash_size].ravel()[1:]
    return np.packbits(coeffs > np.median(coeffs))


def dhash(image: np.ndarray, hash_size: int = HASH_SIZE, crop: bool = True) -> np.ndarray:
    """Gradient hash: sign of horizontal differences of a (hash_size+1) x hash_size image. Cheaper than pHash
    but less discriminative on fundus photos (distinct IDRiD images came down to distance 8 of 256)."""
    small = _prepare(image, (hash_size + 1, hash_size), crop)
    return np.packbits((small[:, 1:] > small[:, :-1]).ravel())


HASHERS = {"phash": phash, "dhash": dhash}


def image_hash(item: ImageLike, method: Method = "phash", hash_size: int = HASH_SIZE) -> np.ndarray:
    """Hash of a path (reduced decode) or an array (RGB or gray)."""
    try:
        hasher = HASHERS[method]
    except KeyError:
        raise ValueError(f"unknown hash method {method!r}; expected one of {sorted(HASHERS)}") from None
    image = item if isinstance(item, np.ndarray) else load_gray(item)
    return hasher(image, hash_size=hash_size)


def hash_images(
    items: Sequence[ImageLike],
    method: Method = "phash",
    hash_size: int = HASH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """(N, n_bytes) uint8 packed hashes, in input order. Threads: OpenCV decodes outside the GIL, and large
    PNGs (APTOS) cannot be decoded reduced, so decoding dominates."""
    items = list(items)
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, workers)

    def one(item: ImageLike) -> np.ndarray:
        return image_hash(item, method, hash_size)

    bar = dict(total=len(items), desc=f"{method}", unit="img", disable=not progress)
    if workers == 1 or len(items) < 2:
        out = [one(x) for x in tqdm(items, **bar)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            out = list(tqdm(pool.map(one, items), **bar))
    n_bits = hash_size * hash_size - (method == "phash")
    return np.stack(out) if out else np.zeros((0, -(-n_bits // 8)), np.uint8)


def hash_to_hex(hashes: np.ndarray) -> list[str]:
    return [bytes(h).hex() for h in np.atleast_2d(hashes)]


def hex_to_hash(values: Iterable[str]) -> np.ndarray:
    return np.stack([np.frombuffer(bytes.fromhex(v), np.uint8) for v in values])


# ------------------------------------------------------------------------------------- duplicates


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8), axis=-1).reshape(*x.shape, -1).sum(-1)  # numpy < 2


def duplicate_pairs(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> pd.DataFrame:
    """All pairs (i < j) within ``max_distance`` bits: DataFrame ``i, j, distance``, sorted.

    Exhaustive O(N²) XOR/popcount in row blocks of bounded memory: a few thousand images (APTOS) take well
    under a second; EyePACS-size sets (88k, 3.9e9 pairs) take minutes, where multi-index hashing would pay.
    """
    hashes = np.ascontiguousarray(np.atleast_2d(hashes), dtype=np.uint8)
    n, n_bytes = hashes.shape
    pad = -n_bytes % 8
    words = np.pad(hashes, ((0, 0), (0, pad))).view(np.uint64)  # (N, W) 64-bit words
    block = max(1, (1 << 22) // max(1, n * words.shape[1]))
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = _popcount(words[start:stop, None, :] ^ words[None, start:, :]).sum(-1, dtype=np.int64)
        rows, cols = np.nonzero(dist <= max_distance)
        keep = start + rows < start + cols  # j > i, and not the diagonal
        found_i.append(start + rows[keep])
        found_j.append(start + cols[keep])
        found_d.append(dist[rows[keep], cols[keep]])
    pairs = pd.DataFrame(
        {
            "i": np.concatenate(found_i) if found_i else np.zeros(0, int),
            "j": np.concatenate(found_j) if found_j else np.zeros(0, int),
            "distance": np.concatenate(found_d) if found_d else np.zeros(0, int),
        }
    ).astype("int64")
    return pairs.sort_values(["i", "j"], ignore_index=True)


def groups_from_pairs(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """Connected components (union-find closure) -> group id per row, numbered by first row: 0, 1, 2..."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs["i"], pairs["j"])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def find_duplicate_groups(
    items: Sequence[ImageLike],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    method: Method = "phash",
    hash_size: int = HASH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Group id per image (paths or arrays); images within ``max_distance`` bits (transitively) share one.

    For the pairs themselves: ``duplicate_pairs(hash_images(items), max_distance)``.
    """
    hashes = hash_images(items, method, hash_size, workers, progress)
    return groups_from_pairs(len(hashes), duplicate_pairs(hashes, max_distance))


def add_duplicate_groups(
    table: pd.DataFrame,
    path_col: str = "path",
    max_distance: int = DEFAULT_MAX_DISTANCE,
    method: Method = "phash",
    hash_size: int = HASH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Copy of ``table`` with ``image_hash`` (hex, kept for audits and train/test leak checks) and
    ``dup_group`` columns."""
    hashes = hash_images(table[path_col].tolist(), method, hash_size, workers, progress)
    pairs = duplicate_pairs(hashes, max_distance)
    out = table.copy()
    out[HASH_COLUMN] = hash_to_hex(hashes) if len(hashes) else []
    out[GROUP_COLUMN] = groups_from_pairs(len(hashes), pairs)
    n_grouped = int(out[GROUP_COLUMN].duplicated(keep=False).sum())
    log.info("%d duplicate pair(s): %d of %d images share a group", len(pairs), n_grouped, len(out))
    return out


def conflicting_groups(
    table: pd.DataFrame, group_col: str = GROUP_COLUMN, grade_col: str = "grade"
) -> pd.DataFrame:
    """Rows of groups whose members have different grades (label noise worth a look), sorted by group."""
    n_grades = table.groupby(group_col)[grade_col].transform("nunique")
    return table.loc[n_grades > 1].sort_values(group_col, kind="stable")


# ------------------------------------------------------------------------------------------- folds


def make_folds(
    table: pd.DataFrame,
    n_folds: int = 5,
    seed: int = 0,
    group_col: str | None = GROUP_COLUMN,
    grade_col: str = "grade",
) -> pd.DataFrame:
    """Copy of ``table`` with an int ``fold`` column (0..n_folds-1) from ``StratifiedGroupKFold``.

    Stratified on grade; rows sharing ``group_col`` (duplicates, or ``patient`` for EyePACS) never straddle
    folds; deterministic from ``seed``. Groups with conflicting grades stay together and are warned about.
    ``group_col=None``: every row is its own group (plain stratified folds).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if grade_col not in table.columns:
        raise ValueError(f"table has no {grade_col!r} column; folds are stratified on grade")
    grades = table[grade_col]
    if grades.isna().any():
        ids = table.loc[grades.isna(), "id"].head(5).tolist() if "id" in table.columns else []
        raise ValueError(
            f"{int(grades.isna().sum())} row(s) have no grade (e.g. {ids}); folds need labels: drop unlabelled rows"
        )
    if group_col is None:
        groups = np.arange(len(table))
    elif group_col not in table.columns:
        raise ValueError(
            f"table has no {group_col!r} column: run add_duplicate_groups(table) first, "
            "or pass group_col=None for folds without duplicate grouping"
        )
    elif table[group_col].isna().any():
        raise ValueError(f"{group_col!r} has empty values; every row needs a group")
    else:
        groups = table[group_col].to_numpy()
    n_groups = len(pd.unique(groups))
    if n_groups < n_folds:
        raise ValueError(f"only {n_groups} group(s) for {n_folds} folds")

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(table), -1, dtype=np.int64)
    y = grades.to_numpy(dtype=np.int64)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(table)), y, groups)):
        fold[val] = k
    out = table.copy()
    out["fold"] = fold

    if group_col is not None:
        conflicts = conflicting_groups(out, group_col, grade_col)
        if len(conflicts):
            sample = [
                f"{list(g['id'] if 'id' in g else g.index)} grades {sorted(g[grade_col].unique().tolist())}"
                for _, g in list(conflicts.groupby(group_col, sort=False))[:5]
            ]
            warnings.warn(
                f"{conflicts[group_col].nunique()} duplicate group(s) have conflicting grades (kept in one fold "
                f"each): {'; '.join(sample)}; see conflicting_groups(table)",
                FoldWarning,
                stacklevel=2,
            )
    return out


def fold_distribution(table: pd.DataFrame, grade_col: str = "grade") -> pd.DataFrame:
    """Share of each grade per fold (rows) next to the overall share (last row 'all'), for a quick check."""
    per_fold = pd.crosstab(table["fold"], table[grade_col], normalize="index")
    overall = table[grade_col].value_counts(normalize=True).rename("all").to_frame().T
    return pd.concat([per_fold, overall.reindex(columns=per_fold.columns, fill_value=0.0)])


def write_folds(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Atomic ``folds.csv`` (whole table; needs ``id`` and ``fold``)."""
    missing = [c for c in ("id", "fold") if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write folds to {path}: missing column(s) {missing}; call make_folds first")
    return write_csv(path, df)


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``folds.csv`` back with ids/paths/hashes as text, ``grade`` Int64 and int ``fold``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds file not found: {path}; build it with make_folds + write_folds")
    df = read_csv(path, text=TEXT_COLUMNS | {HASH_COLUMN})
    missing = [c for c in ("id", "fold") if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a folds file: missing column(s) {missing}")
    if df["fold"].isna().any() or not pd.api.types.is_integer_dtype(df["fold"]):
        raise ValueError(f"{path}: 'fold' must be an integer in every row")
    if "grade" in df.columns:
        df["grade"] = df["grade"].astype("Int64")
    return df


def holdout_split(
    table: pd.DataFrame, n_holdout: int, seed: int = 0, group_col: str | None = GROUP_COLUMN
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): about ``n_holdout`` rows held back as a test set, stratified by grade and, when
    ``group_col`` is present, never splitting a duplicate group (a leak would flatter the test score)."""
    if not 0 < n_holdout < len(table):
        raise ValueError(f"n_holdout must be in 1..{len(table) - 1}, got {n_holdout}")
    n_splits = max(2, round(len(table) / n_holdout))
    group = group_col if group_col and group_col in table.columns else None
    split = make_folds(table, n_folds=n_splits, seed=seed, group_col=group)
    test = split["fold"] == 0
    return table[~test.to_numpy()].reset_index(drop=True), table[test.to_numpy()].reset_index(drop=True)
