"""The chain's YAML: read, check every key (one clear error per mistake), expand models over seeds and sizes."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from kaggle_utils import io

TOP_KEYS = {"workdir", "budget_hours", "reserve_s", "workers", "cell_timeout_s", "data", "preprocess", "folds",
            "pretrain", "train", "models", "test", "infer", "blend", "pseudo", "accelerator", "devices"}
MODEL_KEYS = {"name", "sizes", "seeds", "folds", "preprocess", "pretrain", "train_sources"}
PRETRAIN_KEYS = {"val_fraction", "sources", "init"}
CHAIN_FIELDS = {"out_dir", "cache_dir", "table_csv", "folds_csv", "fold", "init_from", "deadline"}  # set by plan


def load_config(path: str | os.PathLike | dict[str, Any], plan_only: bool = False) -> dict[str, Any]:
    """Read and check a chain config: unknown keys, missing files and sources without rows are errors here,
    before hours of training (``--plan`` shows them without running anything). ``plan_only``: a source or
    test set whose files are elsewhere (a Kaggle config planned locally) is fine when it declares ``rows``."""
    if isinstance(path, dict):
        cfg, where = copy.deepcopy(path), "config"
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} not found")
        cfg, where = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}, str(path)
    try:
        check_config(cfg, plan_only)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err
    return cfg


def check_config(cfg: dict[str, Any], plan_only: bool = False) -> None:
    from kaggle_utils.data.assemble import parse_sources
    from kaggle_utils.data.preprocess import PreprocessConfig
    from kaggle_utils.training.config import TrainConfig

    for key in ("data", "models"):
        if key not in cfg:
            raise ValueError(f"missing top-level '{key}' section")
    _unknown("top-level", cfg, TOP_KEYS)
    check_devices(cfg.get("devices", "auto"))
    if not cfg["models"]:
        raise ValueError("'models' lists no model to train")
    names = [m.get("name") for m in cfg["models"]]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"every model needs a unique 'name', got {names}")
    specs = parse_sources(cfg["data"])
    train_fields = set(TrainConfig.__dataclass_fields__) - CHAIN_FIELDS
    _unknown("train", cfg.get("train") or {}, train_fields)
    _unknown("pretrain", cfg.get("pretrain") or {}, train_fields | PRETRAIN_KEYS)
    _unknown("folds", cfg.get("folds") or {}, {"n_folds", "seed"})
    PreprocessConfig.from_dict(cfg.get("preprocess") or {})
    external = {s.name for s in specs if s.role == "external"}
    for m in cfg["models"]:
        _unknown(f"model {m['name']!r}", m, train_fields | MODEL_KEYS)
        PreprocessConfig.from_dict({**(cfg.get("preprocess") or {}), **(m.get("preprocess") or {})})
        pre = m.get("pretrain")
        if pre:
            _unknown(f"model {m['name']!r} pretrain", pre if isinstance(pre, dict) else {},
                     train_fields | PRETRAIN_KEYS)
            if not external:
                raise ValueError(f"model {m['name']!r} pre-trains but no data source has role: external")
        for key in ("train_sources",):
            bad = sorted(set(m.get(key) or ()) - external)
            if bad:
                raise ValueError(f"model {m['name']!r} {key} {bad}: not external sources ({sorted(external)})")
        bad = sorted(set(pretrain_settings(cfg, m).get("sources") or ()) - external) if pre else []
        if bad:
            raise ValueError(f"model {m['name']!r} pretrain sources {bad}: not external sources ({sorted(external)})")
    for spec in specs:
        for what, p in (("csv", spec.csv), ("images", spec.images)):
            if not Path(p).exists() and not (plan_only and spec.rows):
                raise FileNotFoundError(f"source {spec.name!r}: {what} {p} does not exist")
    test = cfg.get("test") or {}
    _unknown("test", test, {"csv", "images", "ext", "rows"})
    for what in ("csv", "images"):
        if test.get(what) and not Path(test[what]).exists() and not (plan_only and test.get("rows")):
            raise FileNotFoundError(f"test {what} {test[what]} does not exist")
    if not test.get("csv") and not any(s.holdout for s in specs):
        raise ValueError("no test set: give 'test: {csv, images}' or a 'holdout' on the competition source")


def check_devices(value: Any) -> None:
    """``devices``: ``auto`` (every CUDA GPU, else one slot) or how many steps run at once (run/slots.py)."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"devices: {value!r}; expected auto or a positive integer (steps run at once, one per "
                         "GPU, or on the CPU one per share of the cores)")


def _unknown(where: str, section: dict[str, Any], known: set[str]) -> None:
    if not isinstance(section, dict):
        raise TypeError(f"{where} must be a mapping, got {type(section).__name__}")
    io.check_keys(f"{where} key(s)", section, known)


def abs_path(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def source_list(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The config's sources as plain dicts with absolute paths (the preprocess notebook's ``sources``)."""
    from kaggle_utils.data.assemble import parse_sources

    return [{**dataclasses.asdict(s), "csv": abs_path(s.csv), "images": abs_path(s.images)}
            for s in parse_sources(cfg["data"])]


def expand_models(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per trained run: ``sizes: [..]`` and ``seeds: [..]`` multiply a model (1st place: 2 seeds x 4
    architectures; 2nd/4th: one model at several input sizes). ``_base`` names what the seeds share."""
    out = []
    for m in cfg["models"]:
        sizes, seeds = m.get("sizes"), m.get("seeds")
        for size in sizes or [None]:
            base = m["name"] if size is None or len(sizes) == 1 else f"{m['name']}_{size}"
            for seed in seeds or [None]:
                e = {k: v for k, v in m.items() if k not in ("sizes", "seeds")}
                e["name"] = base if seed is None or len(seeds) == 1 else f"{base}_s{seed}"
                e["_base"] = base
                if size is not None:
                    e["size"] = size
                if seed is not None:
                    e["seed"] = seed
                out.append(e)
    names = [e["name"] for e in out]
    if len(set(names)) != len(names):
        raise ValueError(f"expanded model names repeat: {names}")
    return out


def pretrain_settings(cfg: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    own = m.get("pretrain")
    return {**(cfg.get("pretrain") or {}), **(own if isinstance(own, dict) else {})}


def source_weights(cfg: dict[str, Any]) -> dict[str, float] | None:
    from kaggle_utils.data.assemble import parse_sources

    weights = {s.name: float(s.weight) for s in parse_sources(cfg["data"])}
    return weights if any(w != 1.0 for w in weights.values()) else None
