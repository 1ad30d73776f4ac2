"""The whole chain through papermill: preprocess -> train (model x fold) -> infer -> blend [-> pseudo rounds].

One YAML file lists the data, the preprocessing and the models; every executed notebook is saved under
``workdir/notebooks`` next to the outputs it made. An overall budget (default Kaggle's 9 h) is split so that
training stops in time for inference and blending: training gets an absolute deadline (it stops cleanly,
resumable), every step gets a per-cell timeout no longer than what is left, and a step that runs out is named.
Rerunning the same config skips finished steps (``run_log.json``) and resumes unfinished training.

    python -m kaggle_utils.run configs/demo.yaml [--workdir DIR] [--budget-hours H]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import io

REPO_ROOT = Path(__file__).resolve().parents[2]
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

    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.notebook, self.params], sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for key in ("data", "models"):
        if key not in cfg:
            raise ValueError(f"{path}: missing top-level '{key}' section")
    if not cfg["models"]:
        raise ValueError(f"{path}: 'models' lists no model to train")
    names = [m.get("name") for m in cfg["models"]]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"{path}: every model needs a unique 'name', got {names}")
    return cfg


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _preprocess_params(cfg: dict[str, Any], pre: dict[str, Any], out: Path) -> dict[str, Any]:
    data, folds = cfg["data"], cfg.get("folds", {})
    return {
        "source": data.get("source", "aptos"), "labels_csv": _abs(data["csv"]), "images_dir": _abs(data["images"]),
        "out_dir": str(out), "holdout": int(data.get("holdout", 0)), "n_folds": int(folds.get("n_folds", 5)),
        "seed": int(folds.get("seed", 0)), "workers": int(cfg.get("workers", os.cpu_count() or 1)), **pre,
    }


def plan(cfg: dict[str, Any], workdir: Path, round_no: int = 0) -> list[Step]:
    """The steps of one round; models with different preprocessing get their own cache."""
    tag = f":r{round_no}" if round_no else ""
    steps: list[Step] = []
    caches: dict[str, Path] = {}
    base_pre = cfg.get("preprocess", {})
    holdout_cache = None
    for m in cfg["models"]:
        pre = {**base_pre, **m.get("preprocess", {})}
        key = json.dumps(pre, sort_keys=True)
        if key not in caches:
            caches[key] = workdir / f"cache{len(caches)}"
            holdout_cache = holdout_cache or caches[key]
            if round_no == 0:
                steps.append(Step(f"preprocess:{caches[key].name}", "preprocess",
                                  _preprocess_params(cfg, pre, caches[key])))
        m["_cache"] = caches[key]
    runs_dir = workdir / ("runs" if round_no == 0 else f"runs_round{round_no}")
    defaults = cfg.get("train", {})
    extra = str(workdir / f"pseudo_round{round_no}.csv") if round_no else None
    for m in cfg["models"]:
        spec = {k: v for k, v in {**defaults, **m}.items() if not k.startswith("_")}
        folds = spec.pop("folds", list(range(int(cfg.get("folds", {}).get("n_folds", 5)))))
        name = spec.pop("name")
        spec.pop("preprocess", None)
        for fold in folds:
            params = {**spec, "cache_dir": str(m["_cache"]), "folds_csv": str(m["_cache"] / "folds.csv"),
                      "out_dir": str(runs_dir / name / f"fold{fold}"), "fold": int(fold), "extra_csv": extra}
            steps.append(Step(f"train:{name}:fold{fold}{tag}", "train",
                              params, meta={"deadline": True}))
    test = cfg.get("test") or {}
    run_dirs = [str(runs_dir / m["name"]) for m in cfg["models"]]
    preds = workdir / ("preds" if round_no == 0 else f"preds_round{round_no}")
    test_csv = _abs(test.get("csv")) or str(holdout_cache / "test.csv")
    infer_params = {"run_dirs": run_dirs, "test_csv": test_csv, "test_images": _abs(test.get("images")),
                    "test_ext": test.get("ext", ".png"), "out_dir": str(preds), **cfg.get("infer", {})}
    steps.append(Step(f"infer{tag}", "infer", infer_params))
    blend_dir = workdir / ("blend" if round_no == 0 else f"blend_round{round_no}")
    blend_params = {"run_dirs": run_dirs, "preds_dir": str(preds), "test_csv": test_csv,
                    "test_id_col": "id_code" if test.get("images") else "id", "out_dir": str(blend_dir),
                    "cache_dir": str(holdout_cache), **cfg.get("blend", {})}
    steps.append(Step(f"blend{tag}", "blend", blend_params))
    return steps


# ------------------------------------------------------------------------------------------ running


class Runner:
    """Executes steps in order under one budget; finished steps (same parameters) are skipped on rerun."""

    def __init__(self, workdir: Path, budget_s: float, cell_timeout_s: float, reserve_s: float,
                 notebooks: Path = NOTEBOOKS, progress: bool = True) -> None:
        self.workdir, self.notebooks, self.progress = workdir, notebooks, progress
        self.start = time.time()
        self.deadline = self.start + budget_s
        self.cell_timeout_s, self.reserve_s = cell_timeout_s, reserve_s
        self.log_path = workdir / LOG_FILE
        self.log: dict[str, Any] = io.read_json(self.log_path) if self.log_path.is_file() else {"steps": {}}
        self.upstream_finished = 0.0  # when the latest step before the current one finished

    def remaining(self) -> float:
        return self.deadline - time.time()

    def _record(self, step: Step, status: str, seconds: float, output: str, error: str = "") -> None:
        self.log["steps"][step.name] = {"key": step.key(), "status": status, "seconds": round(seconds, 1),
                                        "output": output, "error": error, "finished": time.time()}
        io.write_json(self.log_path, self.log)

    def run(self, step: Step) -> None:
        """Execute ``step`` unless it finished earlier with the same parameters *after* every step before
        it in this chain (a rerun upstream step, e.g. inference with another TTA, makes the rest stale)."""
        done = self.log["steps"].get(step.name, {})
        fresh = done.get("finished", 0) >= self.upstream_finished
        if done.get("status") == "ok" and done.get("key") == step.key() and fresh:
            print(f"[run] {step.name}: done earlier, skipped", flush=True)
            self.upstream_finished = max(self.upstream_finished, done["finished"])
            return
        left = self.remaining()
        if left <= 0:
            raise BudgetExceeded(f"the budget ran out before step {step.name!r}")
        params = dict(step.params)
        if step.meta.get("deadline"):  # training stops in time for inference and blending
            params["deadline"] = self.deadline - self.reserve_s
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
            from .ensemble import build_pseudo_round

            build_pseudo_round(**params)
            return
        import papermill as pm

        pm.execute_notebook(str(self.notebooks / f"{step.notebook}.ipynb"), str(out_nb), parameters=params,
                            cwd=str(REPO_ROOT), execution_timeout=timeout, progress_bar=False,
                            kernel_name="python3")


def run_chain(config: str | os.PathLike | dict[str, Any], workdir: str | os.PathLike | None = None,
              budget_s: float | None = None, notebooks: Path = NOTEBOOKS) -> dict[str, Any]:
    """Run every step of the config (and its pseudo-label rounds); returns the run log."""
    cfg = copy.deepcopy(config) if isinstance(config, dict) else load_config(config)
    work = Path(workdir or cfg.get("workdir", "outputs/run")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    io.write_text(work / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    budget = float(budget_s if budget_s is not None else cfg.get("budget_hours", 9) * 3600)
    runner = Runner(work, budget, float(cfg.get("cell_timeout_s", budget)), float(cfg.get("reserve_s", 0)),
                    notebooks)
    rounds = int((cfg.get("pseudo") or {}).get("rounds", 0))
    for round_no in range(rounds + 1):
        if round_no:
            runner.run(_pseudo_step(cfg, work, round_no))
        for step in plan(cfg, work, round_no):
            runner.run(step)
    final = work / ("blend" if rounds == 0 else f"blend_round{rounds}")
    runner.log["outputs"] = {"submission": str(final / "submission.csv"), "report": str(final / "report.html")}
    io.write_json(runner.log_path, runner.log)
    return runner.log


def _pseudo_step(cfg: dict[str, Any], work: Path, round_no: int) -> Step:
    prev = "" if round_no == 1 else f"_round{round_no - 1}"
    pseudo = cfg.get("pseudo") or {}
    first_cache = work / "cache0"
    test = cfg.get("test") or {}
    params = {"test_csv": _abs(test.get("csv")) or str(first_cache / "test.csv"),
              "test_images": _abs(test.get("images")), "test_ext": test.get("ext", ".png"),
              "blend_dir": str(work / f"blend{prev}"), "cache_dir": str(first_cache),
              "out_csv": str(work / f"pseudo_round{round_no}.csv"), "round_no": round_no,
              "soft": bool(pseudo.get("soft", True)), "min_distance": float(pseudo.get("min_distance", 0.0))}
    return Step(f"pseudo:r{round_no}", "pseudo", params, kind="pseudo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML parameters file (see configs/)")
    parser.add_argument("--workdir", help="output folder (default: the config's workdir)")
    parser.add_argument("--budget-hours", type=float, help="overall budget (default: config, else 9)")
    args = parser.parse_args(argv)
    budget = None if args.budget_hours is None else args.budget_hours * 3600
    try:
        log = run_chain(args.config, args.workdir, budget)
    except BudgetExceeded as err:
        print(f"[run] stopped: {err}", file=sys.stderr)
        return 3
    total = sum(s["seconds"] for s in log["steps"].values())
    print(f"[run] all steps done ({total / 60:.1f} min of step time)")
    for key, path in log.get("outputs", {}).items():
        print(f"[run] {key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
