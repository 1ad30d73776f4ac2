"""What a fold writes into ``cfg.out_dir``:

- ``config.json``  the TrainConfig; a rerun with different result-changing settings is refused (ConfigMismatchError)
  unless ``overwrite=True``.
- ``last.pt``      full training state, written at every epoch end, every ``checkpoint_every_steps`` steps /
  ``checkpoint_every_minutes`` inside an epoch, and when the deadline stops the run. A rerun with the
  same config resumes from it (see :mod:`kaggle_utils.training.loop`).
- ``best.pt``      weights of the best epoch by ``monitor`` + config, metrics and QWK thresholds tuned on the fold.
- ``oof.csv``      ``id, grade, pred, fold`` for the validation fold from the best model (continuous ``pred``).
- ``rows.csv``     ``id, grade[, dataset], split`` (train | val): what this run trained and validated on.
- ``metrics.csv``  one row per epoch: ``epoch, train_loss, val_loss, val_qwk, lr, time``; ``steps.csv`` the
  training loss every ``log_every`` steps; ``curves.png`` loss and QWK per epoch.

:class:`FoldArtifacts` (mixed into the Trainer) writes them and checks the config on rerun.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils import io
from kaggle_utils.training.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from kaggle_utils.training.config import DEFAULT_THRESHOLDS, ConfigMismatchError, normalised, same_place
from kaggle_utils.training.distributed import all_gather

ARTIFACTS = ("last.pt", "best.pt", "oof.csv", "metrics.csv", "steps.csv", "curves.png", "config.json", "rows.csv")


def write_curves(path: str | os.PathLike, history: list[dict[str, Any]]) -> Path:
    """Loss and QWK per epoch. matplotlib's Figure directly: no pyplot state, works headless."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    h = pd.DataFrame(history)
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(h["epoch"], h["train_loss"], "o-", label="train")
    ax1.plot(h["epoch"], h["val_loss"], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(h["epoch"], h["val_qwk"], "o-", color="tab:green")
    ax2.set(xlabel="epoch", ylabel="QWK", title="validation QWK (thresholds 0.5 .. 3.5)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return io.write_figure(path, fig)


class FoldArtifacts:
    """The out_dir side of a :class:`~kaggle_utils.training.loop.Trainer`: the config check on rerun, resume
    from last.pt, the checkpoint contents, best.pt + oof.csv and the epoch tables.

    A mixin so the Trainer reads as the loop alone. It works on the Trainer's state (``cfg, out, dist, net,
    optimizer, schedule, scaler, sampler, averager, train_table, val_table, val_ds, fingerprint`` and the
    epoch counters) and its ``_barrier``.
    """

    # ---- resume / compatibility
    def prepare_out_dir(self) -> bool:
        """Check out_dir against this config; returns True when there is a last.pt to resume from."""
        last = self.out / "last.pt"
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            io.sweep_temp_files(self.out)
            if self.cfg.overwrite:
                for name in ARTIFACTS:
                    with contextlib.suppress(FileNotFoundError):
                        (self.out / name).unlink()
        self._barrier()
        if not last.exists():
            if self.dist.is_main:
                self.cfg.to_json(self.out / "config.json")
                self._write_rows()
            self._barrier()
            return False
        saved_path = self.out / "config.json"
        saved = io.read_json(saved_path) if saved_path.exists() else load_checkpoint(last)["config"]
        mine = self.cfg.result_fields()
        diffs = {k: (saved.get(k), v) for k, v in mine.items() if normalised(saved.get(k)) != normalised(v)
                 and not same_place(k, saved, self.cfg.to_dict())}
        if diffs:
            lines = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise ConfigMismatchError(
                f"{self.out} holds a run with different settings ({lines}). Use the same config to resume, "
                "a new out_dir, or overwrite=True (--overwrite) to start over."
            )
        return True

    def resume(self) -> None:
        ck = load_checkpoint(self.out / "last.pt")  # on CPU: RNG states must stay CPU tensors
        if ck.get("fingerprint") != self.fingerprint:
            raise ConfigMismatchError(
                f"{self.out / 'last.pt'} was trained on different rows (ids/grades/folds changed); "
                "use overwrite=True to start over"
            )
        self.net.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.scaler.load_state_dict(ck["scaler"])
        self.sampler.load_state_dict(ck["sampler"])
        self.epoch, self.step, self.global_step = ck["epoch"], ck["step"], ck["global_step"]
        self.history, self.step_log = ck["history"], ck["step_log"]
        self.best, self.bad_epochs, self.status = ck["best"], ck["bad_epochs"], ck["status"]
        self.epoch_loss_sum, self.epoch_count, self.epoch_time = ck["epoch_sums"]
        if self.averager is not None:
            self.averager.load_state_dict(ck.get("averager"))
        rngs = ck["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # different process count: order is lost anyway (the sampler refused mid-epoch states)
            seed_everything(self.cfg.seed * 1000 + self.global_step + self.dist.rank)

    # ---- checkpoints and artifacts
    def checkpoint_state(self) -> dict[str, Any]:
        rngs = all_gather(rng_state(), self.dist)  # collective: every rank calls this
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(position=self.step * self.cfg.batch_size),
            "rng": rngs,
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "history": self.history,
            "step_log": self.step_log,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "status": self.status,
            "epoch_sums": (self.epoch_loss_sum, self.epoch_count, self.epoch_time),
            "fingerprint": self.fingerprint,
            "model_meta": self._model_meta(),
            "averager": self.averager.state_dict() if self.averager is not None else None,
            "saved_at": time.time(),
        }

    def _write_rows(self) -> None:
        """``rows.csv``: which ids trained and which validated (audits: e.g. stage 1 saw no validation image)."""
        cols = [c for c in ("id", "grade", "dataset") if c in self.train_table.columns]
        rows = pd.concat([self.train_table[cols].assign(split="train"), self.val_table[cols].assign(split="val")])
        io.write_csv(self.out / "rows.csv", rows)

    def _model_meta(self) -> dict[str, Any]:
        return {k: getattr(self.net, k, None) for k in ("name", "head", "pool")} | {
            "mean": list(getattr(self.net, "mean", None) or []), "std": list(getattr(self.net, "std", None) or [])}

    def _preprocess_recipe(self) -> dict[str, Any] | None:
        """The cache's preprocessing, kept in best.pt so inference needs only the checkpoint (Kaggle)."""
        recipe = Path(self.cfg.cache_dir or "") / "preprocess.json"
        return io.read_json(recipe) if self.cfg.cache_dir and recipe.is_file() else None

    def _write_tables(self) -> None:
        if self.history and self._tables_at != len(self.history):  # epoch tables change at epoch ends only
            io.write_csv(self.out / "metrics.csv", pd.DataFrame(self.history))
            write_curves(self.out / "curves.png", self.history)
            self._tables_at = len(self.history)
        if self.step_log:
            io.write_csv(self.out / "steps.csv", pd.DataFrame(self.step_log))

    def save_best(self, row: dict[str, Any], preds: np.ndarray) -> None:
        from kaggle_utils.metrics import optimise_thresholds, qwk

        if not self.dist.is_main:
            return
        grades = np.rint(self.val_ds.grades).astype(int)
        try:
            thresholds = [float(t) for t in optimise_thresholds(preds, grades)]
        except Exception:  # tiny folds can defeat the optimiser; defaults are still a usable answer
            thresholds = list(DEFAULT_THRESHOLDS)
        from kaggle_utils.metrics import apply_thresholds

        tuned = float(qwk(grades, apply_thresholds(preds, thresholds))) if len(preds) else float("nan")
        save_checkpoint(self.out / "best.pt", {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "model": self.net.state_dict(),
            "epoch": row["epoch"], "val_loss": row["val_loss"], "val_qwk": row["val_qwk"],
            "val_qwk_tuned": tuned, "thresholds": thresholds, "model_meta": self._model_meta(),
            "preprocess": self._preprocess_recipe(), "averaged_epochs": row.get("averaged_epochs"),
        })
        oof = pd.DataFrame({"id": self.val_table["id"], "grade": grades, "pred": preds, "fold": self.cfg.fold})
        io.write_csv(self.out / "oof.csv", oof)
