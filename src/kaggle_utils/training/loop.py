"""Train one fold: resumable, deadline-aware, single-process or DDP with the same entry point.

``train_fold(cfg)`` is ``Trainer(cfg, table).fit()``; it writes the files listed in
:mod:`kaggle_utils.training.artifacts`. Rerunning it with the same config continues from last.pt and, on CPU
with the same seed, ends with bit-identical weights to an uninterrupted run: the epoch's sample order and each
sample's augmentation are functions of ``(seed, epoch, position)`` (see :mod:`kaggle_utils.data.dataset`),
batches already trained on are skipped, and the global torch/numpy/python RNG states (dropout) are restored
at the step boundary.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) the same code initialises the process group (nccl on CUDA, gloo on CPU),
wraps the model in DistributedDataParallel, gives each rank its shard of every epoch, reduces losses and gathers
validation predictions so every rank takes the same early-stopping/deadline decisions, and lets only rank 0 write.

``deadline`` (e.g. kernel start + 8.5 h under Kaggle's 9 h limit) is checked at batch boundaries; once passed, the
run saves a resumable last.pt (best.pt/oof.csv are already on disk from the best epoch so far) and returns with
status "deadline". On CUDA the defaults turn on AMP (fp16 + GradScaler), channels_last and cudnn.benchmark
(``deterministic="auto"``), so a resumed GPU run is close to, not bit-identical with, an uninterrupted one. On
the CPU they turn on channels_last; ``amp: true`` there means bf16 autocast (training/precision.py).
Its first line names the device (the GPU and its memory, or the CPU threads) and every epoch's line its time:
a chain's slots print both, so each slot's epoch times can be read off the log.

Size: the loop with its resume points, deadline votes and DDP reductions reads as one piece; what it writes
is artifacts.py's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from kaggle_utils.data.dataset import FundusDataset, GradeBalancedSampler, ShuffleSampler
from kaggle_utils.training import precision
from kaggle_utils.training.allocator import keep_freed_memory
from kaggle_utils.training.artifacts import FoldArtifacts
from kaggle_utils.training.checkpoint import (
    deterministic,
    init_weights_from,
    save_checkpoint,
    seed_everything,
    wants_determinism,
)
from kaggle_utils.training.config import DEFAULT_THRESHOLDS, TrainConfig
from kaggle_utils.training.distributed import DistInfo, all_gather, init_distributed
from kaggle_utils.training.schedule import LRSchedule, WeightAverager
from kaggle_utils.training.table import load_table, rows_fingerprint, split_fold

_DDP_CHECK_EVERY = 10  # steps between the (synchronising) deadline/checkpoint votes under DDP


def _now() -> float:
    """Wall clock for deadlines and timed checkpoints (one place to fake it in tests)."""
    return time.time()


def _parse_deadline(deadline: float | None, started: float) -> float | None:
    if deadline is None:
        return None
    deadline = float(deadline)
    return deadline if deadline > 1e9 else started + deadline


def _match_shape(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, 1) regression outputs against (B,) targets would broadcast to (B, B) silently."""
    if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1 and targets.is_floating_point():
        return outputs.squeeze(-1)
    return outputs


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(0)  # workers already parallelise; OpenCV's own pool would oversubscribe the cores


def build_model(cfg: TrainConfig) -> nn.Module:
    from kaggle_utils.models import create_model

    return create_model(cfg.model, head=cfg.head, pool=cfg.pool, pretrained=cfg.pretrained)


