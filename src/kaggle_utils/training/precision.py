"""What ``amp="auto"`` and ``channels_last="auto"`` mean on the device at hand, for training and inference.

CUDA: autocast and channels_last, as every GPU recipe does; ``amp_dtype="auto"`` picks fp16 with a GradScaler
on GPUs without native bf16 (Kaggle's T4, compute capability 7.5: fp16 tensor cores, bf16 only emulated) and
bf16 (no GradScaler: bf16 has fp32's range) from capability 8.0 (A100, L4, H100). CPU:
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


def cuda_has_native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 or newer (torch.cuda.is_bf16_supported also says yes where
    bf16 is only emulated, as on a T4)."""
    try:
        return torch.cuda.get_device_capability(device)[0] >= 8
    except (RuntimeError, AssertionError, ValueError):  # no CUDA here
        return False


def resolve(device: torch.device, amp: bool | str = "auto", channels_last: bool | str = "auto",
            amp_dtype: str = "auto") -> Precision:
    """The precision and layout a run uses: explicit True/False wins; "auto" follows the device. On the CPU
    autocast is bf16 whatever ``amp_dtype`` says (CPU fp16 autocast is slower than fp32)."""
    if device.type == "cuda":
        if amp_dtype == "auto":
            amp_dtype = "bfloat16" if cuda_has_native_bf16(device) else "float16"
        why = "bf16 autocast (native bf16)" if amp_dtype == "bfloat16" else "fp16 autocast + GradScaler"
        auto = Precision(True, amp_dtype, True, f"CUDA: {why}")
    elif device.type == "cpu":
        auto = cpu_defaults()
    else:
        auto = Precision(False, "float16" if amp_dtype == "auto" else amp_dtype, False, f"{device.type}: fp32")
    use_amp = auto.amp if amp == "auto" else bool(amp)
    layout = auto.channels_last if channels_last == "auto" else bool(channels_last)
    dtype = auto.amp_dtype if device.type == "cuda" else "bfloat16"
    return Precision(use_amp, dtype, layout, auto.why)


def describe_device(device: torch.device) -> str:
    """What the log says a run trains on: the GPU's name and memory (per-slot epoch times are only comparable
    knowing the card), or the CPU threads it uses."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    threads = torch.get_num_threads()
    return f"{device} ({threads} thread{'s' if threads > 1 else ''})"
