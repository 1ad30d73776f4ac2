"""The three ways to predict a DR grade, and the glue between grades, training targets and outputs.

=============== ============ ================================== =========================================
head            outputs      training target (encode_targets)   decoded grade (decode)
=============== ============ ================================== =========================================
regression      (N,)         float grade, (N,)                  clamp(output, 0, 4)
ordinal         (N, 4)       cumulative [g>0, g>1, g>2, g>3]    sum of the 4 sigmoids
classification  (N, 5)       class index (int64), (N,)          softmax(logits) . [0, 1, 2, 3, 4]
=============== ============ ================================== =========================================

Every head decodes to a *continuous* expected grade in [0, 4], so the same threshold optimisation
(metrics.optimise_thresholds) and blending work for all of them. A regression output is returned as
(N,), not (N, 1), so it lines up with its (N,) target without broadcasting surprises in MSE.

Soft (non-integer) grades, e.g. pseudo-labels, are accepted for regression and ordinal heads: the
ordinal encoding of a grade g is ``clip(g - k, 0, 1)`` for k = 0..3, which is exactly [g > k] for an
integer g and sums back to g, so decode(encode(g)) == g in the limit of perfect logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NUM_GRADES = 5
MAX_GRADE = NUM_GRADES - 1

HEADS: dict[str, int] = {"regression": 1, "ordinal": NUM_GRADES - 1, "classification": NUM_GRADES}
"""Grading head -> number of outputs of its final linear layer."""

IMAGENET_HEAD = "imagenet"
"""Not a grading head: the backbone's own 1000-class classifier, for checking pretrained weights."""


def check_head(head: str, allow_imagenet: bool = False) -> str:
    if head in HEADS or (allow_imagenet and head == IMAGENET_HEAD):
        return head
    choices = [*HEADS, IMAGENET_HEAD] if allow_imagenet else list(HEADS)
    raise ValueError(f"unknown head {head!r}; choose one of {choices}")


def num_outputs(head: str) -> int:
    return 1000 if check_head(head, allow_imagenet=True) == IMAGENET_HEAD else HEADS[head]


def _grades_array(grades: Any) -> np.ndarray:
    """Any 1-D container of grades (list, ndarray, pandas Series incl. nullable Int64, tensor) -> float64."""
    if isinstance(grades, torch.Tensor):
        arr = grades.detach().cpu().double().numpy()
    elif hasattr(grades, "to_numpy"):
        arr = grades.to_numpy(dtype="float64", na_value=np.nan)
    else:
        arr = np.asarray(grades, dtype="float64")
    arr = arr.reshape(-1)
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > MAX_GRADE)
    if bad.any():
        idx = np.flatnonzero(bad)[:10].tolist()
        raise ValueError(
            f"grades must be finite and in [0, {MAX_GRADE}]; bad values at positions {idx}: "
            f"{arr[idx].tolist()} (unlabelled rows must be dropped before training)"
        )
    return arr


def encode_targets(grades: Any, head: str) -> torch.Tensor:
    """Grades -> the training target of ``head`` (see the module table)."""
    arr = _grades_array(grades)
    check_head(head)
    if head == "regression":
        return torch.as_tensor(arr, dtype=torch.float32)
    if head == "ordinal":
        levels = np.arange(NUM_GRADES - 1, dtype="float64")
        return torch.as_tensor(np.clip(arr[:, None] - levels[None, :], 0.0, 1.0), dtype=torch.float32)
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError("classification targets must be integer grades; use regression/ordinal for soft labels")
    return torch.as_tensor(arr, dtype=torch.int64)


def decode(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Raw model outputs -> continuous expected grade in [0, 4], shape (N,), float."""
    check_head(head)
    outputs = outputs.float()
    if head == "regression":
        if outputs.ndim == 2 and outputs.shape[1] == 1:
            outputs = outputs[:, 0]
        if outputs.ndim != 1:
            raise ValueError(f"regression head needs outputs of shape (N,) or (N, 1), got {tuple(outputs.shape)}")
        return outputs.clamp(0.0, float(MAX_GRADE))
    expected = HEADS[head]
    if outputs.ndim != 2 or outputs.shape[1] != expected:
        raise ValueError(f"{head} head needs outputs of shape (N, {expected}), got {tuple(outputs.shape)}")
    if head == "ordinal":
        return torch.sigmoid(outputs).sum(dim=1)
    grades = torch.arange(NUM_GRADES, dtype=outputs.dtype, device=outputs.device)
    return torch.softmax(outputs, dim=1) @ grades
