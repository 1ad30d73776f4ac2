"""``python -m kaggle_utils.run CONFIG --plan``: every step the chain would run, on what, and for how long.

Runs nothing and reads only the label files (and a few images, to time their preprocessing), so it takes
seconds and reports config errors before hours of training. Row counts are what the steps will see up to
duplicate removal and decode failures (marked ``~``): folds and duplicate groups are only made by the
preprocess step.

Times are estimates: forward FLOPs per image are counted (torch's FlopCounterMode, batch 1, the real model
at its input size), training costs 3x a forward pass, and the rates below turn FLOPs into seconds. The CPU
rates were measured on this project's 2-core machine (``bench/train.py``-style loops, channels-last);
the GPU rates take the GPU's peak (T4: 65 TFLOP/s fp16 tensor cores; P100: 9.3 fp32) and the achieved
fractions of ``kernel_plan`` (no GPU was available to check them against).

The Kaggle column prices the config's ``accelerator:`` (default ``t4x2``, kernel/accelerators.py) per step
on one of its GPUs; its total is the chain's critical path when every GPU runs a step (``devices: auto``):
training steps are list-scheduled in plan order onto the GPUs, after their stage 1, with the 4 vCPUs' image
loading shared between them. The P100 column stays as a reference row: Kaggle retired it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kaggle_utils import io
from kaggle_utils.kernel import accelerators
from kaggle_utils.kernel.plan import ACHIEVED, CPU_SCALING, GPU_PROFILES, KAGGLE_VCPUS, model_family

# Achieved GFLOP/s here (2 cores), by family: lite0 at 224 px trains at ~23 img/s with the CPU default
# channels_last (13 before it; 43 img/s at 160, 31 at 192) and predicts at ~58 img/s (0.77 GFLOP forward);
# SE-ResNeXt50 at 160 px trains at ~5 img/s and predicts at ~22 img/s (4.3 GFLOP; contiguous, not re-measured).
CPU_GFLOPS = {"train": {"depthwise": 58.0, "dense": 65.0}, "forward": {"depthwise": 40.0, "dense": 95.0}}
# Reading a cached PNG and augmenting it (the "seed" preset) in one thread: measured 2.6 + 1.9 ms at 224 px
# here (0.9 + 0.9 at 128, 5.2 + 3.0 at 320), so it scales with the pixel count.
CPU_LOADER_S_224 = 0.0045
# Kaggle's 4 vCPUs (2 cores x 2 threads) feed the GPU: about 3 threads' worth of loading, i.e. a cap of
# ~670 img/s at 224 px, far above what the models here train at.
KAGGLE_LOADER_WORKERS = KAGGLE_VCPUS * CPU_SCALING


@dataclass
class Cost:
    gflop: float  # forward, per image

    def here(self, family: str, train_imgs: float, fwd_imgs: float, size: int) -> float:
        loader = CPU_LOADER_S_224 * (size / 224) ** 2
        return (train_imgs * (3 * self.gflop / CPU_GFLOPS["train"][family] + loader)
                + fwd_imgs * (self.gflop / CPU_GFLOPS["forward"][family] + loader / 4))

    def gpu(self, profile: str, family: str, train_imgs: float, fwd_imgs: float, size: int,
            sharing: int = 1) -> float:
        """Seconds on one GPU of ``profile`` whose loader shares the kernel's vCPUs with ``sharing`` GPUs."""
        rate = GPU_PROFILES[profile].peak_tflops * 1e3 * ACHIEVED[profile][family]  # GFLOP/s
        loader = CPU_LOADER_S_224 * (size / 224) ** 2 / (KAGGLE_LOADER_WORKERS / max(1, sharing))
        return train_imgs * max(3 * self.gflop / rate, loader) + fwd_imgs * max(self.gflop / rate, loader / 4)

    def p100(self, family: str, train_imgs: float, fwd_imgs: float, size: int) -> float:
        return self.gpu("p100", family, train_imgs, fwd_imgs, size)


