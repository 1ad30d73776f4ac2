"""The whole chain through papermill: preprocess -> train (model x fold) -> infer -> blend [-> pseudo rounds].

One YAML file lists the data, the preprocessing and the models; every executed notebook is saved under
``workdir/notebooks`` next to the outputs it made. An overall budget (default Kaggle's 9 h) is split so that
training stops in time for inference and blending: training gets an absolute deadline (it stops cleanly,
resumable), every step gets a per-cell timeout no longer than what is left, and a step that runs out is named.
Rerunning the same config skips finished steps (``run_log.json``) and resumes unfinished training. A step's
key covers its parameters *and* the state of the files it reads (label/test CSVs by content, image folders by
names, sizes and mtimes), so replacing a test image reruns infer and blend and nothing else; a step that runs
makes every later step stale, and the final outputs of those steps (``submission.csv``, the report) are
removed before it starts, so a failed or interrupted run never leaves an older submission looking current.
With ``devices:`` above one slot (run/slots.py), training steps run side by side, each as soon as what it
reads is done and a slot is free.

Size: the plan, the runner and its slot scheduler share Step, the run log and the chain's errors; apart, they
would import each other.

    python -m kaggle_utils.run configs/demo.yaml [--workdir DIR] [--budget-hours H]
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
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
from kaggle_utils.run.slots import (
    Slot,
    SlotStream,
    describe_slots,
    drain,
    duration,
    kernel_manager_class,
    kill_kernel,
    next_result,
    quiet_logger,
    resolve_slots,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = REPO_ROOT / "notebooks"
KAGGLE_BUDGET_S = 9 * 3600
LOG_FILE = "run_log.json"
BLEND_OUTPUTS = ("report.html", "test_blend.csv")  # besides submission.csv: what a blend step leaves as current


class BudgetExceeded(RuntimeError):
    """The overall budget ran out; the message names the step."""


class StepFailed(RuntimeError):
    """A step raised; the message names it, ends with the exception's last lines and the executed notebook."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a step; ``step`` names it (``steps``: every one running, with slots). A rerun
    resumes."""

    def __init__(self, step: str, *others: str) -> None:
        super().__init__(step, *others)
        self.step, self.steps = step, [step, *others]


@dataclass
class Step:
    name: str
    notebook: str
    params: dict[str, Any]
    kind: str = "notebook"  # notebook | pseudo
    meta: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)  # files and folders it reads from outside the chain
    outputs: list[str] = field(default_factory=list)  # final artifacts, removed before it (or a step before) runs

    def key(self, workdir: str | os.PathLike | None = None) -> str:
        """Hash of the notebook, its parameters and its inputs' state, with paths under ``workdir`` written
        relative to it: a workdir that was moved or copied (Kaggle users copy outputs between kernels) keeps
        its keys, while a changed, added or removed input file changes them."""
        params = _relative_to(self.params, str(Path(workdir).resolve())) if workdir is not None else self.params
        state = [input_state(p) for p in self.inputs]
        return hashlib.sha256(json.dumps([self.notebook, params, state], sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]


def input_state(path: str | os.PathLike) -> str:
    """Fingerprint of an input: a file by its content (label and test CSVs are small), a folder by the names,
    sizes and mtimes of its files (an image folder: hashing 88k photographs would take longer than a step)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return "file:" + h.hexdigest()
    if p.is_dir():
        for entry in sorted(os.scandir(p), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()
    return "missing"


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
                params = _preprocess_params(cfg, pre, caches[key], table_dir)
                inputs = [p for s in params["sources"] for p in (s["csv"], s["images"])]
                steps.append(Step(f"preprocess:{caches[key].name}", "preprocess", params, inputs=inputs))
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
                # weight averaging and a size schedule are the fine-tune's unless stage 1 asks for its own
                stage1 = {**spec, "average_last": None, "size_schedule": None, **pcfg}
                params = {**_train_params(stage1, weights, ext), **data, "out_dir": str(out), "fold": 0,
                          "stage": "pretrain", "train_sources": datasets, "extra_csv": None}
                steps.append(Step(f"pretrain:{m['_base']}", "train", params, meta={"deadline": True}))
            pretrained[m["_base"]] = out
            init_from = str(out / f"{init}.pt")
        meta = {"deadline": True, **({"after": f"pretrain:{m['_base']}"} if init_from else {})}
        for fold in folds:
            params = {**_train_params(spec, weights, {comp, *(train_sources or ())}), **data,
                      "out_dir": str(runs_dir / name / f"fold{fold}"), "fold": int(fold), "stage": "finetune",
                      "train_sources": train_sources, "init_from": init_from, "extra_csv": extra}
            steps.append(Step(f"train:{name}:fold{fold}{tag}", "train", params, meta=dict(meta)))
    test = cfg.get("test") or {}
    run_dirs = [str(runs_dir / m["name"]) for m in models]
    preds = workdir / ("preds" if round_no == 0 else f"preds_round{round_no}")
    test_csv = abs_path(test.get("csv")) or str(table_dir / "test.csv")
    infer_params = {"run_dirs": run_dirs, "test_csv": test_csv, "test_images": abs_path(test.get("images")),
                    "test_ext": test.get("ext", ".png"), "out_dir": str(preds), **cfg.get("infer", {})}
    test_inputs = [p for p in (test_csv, infer_params["test_images"]) if p]
    steps.append(Step(f"infer{tag}", "infer", infer_params, inputs=test_inputs))
    blend_dir = workdir / ("blend" if round_no == 0 else f"blend_round{round_no}")
    blend_params = {"run_dirs": run_dirs, "preds_dir": str(preds), "test_csv": test_csv,
                    "test_id_col": "id_code" if test.get("images") else "id", "out_dir": str(blend_dir),
                    "cache_dir": str(first_cache), **cfg.get("blend", {})}
    submission = blend_params.get("submission_path") or str(blend_dir / "submission.csv")
    steps.append(Step(f"blend{tag}", "blend", blend_params, inputs=[test_csv],
                      outputs=[str(submission), *(str(blend_dir / f) for f in BLEND_OUTPUTS)]))
    return steps


def all_steps(cfg: dict[str, Any], workdir: Path) -> list[Step]:
    """Every step of every round, in order (a round's plan depends only on the config, not on results)."""
    rounds = int((cfg.get("pseudo") or {}).get("rounds", 0))
    steps: list[Step] = []
    for round_no in range(rounds + 1):
        if round_no:
            steps.append(_pseudo_step(cfg, workdir, round_no))
        steps += plan(cfg, workdir, round_no)
    return steps


def dependencies(steps: list[Step]) -> dict[str, list[str]]:
    """What each step waits for (and is made stale by): a training step for every earlier step that is not
    training (caches, the table, an earlier round's pseudo labels) and for its model's stage 1, so folds and
    models train side by side; any other step for every step before it (inference reads every fold)."""
    names = {s.name for s in steps}
    out: dict[str, list[str]] = {}
    for i, step in enumerate(steps):
        if step.notebook != "train":
            out[step.name] = [s.name for s in steps[:i]]
            continue
        stage1 = step.meta.get("after")
        out[step.name] = [s.name for s in steps[:i] if s.notebook != "train"] + ([stage1] if stage1 in names else [])
    return out


# ------------------------------------------------------------------------------------------ running


@dataclass
class _Running:
    """A step a slot's thread is executing; the scheduler's thread records its end."""

    step: Step
    slot: Slot
    key: str
    params: dict[str, Any]
    out_nb: Path
    limit: float  # its cell timeout, for the message when it runs out
    started: float
    thread: threading.Thread


class Runner:
    """Executes steps under one budget, in order or on several device slots at once; finished steps (same
    key) are skipped on rerun. Only the thread that calls ``run``/``run_all`` prints the chain's lines and
    writes ``run_log.json``; a slot's thread only executes its step."""

    def __init__(self, workdir: Path, budget_s: float, cell_timeout_s: float, reserve_s: float,
                 notebooks: Path = NOTEBOOKS, progress: bool = True, overwrite: bool = False) -> None:
        self.workdir, self.notebooks, self.progress = workdir, notebooks, progress
        self.overwrite = overwrite  # training steps that run start afresh instead of resuming
        self.start = time.time()
        self.deadline = self.start + budget_s
        self.cell_timeout_s, self.reserve_s = cell_timeout_s, reserve_s
        self.log_path = workdir / LOG_FILE
        self.log: dict[str, Any] = io.read_json(self.log_path) if self.log_path.is_file() else {"steps": {}}
        self.finished: dict[str, float] = {}  # step -> when it finished (in this run, or in the one that ran it)
        self._local = threading.local()  # .slot: the Slot a slot thread executes in (read by _execute)
        self._kernels: dict[int, Any] = {}  # slot index -> the kernel manager of the notebook it runs
        self._lock = threading.Lock()  # stdout lines and the kernel registry, shared by the slots' threads
        self._stopping = False

    def remaining(self) -> float:
        return self.deadline - time.time()

    def _say(self, msg: str) -> None:
        with self._lock:
            print(msg, flush=True)

    def _record(self, step: Step, key: str, status: str, seconds: float, output: str, error: str = "",
                **extra: Any) -> None:
        self.log["steps"][step.name] = {"key": key, "status": status, "seconds": round(seconds, 1),
                                        "output": output, "error": error, "finished": time.time(), **extra}
        io.write_json(self.log_path, self.log)

    def run_all(self, steps: list[Step], slots: list[Slot] | None = None) -> None:
        after = dependencies(steps)
        if slots is None or len(slots) <= 1:
            for i, step in enumerate(steps):
                self.run(step, later=steps[i + 1:], after=after[step.name])
        else:
            self._run_slots(steps, after, slots)

    def _status(self, step: Step, after: list[str] | None) -> tuple[str, dict[str, Any], str]:
        """(key, last record, verdict): ``skip`` when it finished earlier with the same key (parameters and
        inputs) *after* every step it depends on (``after``; None: every step before it) finished; ``changed``
        when its key changed since; else ``run``."""
        done = self.log["steps"].get(step.name, {})
        key = step.key(self.workdir)
        upstream = max((self.finished.get(n, 0.0) for n in (self.finished if after is None else after)), default=0.0)
        fresh = done.get("finished", 0) >= upstream
        if done.get("status") == "ok" and fresh:
            return key, done, "skip" if done.get("key") == key else "changed"
        return key, done, "run"

    def _skip(self, step: Step, done: dict[str, Any]) -> None:
        self._say(f"[run] {step.name}: done earlier, skipped")
        self.finished[step.name] = done["finished"]

    def _prepare(self, step: Step, done: dict[str, Any], verdict: str,
                 later: list[Step]) -> tuple[dict[str, Any], Path, float]:
        """Parameters, executed-notebook path and time left for a step about to run; the final outputs of it
        and of the ``later`` steps are removed first."""
        if verdict == "changed":
            self._say(f"[run] {step.name}: its parameters or input files changed, running it again")
        left = self.remaining()
        if left <= 0:
            raise BudgetExceeded(f"the budget ran out before step {step.name!r}")
        discard_outputs([step, *later])
        params = dict(step.params)
        if step.meta.get("deadline"):  # training stops in time for inference and blending
            params["deadline"] = self.deadline - self.reserve_s
            if done.get("status") == "ok" or self.overwrite:  # inputs changed (or told): train anew
                params["overwrite"] = True
        out_nb = self.workdir / "notebooks" / f"{step.name.replace(':', '_')}.ipynb"
        out_nb.parent.mkdir(parents=True, exist_ok=True)
        return params, out_nb, left

    def run(self, step: Step, later: list[Step] | None = None, after: list[str] | None = None) -> None:
        """Execute ``step`` unless it finished earlier with the same key after every step it depends on (a
        rerun upstream step, e.g. inference with another TTA, makes the rest stale). Before it runs, the final
        outputs of it and of the ``later`` steps are removed."""
        key, done, verdict = self._status(step, after)
        if verdict == "skip":
            self._skip(step, done)
            return
        params, out_nb, left = self._prepare(step, done, verdict, later or [])
        self._say(f"[run] {step.name} ({left / 60:.1f} min of budget left) -> {out_nb}")
        limit = min(self.cell_timeout_s, left)
        t0 = time.time()
        try:
            self._execute(step, params, out_nb, timeout=max(1, int(limit)))
        except (KeyboardInterrupt, Exception) as err:
            self._settle(step, key, params, out_nb, limit, time.time() - t0, err)  # raises the chain's error
        else:
            self._settle(step, key, params, out_nb, limit, time.time() - t0, None)

    def _settle(self, step: Step, key: str, params: dict[str, Any], out_nb: Path, limit: float, seconds: float,
                err: BaseException | None, **extra: Any) -> None:
        """Record how a step ended; an error becomes the chain's (Interrupted, BudgetExceeded, StepFailed)."""
        if err is None:
            self._record(step, key, "ok", seconds, str(out_nb) if step.kind == "notebook" else params["out_csv"],
                         **extra)
            self.finished[step.name] = self.log["steps"][step.name]["finished"]
            return
        if isinstance(err, KeyboardInterrupt):
            self._record(step, key, "interrupted", seconds, str(out_nb), **extra)
            raise Interrupted(step.name) from err
        timed_out = "timeout" in type(err).__name__.lower() or "timed out" in str(err).lower()
        self._record(step, key, "timeout" if timed_out else "failed", seconds, str(out_nb), str(err)[-2000:],
                     **extra)
        if timed_out:
            raise BudgetExceeded(f"step {step.name!r} ran out of time (cell timeout {limit:.0f} s); see "
                                 f"{out_nb}") from err
        where = f"the executed notebook is {out_nb}" if step.kind == "notebook" else "see the traceback above"
        raise StepFailed(f"step {step.name!r} failed: {error_tail(err)}\n  {where}") from err

    # ---- several slots
    def _run_slots(self, steps: list[Step], after: dict[str, list[str]], slots: list[Slot]) -> None:
        """List scheduling: whenever a slot is free, the first waiting step (plan order) whose dependencies
        finished starts on the lowest free slot. A failed step stops new starts; the running ones finish
        (their work counts on rerun) before its error is raised. Ctrl-C kills every slot's kernel."""
        waiting, free = list(steps), list(slots)
        running: dict[int, _Running] = {}
        results: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        failure: Exception | None = None
        try:
            while True:
                if failure is None:
                    try:
                        self._dispatch(steps, waiting, after, free, running, results)
                    except BudgetExceeded as err:
                        failure = err
                if not running:
                    break
                index, err = next_result(results)
                run = running.pop(index)
                free = sorted([*free, run.slot], key=lambda s: s.index)
                try:
                    self._settle(run.step, run.key, run.params, run.out_nb, run.limit, time.time() - run.started,
                                 err, slot=run.slot.index, started=run.started)
                except (BudgetExceeded, StepFailed) as exc:
                    failure = failure or exc
                    if running:
                        self._say(f"[run] [{run.slot.label()}] {run.step.name} failed; waiting for "
                                  f"{', '.join(r.step.name for r in running.values())} to finish (Ctrl-C stops "
                                  "them; a rerun resumes)")
                    continue
                self._say(f"[run] [{run.slot.label(run.step.notebook == 'train')}] {run.step.name} finished in "
                          f"{duration(time.time() - run.started)}")
        except KeyboardInterrupt as err:
            self._interrupt(steps, running, results, err)
        if failure is not None:
            raise failure
        if waiting:  # every dependency is an earlier step, so this cannot happen; never end silently short
            raise RuntimeError(f"steps never became ready: {[s.name for s in waiting]}")

    def _dispatch(self, steps: list[Step], waiting: list[Step], after: dict[str, list[str]], free: list[Slot],
                  running: dict[int, _Running], results: queue.Queue) -> None:
        """Skip or start every waiting step whose dependencies finished, in plan order, while slots are free (a
        skipped step may make later ones ready, hence the loop)."""
        progress = True
        while progress:
            progress = False
            for step in list(waiting):
                if not all(name in self.finished for name in after[step.name]):
                    continue
                key, done, verdict = self._status(step, after[step.name])
                if verdict == "skip":
                    self._skip(step, done)
                elif free:
                    self._launch(step, key, done, verdict, free[0], steps[steps.index(step) + 1:], running, results)
                    free.pop(0)
                else:
                    continue
                waiting.remove(step)
                progress = True

    def _launch(self, step: Step, key: str, done: dict[str, Any], verdict: str, slot: Slot, later: list[Step],
                running: dict[int, _Running], results: queue.Queue) -> None:
        """Start ``step`` in ``slot``'s thread; it is in ``running`` before anything else, so that a Ctrl-C at
        any point names it."""
        params, out_nb, left = self._prepare(step, done, verdict, later)
        training = step.notebook == "train"
        if training:  # the slot's device and thread share, unless the config chose them
            params.update({k: v for k, v in slot.overrides().items() if params.get(k) in (None, "auto")})
        limit = min(self.cell_timeout_s, left)
        thread = threading.Thread(target=self._work, args=(slot, step, params, out_nb, max(1, int(limit)), results),
                                  name=f"slot{slot.index}", daemon=True)
        running[slot.index] = _Running(step, slot, key, params, out_nb, limit, time.time(), thread)
        self._say(f"[run] [{slot.label(training)}] {step.name} ({left / 60:.1f} min of budget left) -> {out_nb}")
        thread.start()

    def _work(self, slot: Slot, step: Step, params: dict[str, Any], out_nb: Path, timeout: int,
              results: queue.Queue) -> None:
        """A slot's thread: execute, and hand the outcome (never a traceback) to the scheduler's thread."""
        self._local.slot = slot
        try:
            self._execute(step, params, out_nb, timeout=timeout)
        except BaseException as err:  # noqa: BLE001 - the scheduler records and raises it
            results.put((slot.index, err))
        else:
            results.put((slot.index, None))

    def _interrupt(self, steps: list[Step], running: dict[int, _Running], results: queue.Queue,
                   err: KeyboardInterrupt) -> None:
        """Ctrl-C (or a step's KeyboardInterrupt) with slots: kill every running kernel, wait for the slots'
        threads, record their steps as interrupted and raise one Interrupted naming them all."""
        self._stopping = True
        with quiet_logger("papermill"):  # "Kernel died while waiting for execute reply" from the killed kernels
            with self._lock:
                kernels = list(self._kernels.values())
            for km in kernels:
                kill_kernel(km)
            for run in running.values():
                if run.thread.ident is not None:  # started
                    run.thread.join(timeout=30)
        ended = dict(drain(results))
        names = set(getattr(err, "steps", []))
        for run in running.values():
            seconds, where = time.time() - run.started, {"slot": run.slot.index, "started": run.started}
            if run.slot.index in ended and ended[run.slot.index] is None:  # it finished as Ctrl-C came: keep it
                self._settle(run.step, run.key, run.params, run.out_nb, run.limit, seconds, None, **where)
                continue
            self._record(run.step, run.key, "interrupted", seconds, str(run.out_nb), **where)
            names.add(run.step.name)
        if not names:
            raise err
        ordered = [s.name for s in steps if s.name in names]
        raise Interrupted(*ordered) from err

    def _kernel_started(self, slot: Slot, km: Any) -> None:
        with self._lock:
            self._kernels[slot.index] = km
            stopping = self._stopping
        if stopping:  # started while Ctrl-C was killing the others
            kill_kernel(km)

    def _execute(self, step: Step, params: dict[str, Any], out_nb: Path, timeout: int) -> None:
        if step.kind == "pseudo":
            from kaggle_utils.inference.pseudo import build_pseudo_round

            build_pseudo_round(**params)
            return
        import papermill as pm

        notebook = self.notebooks / f"{step.notebook}.ipynb"
        params = pack_parameters(notebook, params)
        slot: Slot | None = getattr(self._local, "slot", None)
        extra: dict[str, Any] = {}
        streams: list[SlotStream] = []
        if slot is not None:  # its own environment, a kernel Ctrl-C can kill, its lines on our stdout
            env = slot.env() if step.notebook == "train" else {}
            streams = [SlotStream(f"[slot {slot.index}] ", self._say) for _ in range(2)]  # a bar's partial line
            extra = {"kernel_manager_class": kernel_manager_class(env, lambda km: self._kernel_started(slot, km)),
                     "stdout_file": streams[0], "stderr_file": streams[1]}  # on stderr never joins a print's
        # the kernel's own log stays quiet below ERROR: ipykernel 7 warns about TCP on every start (the kernel
        # listens on localhost), four lines per step that drown the chain's output. The kernel is killed, not
        # asked to shut down: after Ctrl-C a graceful shutdown closes its sockets while the interrupted cell
        # still runs, and ipykernel prints a ZMQError traceback under the chain's one-line message.
        try:
            pm.execute_notebook(str(notebook), str(out_nb), parameters=params,
                                cwd=str(REPO_ROOT), execution_timeout=timeout, progress_bar=False,
                                kernel_name="python3", extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                shutdown_kernel="immediate", **extra)
        finally:
            for stream in streams:
                stream.close()
            if slot is not None:
                with self._lock:
                    self._kernels.pop(slot.index, None)


def discard_outputs(steps: list[Step]) -> None:
    """Remove the final outputs of steps that are about to be redone: until they finish, an older
    ``submission.csv`` must not sit where the new one will appear, looking current."""
    for step in steps:
        for path in step.outputs:
            Path(path).unlink(missing_ok=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_tail(err: BaseException, n_lines: int = 3) -> str:
    """``Type: message`` of the exception (for a notebook, its cell's: ``ValueError: preds is empty``), then
    the last few traceback lines that say where it was raised."""
    tb = getattr(err, "traceback", None)  # papermill's PapermillExecutionError
    if not tb:
        return f"{type(err).__name__}: {err}"
    lines = [ln.rstrip() for ln in _ANSI.sub("", "\n".join(tb)).splitlines() if ln.strip()]
    head = f"{getattr(err, 'ename', 'Error')}: {getattr(err, 'evalue', '')}"
    context = [ln for ln in lines[:-1] if not ln.startswith("-----")][-n_lines:]
    return "\n".join([head, *("    " + ln for ln in context)])


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
    from kaggle_utils.data.assemble import PROBLEMS_FILE

    cfg = load_config(config)
    work = Path(workdir or cfg.get("workdir", "outputs/run")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    io.write_text(work / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    budget = float(budget_s if budget_s is not None else cfg.get("budget_hours", 9) * 3600)
    runner = Runner(work, budget, float(cfg.get("cell_timeout_s", budget)), float(cfg.get("reserve_s", 0)),
                    notebooks, overwrite=overwrite)
    rounds = int((cfg.get("pseudo") or {}).get("rounds", 0))
    slots = resolve_slots(cfg.get("devices", "auto"))
    if len(slots) > 1:
        print(f"[run] {describe_slots(slots)}", flush=True)
    runner.run_all(all_steps(cfg, work), slots)
    final = work / ("blend" if rounds == 0 else f"blend_round{rounds}")
    preds = work / ("preds" if rounds == 0 else f"preds_round{rounds}")
    runner.log["outputs"] = {"submission": str(final / "submission.csv"), "report": str(final / "report.html"),
                             "failed_images": str(preds / FAILED_FILE),
                             "flagged_images": str(preds / FLAGGED_FILE),
                             "skipped_rows": str(work / "data" / PROBLEMS_FILE),
                             "cache_manifests": [str(p) for p in sorted(work.glob("cache*/manifest.csv"))]}
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
    inputs = [p for p in (params["test_csv"], params["test_images"]) if p]
    return Step(f"pseudo:r{round_no}", "pseudo", params, kind="pseudo", inputs=inputs)


def test_summary(outputs: dict[str, Any]) -> str:
    """One line on the test images the submission grades: how many were unreadable (fallback grade) and how
    many were graded but flagged (tiny, nearly black, no retina), with the first few ids and reasons."""
    parts = []
    for key, what in (("failed_images", "unreadable (fallback grade)"), ("flagged_images", "flagged")):
        df = _read_listing(outputs.get(key))
        if df is None:
            parts.append(f"{what}: not recorded")
            continue
        shown = "; ".join(f"{r.id}: {r.reason}" for r in df.head(3).itertuples())
        more = f"; ... {len(df) - 3} more" if len(df) > 3 else ""
        parts.append(f"{len(df)} {what}" + (f" ({shown}{more})" if len(df) else ""))
    return "test images: " + ", ".join(parts)


def training_summary(outputs: dict[str, Any]) -> str:
    """One line on the training data the chain left out: label rows skipped (bad grade, missing image) and
    images that failed to preprocess, with the file that lists the rows."""
    n = problem_counts(outputs)
    listed = f" (listed in {outputs['skipped_rows']})" if n["skipped_rows"] else ""
    return (f"training data: {n['skipped_rows']} label row(s) skipped{listed}, {n['failed_cache']} image(s) "
            "failed to preprocess")


def problem_counts(outputs: dict[str, Any]) -> dict[str, int]:
    """What the exit status counts: unreadable test images, skipped label rows and images that failed to
    preprocess (flagged test images are graded, so they are only listed)."""
    failed, skipped = _read_listing(outputs.get("failed_images")), _read_listing(outputs.get("skipped_rows"))
    # the skipped-rows listing has a line per problem, and a row may have several
    counts = {"failed_images": 0 if failed is None else len(failed),
              "skipped_rows": 0 if skipped is None else len(skipped.drop_duplicates(["source", "row"]))}
    manifests = [_read_listing(p) for p in outputs.get("cache_manifests") or []]
    counts["failed_cache"] = sum(int((m["status"] != "ok").sum()) for m in manifests if m is not None)
    return counts


def _read_listing(path: str | None) -> Any:
    if not path or not Path(path).is_file():
        return None
    return io.read_csv(path, text=None, na_filter=False)
