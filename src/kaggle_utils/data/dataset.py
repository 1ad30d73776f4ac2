"""Training data: the fundus dataset and resumable, DDP-aware epoch samplers.

Everything random here is a pure function of ``(seed, epoch, position in the epoch)``: the sampler's index list
and each sample's augmentation seed. A run killed mid-epoch therefore resumes by skipping the positions it had
already consumed, with no augmentation RNG state to carry, and every rank of a DDP job derives the same epoch list
and takes its own shard ``rank::world_size``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from kaggle_utils.data.decode import ImageReadError, read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RATES = (1.0, 2.0, 2.0, 2.0, 2.0)
"""Grade 1-4 images drawn twice as often as grade 0 ones: the APTOS 2019 recipes' 1:2:2:2:2."""

_SEED_MAX = 2**31 - 1


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a cached image as RGB uint8 HxWx3 (``.npy`` arrays or anything OpenCV decodes)."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            image = np.load(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read cached array {path}: {err}; rebuild the cache") from err
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    try:
        return read_image(path)  # the cache's PNGs take the fast PNG decoder too
    except ImageReadError as err:
        raise ValueError(f"cannot read image {path} ({err.reason}); rebuild the cache or drop the row") from None


def _resize(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _grades_array(values: Any) -> np.ndarray:
    """Grades as float64 with NaN for unlabelled rows (pandas Int64 <NA> included)."""
    return pd.to_numeric(pd.Series(values), errors="coerce").astype("float64").to_numpy()


def _encode(grades: np.ndarray, head: str) -> torch.Tensor:
    """Training targets for every row; unlabelled rows get NaN (float heads) or -1 (class heads)."""
    from kaggle_utils.models.heads import encode_targets

    labelled = ~np.isnan(grades)
    filled = np.where(labelled, grades, 0.0)  # float: soft (pseudo-label) grades stay soft where the head allows
    targets = encode_targets(filled, head)
    targets = torch.as_tensor(targets)
    if not labelled.all():
        targets = targets.clone()
        mask = torch.from_numpy(~labelled)
        targets[mask] = float("nan") if targets.is_floating_point() else -1
    return targets


class FundusDataset(Dataset):
    """Cached fundus images -> ``(float32 CHW normalised tensor, target)``.

    ``table`` needs an image path column (``cache_path`` when present, as :func:`kaggle_utils.data.cache.load_cache`
    returns, falling back to ``path`` in rows without one, else ``path``) and, for training, ``grade`` (soft
    grades allowed for regression/ordinal heads). Targets come from ``heads.encode_targets`` so the
    dataset follows the model head. ``transform`` is an albumentations Compose working on uint8 HxWx3 RGB; it is
    re-seeded for every sample from the key the sampler yields ``(index, aug_seed)`` (or from
    ``(seed, epoch, index)`` for plain integer keys), which is what makes augmentation resumable.
    ``in_memory=True`` decodes every image once up front (small sets, benchmarks).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        transform: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        head: str = "regression",
        size: int | None = None,
        in_memory: bool = False,
        seed: int = 0,
        path_col: str | None = None,
        grade_col: str = "grade",
        progress: bool = False,
    ):
        if path_col is None:
            path_col = "cache_path" if "cache_path" in table.columns else "path"
        if path_col not in table.columns:
            raise KeyError(f"table has no {path_col!r} column (columns: {list(table.columns)})")
        self.table = table.reset_index(drop=True)
        paths = self.table[path_col]
        if path_col == "cache_path" and "path" in self.table.columns:  # rows added without a cache entry
            paths = paths.where(paths.notna(), self.table["path"])
        self.paths = [str(p) for p in paths]
        self.ids = [str(i) for i in self.table["id"]] if "id" in table.columns else [str(i) for i in range(len(table))]
        self.grades = _grades_array(self.table[grade_col]) if grade_col in table.columns else np.full(len(table), np.nan)
        self.head = head
        self.targets = _encode(self.grades, head)
        self.transform = transform
        self.size = size
        self.seed = int(seed)
        self.epoch = 0
        mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if mean_a.max() > 1.0 or std_a.max() > 1.0:  # given in 0-255 units
            mean_a, std_a = mean_a / 255.0, std_a / 255.0
        # x = (u8 / 255 - mean) / std as one multiply-add.
        self._scale = (1.0 / (255.0 * std_a)).astype(np.float32)
        self._offset = (mean_a / std_a).astype(np.float32)
        self.images: list[np.ndarray] | None = None
        if in_memory:
            self.images = [self._load(i) for i in _progress(range(len(self)), progress, "loading images")]

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Only used for plain integer keys; sampler keys already carry their augmentation seed."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> np.ndarray:
        return _resize(read_rgb(self.paths[index]), self.size)

    def image(self, index: int) -> np.ndarray:
        """The uint8 RGB image before augmentation."""
        return self.images[index] if self.images is not None else self._load(index)

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        x = image.astype(np.float32) * self._scale - self._offset
        return torch.from_numpy(x.transpose(2, 0, 1).copy())

    def augment(self, image: np.ndarray, aug_seed: int) -> np.ndarray:
        # One shared generator pair for the whole Compose: set_random_seed would give every transform an
        # identically seeded stream (e.g. horizontal and vertical flips always agreeing).
        self.transform.set_random_state(np.random.default_rng(aug_seed), random.Random(aug_seed))
        out = self.transform(image=image)["image"]
        return _resize(np.ascontiguousarray(out), self.size)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(key, tuple):
            index, aug_seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            aug_seed = int(np.random.default_rng([self.seed, self.epoch, index]).integers(_SEED_MAX))
        image = self.image(index)
        if self.transform is not None:
            image = self.augment(image, aug_seed)
        return self.normalise(image), self.targets[index]


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

    return tqdm(iterable, desc=desc, leave=False)


class EpochSampler(Sampler):
    """Base of the resumable samplers: epoch list from ``(seed, epoch)``, shard ``rank::world_size``.

    Subclasses only say how to draw ``total`` global indices. ``start`` skips the first positions of this rank's
    shard: how a resumed run avoids replaying batches it already trained on. With ``yield_seeds`` it yields
    ``(index, aug_seed)`` pairs for :class:`FundusDataset`; the seeds hang on the global position, so they do not
    depend on ``world_size``.
    """

    def __init__(
        self,
        n: int,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        yield_seeds: bool = False,
    ):
        if n <= 0:
            raise ValueError("sampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.n = int(n)
        self.num_samples = int(num_samples) if num_samples else self.n
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.yield_seeds = yield_seeds
        self.epoch = 0
        self.start = 0

    @property
    def total(self) -> int:
        """Global epoch length, padded so every rank gets the same number of samples."""
        return -(-self.num_samples // self.world_size) * self.world_size

    @property
    def shard_size(self) -> int:
        return self.total // self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; ``start`` = samples of this rank's shard already consumed (resume)."""
        if not 0 <= start <= self.shard_size:
            raise ValueError(f"start {start} outside this rank's shard of {self.shard_size} samples")
        self.epoch, self.start = int(epoch), int(start)

    def _draw(self, rng: np.random.Generator, total: int) -> np.ndarray:
        raise NotImplementedError

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The whole (all ranks) index list of an epoch."""
        epoch = self.epoch if epoch is None else epoch
        return self._draw(np.random.default_rng([self.seed, int(epoch), 0]), self.total)

    def epoch_seeds(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, int(epoch), 1]).integers(0, _SEED_MAX, self.total)

    def shard(self, epoch: int | None = None) -> np.ndarray:
        return self.epoch_indices(epoch)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Any]:
        indices = self.shard()[self.start :].tolist()
        if not self.yield_seeds:
            return iter(indices)
        seeds = self.epoch_seeds()[self.rank :: self.world_size][self.start :].tolist()
        return iter(zip(indices, seeds, strict=True))

    def __len__(self) -> int:
        return self.shard_size - self.start

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """``position``: samples of the current epoch's shard consumed so far (default: the resume start)."""
        return {
            "kind": type(self).__name__,
            "seed": self.seed,
            "epoch": self.epoch,
            "start": self.start if position is None else int(position),
            "n": self.n,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("kind", type(self).__name__), ("n", self.n), ("num_samples", self.num_samples)):
            if state.get(key) != mine:
                raise ValueError(
                    f"sampler state is for {key}={state.get(key)!r} but this sampler has {mine!r}; "
                    "the data or sampler settings changed since the checkpoint - start the run over"
                )
        start = int(state["start"])
        if state.get("world_size", 1) != self.world_size and start:
            raise ValueError(
                f"checkpoint taken mid-epoch with world_size={state.get('world_size')}, resuming with "
                f"{self.world_size}: resume with the same number of processes"
            )
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), start)