class Trainer(FoldArtifacts):
    """One fold's training run; :func:`train_fold` is ``Trainer(cfg, table).fit()``.

    Split out so benchmarks and notebooks can drive ``train_epoch`` / ``validate`` directly.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        table: pd.DataFrame | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        dist_info: DistInfo | None = None,
    ):
        self.cfg = cfg.validate()
        self.started = _now()
        self.deadline = _parse_deadline(cfg.deadline, self.started)
        self.dist = dist_info or DistInfo()
        self.on_step = on_step
        self.out = Path(cfg.out_dir)
        if cfg.threads:  # a chain slot's share of the cores: two folds at once must not each take them all
            torch.set_num_threads(int(cfg.threads))
        self.device = self._pick_device()
        cuda = self.device.type == "cuda"
        if cuda:  # stray default-device work (cudnn handles, caching allocator) goes to this slot's GPU
            torch.cuda.set_device(self.device)
        prec = precision.resolve(self.device, cfg.amp, cfg.channels_last, cfg.amp_dtype)
        self.amp, self.amp_dtype, self.channels_last = prec.amp, prec.dtype, prec.channels_last
        keep_freed_memory()  # activations reuse the heap instead of page-faulting in afresh (allocator.py)

        table = load_table(cfg, table)
        self.train_table, self.val_table = split_fold(table, cfg.fold, allow_no_val=True)
        if self.val_table.empty:
            _say(f"fold {cfg.fold} has no validation rows: every epoch replaces best.pt, no OOF is written")
        self.fingerprint = rows_fingerprint(self.train_table, self.val_table)

        seed_everything(cfg.seed)
        self.net = build_model(cfg)
        self.init_report: dict[str, list[str]] | None = None  # filled by fit() from cfg.init_from
        self.net.to(self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.net
        if self.dist.enabled:
            ids = [self.device.index] if cuda else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        # The training stream (dropout): per rank, after init so the weights do not depend on the rank.
        seed_everything(cfg.seed * 1000 + self.dist.rank + 1)

        self._build_data()
        self.loss_fn = self._build_loss()
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = LRSchedule(cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)

        self.epoch, self.step, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.step_log: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.bad_epochs = 0
        self.status = "running"
        self.epoch_loss_sum, self.epoch_count, self.epoch_time = 0.0, 0, 0.0
        self._last_ckpt_time = _now()
        self._tables_at = -1
        self.averager = WeightAverager(cfg.average_last, cfg.epochs) if cfg.average_last else None

    # ---- setup
    def _pick_device(self) -> torch.device:
        if self.cfg.device != "auto":
            device = torch.device(self.cfg.device)
            if self.dist.enabled and device.type == "cuda" and device.index is not None:
                raise ValueError(f"device {self.cfg.device!r} names one GPU, but torchrun started "
                                 f"{self.dist.world_size} processes that each take cuda:LOCAL_RANK: use device "
                                 "'auto' or 'cuda' under torchrun (a chain slot's cuda:k and DDP do not mix)")
            return torch.device("cuda", self.dist.local_rank) if device.type == "cuda" and device.index is None \
                else device
        if torch.cuda.is_available():
            return torch.device("cuda", self.dist.local_rank)
        return torch.device("cpu")

    def _build_loss(self) -> Callable[..., torch.Tensor]:
        from kaggle_utils.training.losses import default_loss_for, get_loss

        return get_loss(self.cfg.loss or default_loss_for(self.cfg.head), head=self.cfg.head)

    def _build_data(self) -> None:
        cfg = self.cfg
        from kaggle_utils.data.augment import get_augmentation

        mean = getattr(self.net, "mean", None) or (0.485, 0.456, 0.406)
        std = getattr(self.net, "std", None) or (0.229, 0.224, 0.225)
        common = {"mean": mean, "std": std, "head": cfg.head, "size": cfg.size, "in_memory": cfg.in_memory,
                  "seed": cfg.seed, "progress": cfg.progress and self.dist.is_main}
        transform = None if cfg.augmentation in (None, "none") else get_augmentation(cfg.augmentation, cfg.size)
        self.train_ds = FundusDataset(self.train_table, transform=transform, **common)
        self.val_ds = FundusDataset(self.val_table, transform=None, **common)
        rank, world = self.dist.rank, self.dist.world_size
        if cfg.sampler_rates or cfg.source_weights or cfg.sampler_mode == "source_grade":
            groups = None
            if cfg.sampler_mode == "source_grade":
                if "dataset" not in self.train_table.columns:
                    raise ValueError("sampler_mode 'source_grade' needs a multi-source table (a 'dataset' column, "
                                     "see kaggle_utils.data.assemble)")
                groups = self.train_table["dataset"].astype(str).to_numpy()
            self.sampler = GradeBalancedSampler(
                self.train_ds.grades, cfg.sampler_rates or [1.0] * 5, cfg.samples_per_epoch, cfg.seed, rank, world,
                mode=cfg.sampler_mode, yield_seeds=True, row_weights=self._row_weights(), groups=groups)
        else:
            self.sampler = ShuffleSampler(len(self.train_ds), cfg.seed, rank, world, yield_seeds=True,
                                          num_samples=cfg.samples_per_epoch)
        bs = cfg.batch_size
        self.drop_last = self.sampler.shard_size >= bs
        steps = self.sampler.shard_size // bs if self.drop_last else 1
        self.steps_per_epoch = min(steps, cfg.max_steps_per_epoch or steps)
        cuda = self.device.type == "cuda"
        workers = cfg.num_workers
        loader_kw = {"num_workers": workers, "pin_memory": cuda, "worker_init_fn": _worker_init if workers else None,
                     "persistent_workers": workers > 0 and not cfg.size_schedule}  # workers see the epoch's size
        # A private generator: DataLoader otherwise draws its worker base seed from the global torch RNG on
        # every iter(), which would shift the dropout stream of a resumed run.
        self.train_loader = DataLoader(self.train_ds, batch_size=bs, sampler=self.sampler, drop_last=self.drop_last,
                                       generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)
        val_idx = list(range(rank, len(self.val_ds), world))
        self.val_loader = DataLoader(Subset(self.val_ds, val_idx), batch_size=cfg.val_batch_size or 2 * bs,
                                     shuffle=False, generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)
        self.val_idx = val_idx

    def _row_weights(self) -> np.ndarray | None:
        weights = self.cfg.source_weights
        if not weights:
            return None
        if "dataset" not in self.train_table.columns:
            raise ValueError("source_weights needs a 'dataset' column (a multi-source table, see kaggle_utils.data.assemble)")
        unknown = sorted(set(weights) - set(self.train_table["dataset"]))
        if unknown:
            raise ValueError(f"source_weights names dataset(s) {unknown} that have no training rows; "
                             f"datasets here: {sorted(set(self.train_table['dataset']))}")
        return self.train_table["dataset"].map(weights).fillna(1.0).to_numpy(np.float64)

    # ---- checkpoints
    def save_last(self) -> None:
        self._sync_buffers()
        state = self.checkpoint_state()
        if self.dist.is_main:
            save_checkpoint(self.out / "last.pt", state)
            self._write_tables()
        self._last_ckpt_time = _now()

    def _sync_buffers(self) -> None:
        """BatchNorm running stats drift per rank under DDP; rank 0's are the ones kept."""
        if self.dist.enabled:
            for buf in self.net.buffers():
                dist.broadcast(buf, 0)

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    # ---- the loop
    def fit(self) -> dict[str, Any]:
        resumed = self.prepare_out_dir()
        if resumed:
            self.resume()
        elif self.cfg.init_from:  # a resumed run has its own weights; the init file may be gone by now
            self.init_report = init_weights_from(self.net, self.cfg.init_from, self.cfg)
        if self.status in ("completed", "early_stopped"):
            # killed between the final checkpoint and its tables: write them from the checkpoint's history
            if self.dist.is_main and not all((self.out / f).is_file() for f in ("metrics.csv", "curves.png")):
                self._write_tables()
            return self.result(resumed)
        if self.dist.is_main:  # once the config and data are known good: errors stay one line
            _say(f"device: {precision.describe_device(self.device)}"
                 + (f" x {self.dist.world_size} processes (DDP)" if self.dist.enabled else ""))
        self.status = "running"
        while self.epoch < self.cfg.epochs:
            if not self.train_epoch():
                self.status = "deadline"
                self.save_last()
                return self.result(resumed)
            row, preds = self.validate()
            if self.end_epoch(row, preds):  # saves last.pt, with the final status after the last epoch
                break
        if self.status == "running":  # epochs already done when resumed (e.g. epochs lowered): finish cleanly
            self.status = "completed"
            self.save_last()
        return self.result(resumed)

    def _vote(self, force: bool = False) -> tuple[bool, bool]:
        """(deadline passed, time-based checkpoint due), identical on every rank."""
        now = _now()
        flags = [self.deadline is not None and now >= self.deadline,
                 bool(self.cfg.checkpoint_every_minutes)
                 and now - self._last_ckpt_time >= 60.0 * self.cfg.checkpoint_every_minutes]
        if not self.dist.enabled:
            return flags[0], flags[1]
        if not force and self.step % _DDP_CHECK_EVERY:
            return False, False
        t = torch.tensor([int(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0]), bool(t[1])

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when the deadline stopped it (state saved by caller)."""
        cfg = self.cfg
        self.model.train()
        self.sampler.set_epoch(self.epoch, start=min(self.step * cfg.batch_size, self.sampler.shard_size))
        self._set_train_size(cfg.epoch_size(self.epoch))
        t0 = time.time() - self.epoch_time
        loss_sum = torch.zeros((), device=self.device)
        log_sum, log_n = torch.zeros((), device=self.device), 0
        bar = self._bar()
        batches = iter(self.train_loader)
        try:
            while self.step < self.steps_per_epoch:
                deadline, ckpt_due = self._vote()
                if deadline:
                    self._fold_sums(loss_sum, t0)
                    return False
                if ckpt_due:
                    self._fold_sums(loss_sum, t0)
                    loss_sum.zero_()
                    self.save_last()
                x, y = next(batches)
                loss = self.train_step(x, y)
                loss_sum += loss * x.shape[0]
                log_sum += loss
                log_n += 1
                self.step += 1
                self.global_step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.steps_per_epoch:
                    self._log_step(log_sum / log_n, bar)
                    log_sum.zero_()
                    log_n = 0
                if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0 \
                        and self.step < self.steps_per_epoch:
                    self._fold_sums(loss_sum, t0)
                    loss_sum.zero_()
                    self.save_last()
                if self.on_step is not None:
                    self.on_step({"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                                  "trainer": self})
        finally:
            if bar is not None:
                bar.close()
        self._fold_sums(loss_sum, t0)
        return not self._vote(force=True)[0]

    def _set_train_size(self, size: int) -> None:
        """Progressive resizing: images and augmentation at this epoch's size (validation keeps ``cfg.size``)."""
        if size != self.train_ds.size:
            from kaggle_utils.data.augment import get_augmentation

            self.train_ds.size = size
            if self.train_ds.transform is not None:
                self.train_ds.transform = get_augmentation(self.cfg.augmentation, size)

    def _fold_sums(self, loss_sum: torch.Tensor, t0: float) -> None:
        """Move the device-side loss sum into the checkpointable counters (one sync)."""
        done = self.step * self.cfg.batch_size
        self.epoch_loss_sum += float(loss_sum)
        self.epoch_count = done
        self.epoch_time = time.time() - t0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns the detached loss without synchronising the device."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = self.schedule.lr(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.model(x)
            loss = self.loss_fn(_match_shape(out, y).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def _bar(self) -> Any:
        if not (self.cfg.progress and self.dist.is_main):
            return None
        from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

        return tqdm(total=self.steps_per_epoch, initial=self.step, leave=False, dynamic_ncols=True,
                    desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}")

    def _log_step(self, mean_loss: torch.Tensor, bar: Any) -> None:
        value = float(mean_loss)  # the only per-interval sync
        self.step_log.append({"global_step": self.global_step, "epoch": self.epoch + 1, "step": self.step,
                              "loss": value, "lr": self.optimizer.param_groups[0]["lr"]})
        if bar is not None:
            bar.set_postfix(loss=f"{value:.4f}")

    @torch.no_grad()
    def predict_val(self) -> tuple[np.ndarray, float]:
        """Continuous predictions for the whole validation fold and its mean loss (gathered over ranks)."""
        self._sync_buffers()
        self.net.eval()
        preds, loss_sum = [], 0.0
        for x, y in self.val_loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.net(x)
            out = out.float()
            loss_sum += float(self.loss_fn(_match_shape(out, y), y)) * x.shape[0]
            preds.append(self.net.decode(out).float().reshape(-1).cpu())
        local = np.concatenate([p.numpy() for p in preds]) if preds else np.zeros(0, np.float32)
        parts = all_gather((self.val_idx, local, loss_sum), self.dist)
        full = np.zeros(len(self.val_ds), dtype=np.float64)
        for idx, p, _ in parts:
            full[idx] = p
        return full, sum(part[2] for part in parts) / len(self.val_ds) if len(self.val_ds) else float("nan")

    def validate(self) -> tuple[dict[str, Any], np.ndarray]:
        from kaggle_utils.metrics import apply_thresholds, qwk

        t0 = time.time()
        preds, val_loss = self.predict_val()
        grades = np.rint(self.val_ds.grades).astype(int)
        val_qwk = float(qwk(grades, apply_thresholds(preds, DEFAULT_THRESHOLDS))) if len(preds) else float("nan")
        sums = torch.tensor([self.epoch_loss_sum, float(self.epoch_count)], dtype=torch.float64)
        if self.dist.enabled:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
        row = {"epoch": self.epoch + 1, "train_loss": float(sums[0] / max(1.0, float(sums[1]))),
               "val_loss": float(val_loss), "val_qwk": val_qwk, "lr": self.optimizer.param_groups[0]["lr"],
               "time": self.epoch_time + time.time() - t0}
        return row, preds

    def end_epoch(self, row: dict[str, Any], preds: np.ndarray) -> bool:
        """Record the epoch, keep the best model, step the plateau schedule; True = stop early."""
        self.history.append(row)
        value = row[self.cfg.monitor]
        higher = self.cfg.monitor == "val_qwk"
        improved = self.best is None or (value > self.best["value"] if higher else value < self.best["value"])
        improved = improved or not len(self.val_ds)  # nothing to compare: the latest epoch is the result
        if self.averager is not None:
            self.averager.update(self.net, row["epoch"])
        if improved:
            self.best = {"value": value, "epoch": row["epoch"], "val_loss": row["val_loss"], "val_qwk": row["val_qwk"]}
            self.bad_epochs = 0
            self.save_best(row, preds)
        else:
            self.bad_epochs += 1
        self.schedule.epoch_end(value)
        if self.dist.is_main:
            _say(f"epoch {row['epoch']}/{self.cfg.epochs} train_loss {row['train_loss']:.4f} val_loss "
                 f"{row['val_loss']:.4f} val_qwk {row['val_qwk']:.4f} lr {row['lr']:.2e} {row['time']:.0f}s"
                 + (" *" if improved else ""))
        self.epoch += 1
        self.step = 0
        self.epoch_loss_sum, self.epoch_count, self.epoch_time = 0.0, 0, 0.0
        stop = self.cfg.patience is not None and self.bad_epochs > self.cfg.patience
        if stop:
            self.status = "early_stopped"
        elif self.epoch >= self.cfg.epochs:
            self.status = "completed"
        if self.status != "running" and self.averager is not None:
            self.finish_average()
        self.save_last()
        return stop

    def finish_average(self) -> None:
        """Replace best.pt by the average of the last epochs' weights (validated like an epoch); last.pt keeps
        the final weights so a resumed run is unchanged."""
        if not self.averager.count:
            _say("average_last: no epoch of the averaging window was reached; best.pt is the best epoch")
            return
        final = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(self.averager.averaged(final))
        row, preds = self.validate()
        row = {**row, "epoch": self.history[-1]["epoch"], "averaged_epochs": self.averager.epochs}
        self.best = {"value": row[self.cfg.monitor], "epoch": row["epoch"], "val_loss": row["val_loss"],
                     "val_qwk": row["val_qwk"], "averaged_epochs": self.averager.epochs}
        self.save_best(row, preds)
        _say(f"averaged epochs {self.averager.epochs}: val_loss {row['val_loss']:.4f} val_qwk {row['val_qwk']:.4f}")
        self.net.load_state_dict(final)

    def result(self, resumed: bool) -> dict[str, Any]:
        out = self.out
        best = self.best or {}
        return {
            "status": self.status, "resumed": bool(resumed), "epochs_done": self.epoch,
            "global_step": self.global_step, "best_epoch": best.get("epoch"), "best_val_loss": best.get("val_loss"),
            "best_val_qwk": best.get("val_qwk"), "averaged_epochs": best.get("averaged_epochs"),
            "monitor": self.cfg.monitor, "out_dir": str(out), "last": str(out / "last.pt"),
            "best": str(out / "best.pt") if (out / "best.pt").exists() else None,
            "oof": str(out / "oof.csv") if best else None,
            "metrics": str(out / "metrics.csv") if self.history else None,
            "curves": str(out / "curves.png") if self.history else None,
            "config": str(out / "config.json"),
        }


def _say(msg: str) -> None:
    from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

    tqdm.write(msg, file=sys.stderr)


def train_fold(
    cfg: TrainConfig | dict[str, Any],
    table: pd.DataFrame | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or return the finished result of) one fold; see the module docstring.

    ``table``: the labelled rows (``id, grade``, a path column, optionally ``fold``) instead of cfg's files.
    ``on_step``: called after every optimiser step (and any checkpoint it triggered) with
    ``{epoch, step, global_step, trainer}`` (progress hooks, tests).
    Returns ``status`` ("completed" | "early_stopped" | "deadline"), best epoch/metrics and artifact paths.
    """
    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    info = init_distributed()
    try:
        with deterministic(wants_determinism(cfg)):
            return Trainer(cfg, table, on_step, info).fit()
    finally:
        if info.created:
            dist.destroy_process_group()