def critical_path(rows: list[dict[str, Any]], slots: int, key: str = "kaggle_s") -> float:
    """The chain's wall time with ``slots`` devices, scheduled as the chain runs it: whenever a device is free
    it takes the first training step in plan order whose stage 1 has finished; every other step runs alone,
    after everything before it."""
    clock, segment = 0.0, []  # segment: consecutive training rows between two other steps

    def run_segment(start: float, todo: list[dict[str, Any]]) -> float:
        params = [r["work"]["params"] for r in todo]
        stage1 = {str(Path(p["out_dir"])) for p in params if p.get("stage") == "pretrain"}
        # the stage 1 each step waits for, when that stage 1 is in this segment
        waits = {id(r): str(Path(p["init_from"]).parent) for r, p in zip(todo, params, strict=True)
                 if p.get("init_from") and str(Path(p["init_from"]).parent) in stage1}
        free = [start] * max(1, slots)
        finished: dict[str, float] = {}  # a stage 1's out_dir -> when it finished
        pending = list(todo)

        def ready_at(row: dict[str, Any]) -> float:
            return finished.get(waits[id(row)], float("inf")) if id(row) in waits else start

        while pending:
            k = min(range(len(free)), key=free.__getitem__)
            now = free[k]
            ready = [r for r in pending if ready_at(r) <= now]
            if not ready:  # idle until a stage 1 or another device finishes
                later = [t for t in (*map(ready_at, pending), *free) if now < t < float("inf")]
                free[k] = min(later)
                continue
            row = ready[0]
            pending.remove(row)
            free[k] = now + row[key]
            if row["work"]["params"].get("stage") == "pretrain":
                finished[str(Path(row["work"]["params"]["out_dir"]))] = free[k]
        return max(free)

    for row in rows:
        if row.get("work", {}).get("kind") == "train":
            segment.append(row)
            continue
        if segment:
            clock, segment = run_segment(clock, segment), []
        clock += row[key]
    return run_segment(clock, segment) if segment else clock


_FLOPS: dict[tuple[str, str, int], float] = {}


def forward_gflop(model: str, head: str, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kaggle_utils.models import create_model

    key = (model, head, size)
    if key not in _FLOPS:
        net = create_model(model, head=head, pretrained=False).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, size, size))
        _FLOPS[key] = counter.get_total_flops() / 1e9
    return _FLOPS[key]


def _preprocess_s(table: pd.DataFrame, specs: list[Any], base: dict[str, Any], n: int = 3) -> dict[str, float]:
    """Seconds per image of each source's recipe, timed on its first few images here."""
    from kaggle_utils.data.preprocess import preprocess_image

    out = {}
    for spec in specs:
        paths = table.loc[table["dataset"] == spec.name, "path"].head(n).tolist() or _stand_ins(spec)[:n]
        recipe = spec.recipe(base)
        t0 = time.perf_counter()
        for p in paths:
            preprocess_image(p, recipe)
        out[spec.name] = (time.perf_counter() - t0) / max(1, len(paths))
    return out


def _stand_ins(spec: Any) -> list[str]:
    """Real originals in ../shared/data/raw that time a source whose files are not on this machine."""
    from kaggle_utils.kernel.plan import plan_images

    raw = plan_images()[0].parent
    pattern = "aptos_*.png" if spec.reader == "aptos" else "idrid_*.jpg"
    return [str(p) for p in sorted(raw.glob(pattern))] or [str(p) for p in plan_images()]