class ShuffleSampler(EpochSampler):
    """A fresh permutation every epoch (without replacement); ``num_samples`` other than n chains or cuts
    permutations, and DDP padding wraps around."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, yield_seeds: bool = False,
                 num_samples: int | None = None):
        super().__init__(n, num_samples, seed, rank, world_size, yield_seeds)

    def _draw(self, rng: np.random.Generator, total: int) -> np.ndarray:
        wanted = self.num_samples
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-wanted // self.n))])[:wanted]
        return np.resize(order, total)


SAMPLER_MODES = ("image", "grade", "source_grade")


def source_grade_weights(grades: np.ndarray, groups: np.ndarray, rates: np.ndarray,
                         temper: float = 0.5) -> np.ndarray:
    """Per-row draw weights (summing to 1) that give each source an equal share and, inside a source, grade g
    the share ``rates[g] * n_sg ** temper`` normalised over that source's grades."""
    if not 0 <= temper <= 1:
        raise ValueError(f"temper must be in [0, 1], got {temper}")
    weights = np.zeros(len(grades), np.float64)
    names = list(dict.fromkeys(groups.tolist()))
    for name in names:
        rows = groups == name
        counts = np.bincount(grades[rows], minlength=len(rates)).astype(np.float64)
        share = np.where(counts > 0, rates * counts ** temper, 0.0)
        if not share.sum() > 0:
            raise ValueError(f"source {name!r}: rates {rates.tolist()} give none of its grades a share")
        share /= share.sum()
        weights[rows] = share[grades[rows]] / counts[grades[rows]] / len(names)
    return weights


