"""Kaggle's accelerators by name: what a kernel asks for (``machine_shape`` in ``kernel-metadata.json``), how
many GPUs it gets, and which GPU profile prices it (:mod:`kaggle_utils.kernel.plan`).

Kaggle retired the P100: a kernel that names ``NvidiaTeslaP100`` (or names none, with ``enable_gpu: true``)
runs on the default GPU, two T4s. Kaggle's own client (``kaggle`` 2.2.5) warns on retired shapes; so do we.
A config or ``build_kernel.py`` names one with ``accelerator:``: our short name (``t4x2``, ``p100``, ``cpu``)
or Kaggle's (``NvidiaTeslaT4``); any other Kaggle name passes through unpriced.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

DEFAULT = "t4x2"


class RetiredAcceleratorWarning(UserWarning):
    """The accelerator asked for is retired on Kaggle: the session runs on a replacement."""


@dataclass(frozen=True)
class Accelerator:
    name: str  # our name (t4x2, p100, cpu) or Kaggle's for one we do not price
    machine_shape: str | None  # kernel-metadata.json's value; None: no accelerator (CPU session)
    gpus: int  # GPUs a session gets
    profile: str | None  # kernel.plan.GPU_PROFILES key that prices it; None: not priced
    retired: str = ""  # what Kaggle runs instead, for a retired shape
    runs_on: str = ""  # the accelerator a retired one is replaced by (its name here)

    @property
    def enable_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def enable_tpu(self) -> bool:
        return bool(self.machine_shape) and self.machine_shape.lower().startswith("tpu")

    def effective(self) -> Accelerator:
        """What a session asking for this one really runs on."""
        return ACCELERATORS[self.runs_on] if self.runs_on else self


ACCELERATORS = {
    "t4x2": Accelerator("t4x2", "NvidiaTeslaT4", 2, "t4"),
    "p100": Accelerator("p100", "NvidiaTeslaP100", 1, "p100",
                        retired="Sessions run on the default GPU (NvidiaTeslaT4) instead.", runs_on="t4x2"),
    "cpu": Accelerator("cpu", None, 0, None),
}
# Kaggle's retired shapes (its client's table): a name here warns whichever way it is spelt
RETIRED_SHAPES = {
    "nvidiateslap100": "Sessions run on the default GPU (NvidiaTeslaT4) instead.",
    "tpuv38": "Sessions run on the default TPU (TpuV5E8) instead.",
    "tpu1vmv38": "Sessions run on the default TPU (TpuV5E8) instead.",
    "tpuv232": "Sessions run on CPU instead, with no accelerator at all.",
    "tpuv2256": "Sessions run on CPU instead, with no accelerator at all.",
}


def resolve(name: str | None = None) -> Accelerator:
    """The accelerator a config or command line names (default ``t4x2``); Kaggle's names are matched
    case-insensitively, and any other non-empty name is taken as a Kaggle ``machine_shape`` we do not price."""
    text = str(name or DEFAULT).strip()
    if not text:
        raise ValueError("accelerator must not be empty; use 't4x2', 'p100', 'cpu' or a Kaggle machine_shape")
    key = text.lower()
    if key in ACCELERATORS:
        return ACCELERATORS[key]
    for acc in ACCELERATORS.values():
        if acc.machine_shape and acc.machine_shape.lower() == key:
            return acc
    if key in ("none", "gpu"):
        raise ValueError(f"accelerator {text!r} is ambiguous; name one: {sorted(ACCELERATORS)} or a Kaggle "
                         "machine_shape such as 'NvidiaTeslaT4'")
    gpus = 0 if key.startswith("tpu") else 1
    return Accelerator(text, text, gpus, None, retired=RETIRED_SHAPES.get(key, ""))


def warn_if_retired(acc: Accelerator) -> bool:
    """Warn, as Kaggle's client does, when ``acc`` is retired; returns whether it is."""
    if acc.retired:
        warnings.warn(f"accelerator {acc.name!r} ({acc.machine_shape}) is retired on Kaggle. {acc.retired}",
                      RetiredAcceleratorWarning, stacklevel=2)
    return bool(acc.retired)


def metadata_fields(acc: Accelerator) -> dict[str, Any]:
    """The ``kernel-metadata.json`` fields that ask Kaggle for ``acc``."""
    fields: dict[str, Any] = {"enable_gpu": acc.enable_gpu, "enable_tpu": acc.enable_tpu}
    if acc.machine_shape:
        fields["machine_shape"] = acc.machine_shape
    return fields


def describe(acc: Accelerator) -> str:
    """One line for build reports: what the metadata asks for, and what Kaggle does with a retired shape."""
    if not acc.machine_shape:
        return f"{acc.name}: no accelerator (CPU session)"
    text = f"{acc.name}: machine_shape {acc.machine_shape}"
    if acc.gpus:
        text += f", {acc.gpus} GPU" + ("s" if acc.gpus > 1 else "")
    return text + (f" (retired on Kaggle: {acc.retired})" if acc.retired else "")
