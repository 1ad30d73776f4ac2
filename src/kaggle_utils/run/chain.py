"""The whole chain through papermill: preprocess -> train (model x fold) -> infer -> blend [-> pseudo rounds].

One YAML file lists the data, the preprocessing and the models; every executed notebook is saved under
``workdir/notebooks`` next to the outputs it made. An overall budget (default Kaggle's 9 h) is split so that
training stops in time for inference and blending: training gets an absolute deadline (it stops cleanly,
resumable), every step gets a per-cell timeout no longer than what is left, and a step that runs out is named.
Rerunning the same config skips finished steps (``run_log.json``) and resumes unfinished training.

    python -m kaggle_utils.run configs/demo.yaml [--workdir DIR] [--budget-hours H]
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kaggle_utils import io
from kaggle_utils.inference.files import FAILED_FILE, FLAGGED_FILE
from kaggle_utils.run.config import (
    abs_path,
    expand_models,
    load_config,
    pretrain_settings,
    source_list,
    source_weights,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = REPO_ROOT / "notebooks"
KAGGLE_BUDGET_S = 9 * 3600
LOG_FILE = "run_log.json"


class BudgetExceeded(RuntimeError):
    """The overall budget ran out; the message names the step."""


@dataclass
class Step:
    name: str
    notebook: str
    params: dict[str, Any]
    kind: str = "notebook"  # notebook | pseudo
    meta: dict[str, Any] = field(default_factory=dict)

    def key(self, workdir: str | os.PathLike | None = None) -> str:
        """Hash of the notebook and its parameters, with paths under ``workdir`` written relative to it: a
        workdir that was moved or copied (Kaggle users copy outputs between kernels) keeps its keys."""
        params = _relative_to(self.params, str(Path(workdir).resolve())) if workdir is not None else self.params
        return hashlib.sha256(json.dumps([self.notebook, params], sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]


def _relative_to(value: Any, root: str) -> Any:
    """``value`` with every string path inside ``root`` rewritten as ``<workdir>/...`` (lists, dicts too)."""
    if isinstance(value, dict):
        return {k: _relative_to(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_to(v, root) for v in value]
    if isinstance(value, str) and (value == root or value.startswith(root + os.sep)):
        return "<workdir>" + value[len(root):]
    return value


def _preprocess_params(cfg: dict[str, Any], pre: dict[str, Any], out: Path, table_dir: Path) -> dict[str, Any]:
    folds, pretrain = cfg.get("folds", {}), cfg.get("pretrain") or {}
    return {
        "sources": source_list(cfg), "out_dir": str(out), "table_dir": str(table_dir),
        "n_folds": int(folds.get("n_folds", 5)), "seed": int(folds.get("seed", 0)),
        "pretrain_val_fraction": float(pretrain.get("val_fraction", 0.0)),
        "workers": int(cfg.get("workers", os.cpu_count() or 1)), **pre,
    }


def _train_params(spec: dict[str, Any], weights: dict[str, float] | None, datasets: set[str]) -> dict[str, Any]:
    params = dict(spec)
    if weights and len(datasets) > 1:  # weights only matter between the datasets a step trains on
        params["source_weights"] = {k: v for k, v in weights.items() if k in datasets}
    return params


def plan(cfg: dict[str, Any], workdir: Path, round_no: int = 0) -> list[Step]:
    """The steps of one round: preprocess (one cache per distinct recipe; the first also builds the table of
    every source), pre-train (stage 1, per model, on external sources), train (model x fold, fine-tuned from
    stage 1 when the model pre-trains), infer, blend."""
    from kaggle_utils.data.assemble import parse_sources

    tag = f":r{round_no}" if round_no else ""
    steps: list[Step] = []
    caches: dict[str, Path] = {}
    base_pre = cfg.get("preprocess", {})
    table_dir = workdir / "data"
    specs = parse_sources(cfg["data"])
    comp = next(s.name for s in specs if s.role == "competition")
    models = expand_models(cfg)
    for m in models:
        pre = {**base_pre, **m.get("preprocess", {})}
        key = json.dumps(pre, sort_keys=True)
        if key not in caches:
            caches[key] = workdir / f"cache{len(caches)}"
            if round_no == 0:
                steps.append(Step(f"preprocess:{caches[key].name}", "preprocess",
                                  _preprocess_params(cfg, pre, caches[key], table_dir)))
        m["_cache"] = caches[key]
    first_cache = next(iter(caches.values()))
    runs_dir = workdir / ("runs" if round_no == 0 else f"runs_round{round_no}")
    defaults = cfg.get("train", {})
    weights = source_weights(cfg)
    extra = str(workdir / f"pseudo_round{round_no}.csv") if round_no else None
    pretrained: dict[str, Path] = {}
    for m in models:
        spec = {k: v for k, v in {**defaults, **m}.items() if not k.startswith("_")}
        folds = spec.pop("folds", list(range(int(cfg.get("folds", {}).get("n_folds", 5)))))
        name = spec.pop("name")
        for key in ("preprocess", "pretrain", "sizes", "seeds"):
            spec.pop(key, None)
        train_sources = spec.pop("train_sources", None)
        data = {"cache_dir": str(m["_cache"]), "folds_csv": str(m["_cache"] / "folds.csv")}
        init_from = None
        if m.get("pretrain"):
            pcfg = pretrain_settings(cfg, m)
            init = pcfg.pop("init", "best")
            datasets = pcfg.pop("sources", None)
            pcfg.pop("val_fraction", None)
            out = workdir / "pretrain" / m["_base"]
            if m["_base"] not in pretrained and round_no == 0:  # seeds of a model share stage 1
                ext = set(datasets or (s.name for s in specs if s.role == "external"))
                stage1 = {**spec, "average_last": None, **pcfg}  # averaging is the fine-tune's unless asked
                params = {**_train_params(stage1, weights, ext), **data, "out_dir": str(out), "fold": 0,
                          "stage": "pretrain", "train_sources": datasets, "extra_csv": None}
                steps.append(Step(f"pretrain:{m['_base']}", "train", params, meta={"deadline": True}))
            pretrained[m["_base"]] = out
            init_from = str(out / f"{init}.pt")
        for fold in folds:
            params = {**_train_params(spec, weights, {comp, *(train_sources or ())}), **data,
                      "out_dir": str(runs_dir / name / f"fold{fold}"), "fold": int(fold), "stage": "finetune",
                      "train_sources": train_sources, "init_from": init_from, "extra_csv": extra}
            steps.append(Step(f"train:{name}:fold{fold}{tag}", "train", params, meta={"deadline": True}))
    test = cfg.get("test") or {}
    run_dirs = [str(runs_dir / m["name"]) for m in models]
    preds = workdir / ("preds" if round_no == 0 else f"preds_round{round_no}")
    test_csv = abs_path(test.get("csv")) or str(table_dir / "test.csv")
    infer_params = {"run_dirs": run_dirs, "test_csv": test_csv, "test_images": abs_path(test.get("images")),
                    "test_ext": test.get("ext", ".png"), "out_dir": str(preds), **cfg.get("infer", {})}
    steps.append(Step(f"infer{tag}", "infer", infer_params))
    blend_dir = workdir / ("blend" if round_no == 0 else f"blend_round{round_no}")
    blend_params = {"run_dirs": run_dirs, "preds_dir": str(preds), "test_csv": test_csv,
                    "test_id_col": "id_code" if test.get("images") else "id", "out_dir": str(blend_dir),
                    "cache_dir": str(first_cache), **cfg.get("blend", {})}
    steps.append(Step(f"blend{tag}", "blend", blend_params))
    return steps


# ------------------------------------------------------------------------------------------ running


class Runner:
    """Executes steps in order under one budget; finished steps (same parameters) are skipped on rerun."""

    def __init__(self, workdir: Path, budget_s: float, cell_timeout_s: float, reserve_s: float,
                 notebooks: Path = NOTEBOOKS, progress: bool = True, overwrite: bool = False) -> None:
        self.workdir, self.notebooks, self.progress = workdir, notebooks, progress
        self.overwrite = overwrite  # training steps that run start afresh instead of resuming
        self.start = time.time()
        self.deadline = self.start + budget_s
        self.cell_timeout_s, self.reserve_s = cell_timeout_s, reserve_s
        self.log_path = workdir / LOG_FILE
        self.log: dict[str, Any] = io.read_json(self.log_path) if self.log_path.is_file() else {"steps": {}}
        self.upstream_finished = 0.0  # when the latest step before the current one finished

    def remaining(self) -> float:
        return self.deadline - time.time()

    def _record(self, step: Step, status: str, seconds: float, output: str, error: str = "") -> None:
        self.log["steps"][step.name] = {"key": step.key(self.workdir), "status": status, "seconds": round(seconds, 1),
                                        "output": output, "error": error, "finished": time.time()}
        io.write_json(self.log_path, self.log)

    def run(self, step: Step) -> None:
        """Execute ``step`` unless it finished earlier with the same parameters *after* every step before
        it in this chain (a rerun upstream step, e.g. inference with another TTA, makes the rest stale)."""
        done = self.log["steps"].get(step.name, {})
        fresh = done.get("finished", 0) >= self.upstream_finished
        if done.get("status") == "ok" and done.get("key") == step.key(self.workdir) and fresh:
            print(f"[run] {step.name}: done earlier, skipped", flush=True)
            self.upstream_finished = max(self.upstream_finished, done["finished"])
            return
        left = self.remaining()
        if left <= 0:
            raise BudgetExceeded(f"the budget ran out before step {step.name!r}")
        params = dict(step.params)
        if step.meta.get("deadline"):  # training stops in time for inference and blending
            params["deadline"] = self.deadline - self.reserve_s
            if done.get("status") == "ok" or self.overwrite:  # inputs changed (or told): train anew
                params["overwrite"] = True
        out_nb = self.workdir / "notebooks" / f"{step.name.replace(':', '_')}.ipynb"
        out_nb.parent.mkdir(parents=True, exist_ok=True)
        print(f"[run] {step.name} ({left / 60:.1f} min of budget left) -> {out_nb}", flush=True)
        t0 = time.time()
        try:
            self._execute(step, params, out_nb, timeout=max(1, int(min(self.cell_timeout_s, left))))
        except Exception as err:
            timed_out = "timeout" in type(err).__name__.lower() or "timed out" in str(err).lower()
            self._record(step, "timeout" if timed_out else "failed", time.time() - t0, str(out_nb), str(err)[-2000:])
            if timed_out:
                raise BudgetExceeded(f"step {step.name!r} ran out of time (cell timeout "
                                     f"{min(self.cell_timeout_s, left):.0f} s); see {out_nb}") from err
            raise RuntimeError(f"step {step.name!r} failed; the executed notebook is {out_nb}:\n{err}") from err
        self._record(step, "ok", time.time() - t0, str(out_nb) if step.kind == "notebook" else params["out_csv"])
        self.upstream_finished = time.time()

    def _execute(self, step: Step, params: dict[str, Any], out_nb: Path, timeout: int) -> None:
        if step.kind == "pseudo":
            from kaggle_utils.inference.pseudo import build_pseudo_round

            build_pseudo_round(**params)
            return
        import papermill as pm

        notebook = self.notebooks / f"{step.notebook}.ipynb"
        params = pack_parameters(notebook, params)
        pm.execute_notebook(str(notebook), str(out_nb), parameters=params,
                            cwd=str(REPO_ROOT), execution_timeout=timeout, progress_bar=False,
                            kernel_name="python3")


def pack_parameters(notebook: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters the notebook does not declare go into its ``overrides`` dict (papermill would only warn
    that they are unknown, and the notebook would never see them)."""
    import papermill as pm

    declared = set(pm.inspect_notebook(str(notebook)))
    extra = {k: v for k, v in params.items() if k not in declared}
    if not extra:
        return params
    if "overrides" not in declared:
        raise ValueError(f"{notebook.name} does not declare parameter(s) {sorted(extra)}")
    return {**{k: v for k, v in params.items() if k in declared}, "overrides": extra}