class GradeBalancedSampler(EpochSampler):
    """Draw ``num_samples`` images per epoch with replacement, weighted by grade.

    ``rates`` are relative weights per grade 0-4. ``mode="image"`` (default, the recipes' "1:2:2:2:2"): each image
    of grade g is drawn with probability proportional to ``rates[g]``, so minority grades are over-sampled by that
    factor while the set keeps its shape. ``mode="grade"``: ``rates`` are the target shares of each grade in the
    epoch (1:1:1:1:1 = fully balanced). ``mode="source_grade"`` (several cameras in one table, ``groups`` = each
    row's source): every source gets an equal share of the epoch (times its ``row_weights``), and within a source
    grade g gets a share proportional to ``rates[g] * n_sg ** temper`` (``n_sg``: that source's images of grade
    g; ``temper`` 0.5 = square-root balancing), so no source drowns the others and a small source's one or two
    images of a rare grade are not drawn hundreds of times an epoch. Unlabelled rows are an error.
    """

    def __init__(
        self,
        grades: Sequence[Any] | np.ndarray,
        rates: Sequence[float] = DEFAULT_RATES,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mode: str = "image",
        yield_seeds: bool = False,
        row_weights: Sequence[float] | np.ndarray | None = None,
        groups: Sequence[Any] | np.ndarray | None = None,
        temper: float = 0.5,
    ):
        grades_f = _grades_array(grades)
        if np.isnan(grades_f).any():
            bad = np.flatnonzero(np.isnan(grades_f))[:5].tolist()
            raise ValueError(f"GradeBalancedSampler needs a grade for every row; rows {bad}... have none")
        g = np.rint(grades_f).astype(np.int64)  # soft pseudo-label grades count as their nearest grade
        rates_a = np.asarray(rates, dtype=np.float64)
        if g.min() < 0 or g.max() >= len(rates_a):
            raise ValueError(f"grades span {g.min()}..{g.max()} but rates has {len(rates_a)} entries")
        if (rates_a < 0).any() or rates_a[np.unique(g)].sum() <= 0:
            raise ValueError(f"rates {tuple(rates)} must be >= 0 and positive for some grade present")
        if mode == "image":
            weights = rates_a[g]
        elif mode == "grade":
            counts = np.bincount(g, minlength=len(rates_a)).astype(np.float64)
            weights = rates_a[g] / counts[g]
        elif mode == "source_grade":
            if groups is None or len(groups) != len(g):
                raise ValueError(f"mode 'source_grade' needs the source of each of the {len(g)} rows (groups)")
            weights = source_grade_weights(g, np.asarray(groups), rates_a, temper)
        else:
            raise ValueError(f"mode must be one of {SAMPLER_MODES}, got {mode!r}")
        if row_weights is not None:  # e.g. per-source weights of a multi-source table
            row_w = np.asarray(row_weights, dtype=np.float64)
            if row_w.shape != weights.shape or (row_w < 0).any() or not (row_w * weights).sum() > 0:
                raise ValueError(f"row_weights must be {len(weights)} non-negative numbers, not all zero")
            weights = weights * row_w
        super().__init__(len(g), num_samples, seed, rank, world_size, yield_seeds)
        self.grades = g
        self.rates = tuple(float(r) for r in rates_a)
        self.mode = mode
        self.p = weights / weights.sum()

    def _draw(self, rng: np.random.Generator, total: int) -> np.ndarray:
        return rng.choice(self.n, size=total, replace=True, p=self.p)

    def expected_share(self) -> np.ndarray:
        """Expected fraction of each grade in an epoch (for checks and logs)."""
        return np.bincount(self.grades, weights=self.p, minlength=len(self.rates))

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        return {**super().state_dict(position), "rates": list(self.rates), "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rates" in state and (tuple(state["rates"]) != self.rates or state.get("mode") != self.mode):
            raise ValueError(
                f"sampler state has rates={state['rates']} mode={state.get('mode')} but this sampler has "
                f"rates={list(self.rates)} mode={self.mode}; start the run over to change them"
            )
        super().load_state_dict(state)
