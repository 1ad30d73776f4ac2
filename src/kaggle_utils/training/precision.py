"""What ``amp="auto"`` and ``channels_last="auto"`` mean on the device at hand, for training and inference.

CUDA: fp16 autocast (with a GradScaler in training) and channels_last, as every GPU recipe does. CPU:
channels_last (oneDNN's convolutions run NHWC natively; contiguous tensors are reordered around every
convolution: Lite0 at 224 trains 1.85x faster here) in fp32. bf16 autocast (``amp: true`` on the CPU) is
opt-in: on this AVX-512 BF16 machine it trained Lite0 1.17x faster at 224 px but slower at 128 px, and its
held-out QWK differed from fp32's by more than 0.01 on one of the two measures (docs/recipes.md,
``bench/train_speed.py``, ``configs/precision_check.yaml``). On a CPU without native bf16 (no AVX-512 BF16 or
AMX) it is emulated and slower still.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    amp: bool
    amp_dtype: str  # "float16" | "bfloat16"
    channels_last: bool
    why: str

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.amp_dtype)


@functools.cache  # a fact of the machine; predict_batch resolves the precision once per batch
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX tiles: torch's CPU feature check, or /proc/cpuinfo where that API is missing."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(c is not None for c in checks):
        return any(bool(c()) for c in checks if c is not None)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_defaults() -> Precision:
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return Precision(False, "bfloat16", True, f"CPU ({bf16}): fp32, channels_last; bf16 autocast with amp: true")


def resolve(device: torch.device, amp: bool | str = "auto", channels_last: bool | str = "auto",
            amp_dtype: str = "float16") -> Precision:
    """The precision and layout a run uses: explicit True/False wins; "auto" follows the device. On the CPU
    autocast is bf16 whatever ``amp_dtype`` says (CPU fp16 autocast is slower than fp32)."""
    if device.type == "cuda":
        auto = Precision(True, amp_dtype, True, "CUDA: fp16 autocast")
    elif device.type == "cpu":
        auto = cpu_defaults()
    else:
        auto = Precision(False, amp_dtype, False, f"{device.type}: fp32")
    use_amp = auto.amp if amp == "auto" else bool(amp)
    layout = auto.channels_last if channels_last == "auto" else bool(channels_last)
    dtype = amp_dtype if device.type == "cuda" else "bfloat16"
    return Precision(use_amp, dtype, layout, auto.why)


def describe_device(device: torch.device) -> str:
    """What the log says a run trains on: the GPU's name and memory (per-slot epoch times are only comparable
    knowing the card), or the CPU threads it uses."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    threads = torch.get_num_threads()
    return f"{device} ({threads} thread{'s' if threads > 1 else ''})"
