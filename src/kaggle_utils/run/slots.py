"""Device slots: the chain runs one step per slot at a time, so every GPU of a Kaggle T4 x2 trains a fold.

``devices: auto`` (the default) is one slot per CUDA GPU (one slot without a GPU: the chain of old, one step
at a time); ``devices: N`` is the first N GPUs or, on the CPU, N slots that split the cores: each training
step there gets ``cores // N`` torch threads (``TrainConfig.threads``, and OMP/MKL in its kernel's
environment), so two folds at once do not each spin up every core. A slot's training steps train on its
device (``cuda:k``); every other step waits for all steps before it, so it runs alone with the whole machine.
A chain under torchrun (DDP) cannot also split the GPUs into slots: both would claim every GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kaggle_utils.run.config import check_devices


@dataclass(frozen=True)
class Slot:
    index: int
    device: str | None = None  # "cuda:k"; None: the CPU (or the notebook's own choice with one slot)
    threads: int | None = None  # a CPU slot's share of the cores, for its training steps

    def overrides(self) -> dict[str, Any]:
        """TrainConfig fields a training step run in this slot gets, unless its config sets them."""
        return {k: v for k, v in (("device", self.device), ("threads", self.threads)) if v is not None}

    def env(self) -> dict[str, str]:
        """A training kernel's thread pools sized to the slot (numpy/OpenCV besides torch)."""
        if self.threads is None:
            return {}
        return dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), str(self.threads))

    def label(self, training: bool = True) -> str:
        """``slot 1: cuda:1`` / ``slot 1: cpu, 1 thread``; a step that is not training runs alone: all cores."""
        if self.device:
            return f"slot {self.index}: {self.device}"
        threads = self.threads if training and self.threads else cpu_cores()
        return f"slot {self.index}: cpu, {threads} thread{'s' if threads > 1 else ''}"


def cpu_cores() -> int:
    """The cores this process may use (a container's affinity, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_slots(devices: Any = "auto", gpus: int | None = None, cores: int | None = None) -> list[Slot]:
    """The chain's slots for the config's ``devices`` (``gpus``/``cores``: what this machine has, for tests).
    One slot is the sequential chain, untouched: no device or thread override."""
    check_devices(devices)
    if devices == 1:
        return [Slot(0)]
    gpus = cuda_count() if gpus is None else gpus
    n = max(1, gpus) if devices == "auto" else int(devices)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if devices != "auto" and n > 1:
            raise ValueError(f"devices: {n} runs {n} steps at once, one per device, but the chain was started "
                             f"under torchrun (WORLD_SIZE={world}), whose DDP already spreads each step over "
                             "the GPUs: use devices: 1 under torchrun, or run without torchrun for one step "
                             "per GPU")
        return [Slot(0)]
    if n == 1:
        return [Slot(0)]
    if gpus:
        if n > gpus:
            raise ValueError(f"devices: {n}, but this machine has {gpus} CUDA GPU(s): use devices: auto or at "
                             f"most {gpus}")
        return [Slot(k, f"cuda:{k}") for k in range(n)]
    cores = cpu_cores() if cores is None else cores
    return [Slot(k, None, max(1, cores // n)) for k in range(n)]


def describe_slots(slots: list[Slot]) -> str:
    first = slots[0]
    where = ", ".join(s.device for s in slots if s.device) or \
        f"cpu, {first.threads} thread{'s' if (first.threads or 1) > 1 else ''} each"
    return f"{len(slots)} slots ({where}): training steps run side by side, one per slot"


def kernel_manager_class(env: dict[str, str], started: Callable[[Any], None]) -> type:
    """A kernel manager that starts its kernel with ``env`` on top of ours and hands itself to ``started``
    (so that Ctrl-C can kill the kernel from the chain's main thread)."""
    from jupyter_client.manager import AsyncKernelManager

    class SlotKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            kw["env"] = {**os.environ, **(kw.get("env") or {}), **env}
            await AsyncKernelManager.start_kernel(self, **kw)
            started(self)

    return SlotKernelManager


def kill_kernel(km: Any) -> None:
    """SIGKILL a kernel's process group (its DataLoader workers too; jupyter starts each kernel in its own
    session, so the terminal's Ctrl-C never reached it). A graceful shutdown would print ZMQ tracebacks."""
    provisioner = getattr(km, "provisioner", None)
    pid = getattr(provisioner, "pgid", None) or getattr(provisioner, "pid", None)
    if pid:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


class SlotStream:
    """A kernel's stdout/stderr as whole lines prefixed ``[slot k]`` (papermill's ``stdout_file``), so the
    slots' epoch lines interleave readably; a progress bar's carriage-return frames keep only what a terminal
    would show last."""

    def __init__(self, prefix: str, emit: Callable[[str], None]) -> None:
        self.prefix, self.emit, self.buffer = prefix, emit, ""

    def write(self, text: str) -> int:
        *lines, rest = (self.buffer + text).split("\n")
        self.buffer = rest[rest.rfind("\r") + 1:]
        for line in lines:
            shown = line[line.rfind("\r") + 1:].rstrip()
            if shown:
                self.emit(self.prefix + shown)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.buffer.strip():
            self.emit(self.prefix + self.buffer.rstrip())
        self.buffer = ""


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def next_result(results: queue.Queue) -> tuple[int, BaseException | None]:
    """The next slot to finish; polls so that Ctrl-C reaches the waiting thread at once."""
    while True:
        with contextlib.suppress(queue.Empty):
            return results.get(timeout=0.5)


def drain(results: queue.Queue) -> list[tuple[int, BaseException | None]]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(results.get_nowait())
    return out


@contextlib.contextmanager
def quiet_logger(logger: str) -> Iterator[None]:
    """Silence a logger meanwhile (nbclient's "Kernel died" errors from the kernels Ctrl-C killed)."""
    log = logging.getLogger(logger)
    was, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = was