def _load_counted(specs: list[Any]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Rows of the sources that are here; the others count as their declared ``rows``."""
    from kaggle_utils.data.assemble import load_specs

    here = [s for s in specs if Path(s.csv).is_file()]
    elsewhere = [s.name for s in specs if s not in here]
    if here:
        table, skipped = load_specs(here)
    else:
        table, skipped = pd.DataFrame(columns=["id", "path", "dataset"]), pd.DataFrame()
    return table, skipped, elsewhere


class Pricing:
    """Seconds of a step's images on the Kaggle accelerator a config names, on one of its GPUs."""

    def __init__(self, name: str | None) -> None:
        self.named = accelerators.resolve(name)
        self.acc = self.named.effective()  # a retired shape runs on its replacement
        self.profile = self.acc.profile
        self.slots = max(1, self.acc.gpus)

    @property
    def label(self) -> str:
        if not self.acc.gpus:
            return "Kaggle CPU"
        gpu = GPU_PROFILES[self.profile].name.split()[0] if self.profile else self.acc.name
        return f"{gpu} x{self.acc.gpus}" if self.acc.gpus > 1 else gpu

    def __call__(self, cost: Cost, family: str, train_imgs: float, fwd_imgs: float, size: int,
                 here_s: float) -> float:
        if not self.acc.gpus:
            return here_s  # Kaggle's 4 vCPUs are 2 cores, like this machine
        if self.profile is None:
            return float("nan")
        return cost.gpu(self.profile, family, train_imgs, fwd_imgs, size, sharing=self.slots)


def describe(cfg: dict[str, Any], workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per step: what it does, on which rows, and its estimated seconds here, on one GPU of the
    config's Kaggle accelerator and on a P100 (reference)."""
    from kaggle_utils.data.assemble import parse_sources
    from kaggle_utils.run import chain, config

    price = Pricing(cfg.get("accelerator"))

    specs = parse_sources(cfg["data"])
    table, skipped, elsewhere = _load_counted(specs)
    counts = {**table["dataset"].value_counts().to_dict(), **{s.name: int(s.rows) for s in specs
                                                              if s.name in elsewhere}}
    comp = next(s for s in specs if s.role == "competition")
    n_folds = int((cfg.get("folds") or {}).get("n_folds", 5))
    n_comp = counts[comp.name] - comp.holdout
    val_fraction = float((cfg.get("pretrain") or {}).get("val_fraction", 0.0))
    models = {m["name"]: m for m in config.expand_models(cfg)}
    test = cfg.get("test") or {}
    test_csv = io.read_csv(test["csv"], text=None, na_filter=False) \
        if test.get("csv") and Path(test["csv"]).is_file() else None
    n_test = (len(test_csv) if test_csv is not None else int(test["rows"])) if test.get("csv") else comp.holdout
    infer_cfg = cfg.get("infer") or {}
    from kaggle_utils.inference.predict import tta_views

    views = tta_views(str(infer_cfg.get("tta", "none")))
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    steps = chain.plan(config.load_config(cfg, plan_only=True), workdir)
    recipes: dict[str, dict[str, Any]] = {}  # cache folder -> its recipe (what the model's steps read)
    for step in steps:
        p = step.params
        if step.notebook == "preprocess":
            n = sum(counts.values())
            recipes[p["out_dir"]] = {k: v for k, v in p.items() if k in _PRE_KEYS}
            per = _preprocess_s(table, specs, recipes[p["out_dir"]])
            here = sum(per[s.name] * counts.get(s.name, 0) for s in specs) / max(1, int(p.get("workers", 1)))
            kaggle = here * max(1, int(p.get("workers", 1))) / KAGGLE_LOADER_WORKERS
            rows.append({"step": step.name, "stage": "data", "trains_on": ", ".join(
                f"{s.name} ({s.role}{', resize only' if s.preprocessed else ''}) {counts.get(s.name, 0)}"
                for s in specs), "rows": f"{n}", "here_s": here, "p100_s": kaggle, "kaggle_s": kaggle,
                "work": {"kind": "preprocess", "base": recipes[p["out_dir"]],
                         "workers": max(1, int(p.get("workers", 1)))}})
            continue
        if step.notebook == "train":
            rows.append(_train_row(step, p, specs, counts, n_comp, n_folds, val_fraction, price))
            rows[-1]["work"]["preprocess"] = recipes.get(p.get("cache_dir", ""), {})
            continue
        if step.notebook == "infer":
            here = p100 = on_kaggle = 0.0
            runs = []
            for name in (Path(d).name for d in p["run_dirs"]):
                m = {**(cfg.get("train") or {}), **models[name]}
                folds = len(m.get("folds") or range(n_folds))
                cost = Cost(forward_gflop(m["model"], m.get("head", "regression"), int(m.get("size", 224))))
                fam = model_family(m["model"])
                fwd = n_test * folds * views + (n_comp * views if infer_cfg.get("oof_tta") else 0)
                one = cost.here(fam, 0, fwd, int(m.get("size", 224)))
                here += one
                p100 += cost.p100(fam, 0, fwd, int(m.get("size", 224)))
                on_kaggle += price(cost, fam, 0, fwd, int(m.get("size", 224)), one)
                runs.append({"name": name, "model": m["model"], "head": m.get("head", "regression"), "pool": m.get("pool", "avg"),
                             "size": int(m.get("size", 224)), "folds": folds,
                             "preprocess": {**(cfg.get("preprocess") or {}), **(m.get("preprocess") or {})}})
            oof = f" + OOF x{views}" if infer_cfg.get("oof_tta") else ""
            rows.append({"step": step.name, "stage": "inference", "trains_on": f"TTA {infer_cfg.get('tta', 'none')}",
                         "rows": f"{n_test} test{oof}", "here_s": here, "p100_s": p100, "kaggle_s": on_kaggle,
                         "work": {"kind": "infer", "runs": runs, "n_test": n_test, "views": views,
                                  "tta": str(infer_cfg.get("tta", "none")),
                                  "n_oof": n_comp if infer_cfg.get("oof_tta") else 0,
                                  "batch_size": int(infer_cfg.get("batch_size", 32))}})
            continue
        row = {"step": step.name, "stage": step.notebook, "trains_on": "", "rows": "", "here_s": 10.0,
               "p100_s": 10.0, "kaggle_s": 10.0}
        if step.notebook == "blend" and runs:  # runs: the infer step's, just above
            row["work"] = {"kind": "blend", "params": p, "runs": runs, "n_oof": n_comp, "n_test": n_test}
        rows.append(row)
    facts = {"skipped_rows": len(skipped), "counts": counts, "n_comp": n_comp, "n_test": n_test,
             "elsewhere": elsewhere, "warnings": _test_warnings(test, test_csv),
             "budget_s": float(cfg.get("budget_hours", 9)) * 3600,
             "samples": {s.name: _samples(table, s) for s in specs},
             "accelerator": price.named, "kaggle_label": price.label, "slots": price.slots,
             "kaggle_total_s": critical_path(rows, price.slots)}
    return rows, facts


def _samples(table: pd.DataFrame, spec: Any, n: int = 8) -> list[str]:
    """A few of the source's own images (spread over its rows), or stand-ins when it is not on this machine."""
    paths = table.loc[table["dataset"] == spec.name, "path"].tolist()
    return paths[:: max(1, len(paths) // n)][:n] if paths else _stand_ins(spec)[:n]


def _test_warnings(test: dict[str, Any], test_csv: pd.DataFrame | None) -> list[str]:
    """What would make inference fail on the test set that is here (``test_csv``, already read): today, an
    extension that fits no image."""
    from kaggle_utils.data.sources import extension_mismatch

    if test_csv is None or not test.get("images"):
        return []
    col = "id_code" if "id_code" in test_csv.columns else test_csv.columns[0]
    wrong = extension_mismatch(test_csv[col].str.strip(), test["images"], test.get("ext", ".png"))
    return [wrong] if wrong else []


_PRE_KEYS = {"size", "crop", "crop_tol", "framing", "resize_mode", "circle", "clahe", "clahe_clip", "clahe_grid",
             "ben_graham", "ben_sigma", "ben_sigma_frac", "ben_remask", "reduced_decode"}


def _train_row(step: Any, p: dict[str, Any], specs: list[Any], counts: dict[str, int], n_comp: int, n_folds: int,
               val_fraction: float, price: Pricing) -> dict[str, Any]:
    external = [s.name for s in specs if s.role == "external"]
    comp = next(s.name for s in specs if s.role == "competition")
    if p["stage"] == "pretrain":
        used = p.get("train_sources") or external
        n = sum(counts.get(d, 0) for d in used)
        val = round(n * val_fraction)
        train, stage = n - val, "stage 1 (pre-train)"
        on = ", ".join(used)
    else:
        extra = p.get("train_sources") or []
        val = round(n_comp / n_folds)
        train = n_comp - val + sum(counts.get(d, 0) for d in extra)
        stage = "fine-tune" if p.get("init_from") else "train"
        on = ", ".join([comp, *extra]) + (" <- " + Path(p["init_from"]).parent.name if p.get("init_from") else "")
    from kaggle_utils.training.config import TrainConfig

    d = TrainConfig()  # a key the config leaves out trains at TrainConfig's default
    size, bs, epochs = int(p.get("size", d.size)), int(p.get("batch_size", d.batch_size)), int(p.get("epochs", d.epochs))
    per_epoch = int(p.get("samples_per_epoch") or train)
    if p.get("max_steps_per_epoch"):
        per_epoch = min(per_epoch, int(p["max_steps_per_epoch"]) * bs)
    head, fam = p.get("head", "regression"), model_family(p["model"])
    cost = Cost(forward_gflop(p["model"], head, size))
    here, p100 = cost.here(fam, 0, epochs * val, size), cost.p100(fam, 0, epochs * val, size)
    on_kaggle = price(cost, fam, 0, epochs * val, size, here)
    for s in epoch_sizes(p, size, epochs):  # progressive resizing: each epoch trains at its own size
        at = Cost(forward_gflop(p["model"], head, s))
        one = at.here(fam, per_epoch, 0, s)
        here, p100 = here + one, p100 + at.p100(fam, per_epoch, 0, s)
        on_kaggle += price(at, fam, per_epoch, 0, s, one)
    extras = [f"{p['model']} {head} @{size}", f"{epochs} ep"]
    if p.get("size_schedule"):
        extras[0] = f"{p['model']} {head} @{'/'.join(map(str, p['size_schedule']))}->{size}"
    if p.get("average_last"):
        extras.append(f"avg last {p['average_last']}")
    if p.get("sampler_rates"):
        extras.append("rates " + ":".join(f"{r:g}" for r in p["sampler_rates"]))
    return {"step": step.name, "stage": stage, "trains_on": on + " | " + ", ".join(extras),
            "rows": f"~{train} train / ~{val} val", "here_s": here, "p100_s": p100, "kaggle_s": on_kaggle,
            "work": {"kind": "train", "params": p, "epochs": epochs, "per_epoch": per_epoch, "val": val}}


def epoch_sizes(params: dict[str, Any], size: int, epochs: int) -> list[int]:
    """The training size of every epoch of a chain's training parameters."""
    from kaggle_utils.training.config import TrainConfig

    cfg = TrainConfig(size=size, epochs=epochs, size_schedule=params.get("size_schedule"))
    return [cfg.epoch_size(epoch) for epoch in range(epochs)]


def hm(s: float) -> str:
    m = int(round(s / 60))
    return f"{m // 60}h{m % 60:02d}" if m >= 60 else f"{max(s, 0) / 60:.1f}m" if s < 600 else f"{m}m"


def format_plan(rows: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    """The plan as a table: each step's time here, on one GPU of the config's Kaggle accelerator and on a P100
    (reference); the Kaggle total is the critical path with a step per GPU. With ``--measure`` (rows carry
    ``measured_s``) a column of measured times, and the budget verdict on the measured total."""
    measured = facts.get("measured")
    label, slots = facts.get("kaggle_label", "T4 x2"), int(facts.get("slots", 1))
    wide = max(len(r["step"]) for r in rows)
    extra = f"  {'measured':>8}" if measured else ""
    col = max(6, len(label))
    head = (f"{'step':<{wide}}  {'stage':<19}  {'rows':<24}  {'here':>6}  {label:>{col}}  {'P100':>6}{extra}"
            "  what")
    lines = [head, "-" * len(head)]

    def cell(v: float) -> str:
        return "-" if v != v else hm(v)  # NaN: an accelerator we have no profile for

    for r in rows:
        m = f"  {hm(r['measured_s']):>8}" if measured else ""
        lines.append(f"{r['step']:<{wide}}  {r['stage']:<19}  {r['rows']:<24}  {hm(r['here_s']):>6}  "
                     f"{cell(r.get('kaggle_s', float('nan'))):>{col}}  {hm(r['p100_s']):>6}{m}  {r['trains_on']}")
    here, p100 = sum(r["here_s"] for r in rows), sum(r["p100_s"] for r in rows)
    kaggle = float(facts.get("kaggle_total_s", float("nan")))
    budget = facts["budget_s"]
    totals = [(here, "here"), (kaggle, f"on Kaggle {label}")]
    if measured:
        totals.append((sum(r["measured_s"] for r in rows), f"measured on {measured['device']}"))
    acc = facts.get("accelerator")
    per = f"{slots} steps at once, one per GPU" if slots > 1 else "one step at a time"
    lines += ["-" * len(head),
              f"total: {hm(here)} here (2 CPU cores), {cell(kaggle)} on Kaggle {label} ({per}; "
              f"accelerator {acc.name if acc else 't4x2'}), P100 reference {hm(p100)} (retired)"
              + (f", {hm(totals[2][0])} measured on {measured['device']}" if measured else "")
              + f"; budget {hm(budget)}: "
              + ", ".join(f"{'fits' if t <= budget else 'past it by ' + hm(t - budget)} {where}"
                          for t, where in totals if t == t),
              *([f"not on this machine: {', '.join(facts['elsewhere'])} (declared rows; preprocessing timed on "
                 "stand-in originals from ../shared/data/raw)"] if facts["elsewhere"] else []),
              f"{facts['skipped_rows']} label row(s) will be skipped (bad grade or missing image); folds and "
              "duplicates are made by the preprocess step, so '~' counts are before duplicate removal.",
              "Times: counted FLOPs x measured CPU rates here; GPUs from their peak and kernel_plan's achieved "
              "fractions, not measured on a GPU."
              + (" Measured: real steps on this machine (below)." if measured else "")]
    if acc is not None and acc.retired:
        lines.append(f"WARNING: accelerator {acc.name!r} is retired on Kaggle: {acc.retired} The plan prices "
                     f"what runs: {label}.")
    if measured:
        lines += measured["lines"]
    lines += [f"WARNING: {w}" for w in facts.get("warnings", [])]
    if kaggle == kaggle and kaggle > 9 * 3600:
        lines.append(f"WARNING: {hm(kaggle)} is past Kaggle's 9 h limit on {label}")
    return "\n".join(lines)