def run_chain(config: str | os.PathLike | dict[str, Any], workdir: str | os.PathLike | None = None,
              budget_s: float | None = None, notebooks: Path = NOTEBOOKS,
              overwrite: bool = False) -> dict[str, Any]:
    """Run every step of the config (and its pseudo-label rounds); returns the run log. ``overwrite``: training
    steps that run discard what their out_dir holds (a run with other settings) instead of stopping."""
    cfg = load_config(config)
    work = Path(workdir or cfg.get("workdir", "outputs/run")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    io.write_text(work / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    budget = float(budget_s if budget_s is not None else cfg.get("budget_hours", 9) * 3600)
    runner = Runner(work, budget, float(cfg.get("cell_timeout_s", budget)), float(cfg.get("reserve_s", 0)),
                    notebooks, overwrite=overwrite)
    rounds = int((cfg.get("pseudo") or {}).get("rounds", 0))
    for round_no in range(rounds + 1):
        if round_no:
            runner.run(_pseudo_step(cfg, work, round_no))
        for step in plan(cfg, work, round_no):
            runner.run(step)
    final = work / ("blend" if rounds == 0 else f"blend_round{rounds}")
    preds = work / ("preds" if rounds == 0 else f"preds_round{rounds}")
    runner.log["outputs"] = {"submission": str(final / "submission.csv"), "report": str(final / "report.html"),
                             "failed_images": str(preds / FAILED_FILE),
                             "flagged_images": str(preds / FLAGGED_FILE)}
    io.write_json(runner.log_path, runner.log)
    return runner.log


def _pseudo_step(cfg: dict[str, Any], work: Path, round_no: int) -> Step:
    prev = "" if round_no == 1 else f"_round{round_no - 1}"
    pseudo = cfg.get("pseudo") or {}
    first_cache = work / "cache0"
    test = cfg.get("test") or {}
    params = {"test_csv": abs_path(test.get("csv")) or str(work / "data" / "test.csv"),
              "test_images": abs_path(test.get("images")), "test_ext": test.get("ext", ".png"),
              "blend_dir": str(work / f"blend{prev}"), "cache_dir": str(first_cache),
              "out_csv": str(work / f"pseudo_round{round_no}.csv"), "round_no": round_no,
              "soft": bool(pseudo.get("soft", True)), "min_distance": float(pseudo.get("min_distance", 0.0))}
    return Step(f"pseudo:r{round_no}", "pseudo", params, kind="pseudo")


def test_summary(outputs: dict[str, str]) -> str:
    """One line on the test images the submission grades: how many were unreadable (fallback grade) and how
    many were graded but flagged (tiny, nearly black, no retina), with the first few ids and reasons."""
    import pandas as pd

    parts = []
    for key, what in (("failed_images", "unreadable (fallback grade)"), ("flagged_images", "flagged")):
        path = outputs.get(key)
        if not path or not Path(path).is_file():
            parts.append(f"{what}: not recorded")
            continue
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        shown = "; ".join(f"{r.id}: {r.reason}" for r in df.head(3).itertuples())
        more = f"; ... {len(df) - 3} more" if len(df) > 3 else ""
        parts.append(f"{len(df)} {what}" + (f" ({shown}{more})" if len(df) else ""))
    return "test images: " + ", ".join(parts)
