"""Several label sources -> one table: roles, cross-source duplicates, folds, and a pre-training split.

Every APTOS 2019 winner trained on more than the competition's images: stage 1 on external data (Kaggle DR
2015 / EyePACS, IDRiD, Messidor), stage 2 fine-tuning each fold on the competition data. This module is the
data side of that. A :class:`SourceSpec` names one label file and image folder, its reader, its *role*
(``competition``: the one source whose folds are scored and whose recipe inference uses; ``external``:
training only), its own preprocessing (or ``preprocessed: true``, resize only, for copies that are already
cropped and filtered) and a sampling weight.

:func:`build_table` makes the table once per chain (``table_dir/folds.csv``, reused while its inputs stay
the same):

* perceptual-hash duplicate groups over *all* sources together, merged with EyePACS patients (both eyes of a
  patient correlate), so no group straddles folds;
* an external image that duplicates any competition image (a validation or held-out one) is dropped and
  listed in ``dropped_duplicates.csv``: otherwise stage 1 would have seen validation images;
* grade-stratified, group-aware folds on the competition rows (external rows get ``fold = -1``), and an
  optional held-out test split of the competition rows (``test.csv``);
* ``pretrain_val`` marks a grouped, stratified share of the external rows that validates stage 1.

:func:`build_caches` preprocesses each source with its own recipe into ``out_dir/<source>/`` and writes a
union ``manifest.csv`` (so :func:`kaggle_utils.data.cache.load_cache` reads the whole thing) plus the competition
recipe as ``preprocess.json`` (what a checkpoint carries to inference). :func:`stage_table` selects the rows
of one training stage. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils import io
from kaggle_utils.data import cache, folds, labels, sources
from kaggle_utils.data.preprocess import PreprocessConfig

ROLES = ("competition", "external")
STAGES = ("pretrain", "finetune")
TABLE_FILE = "folds.csv"
DROPPED_FILE = "dropped_duplicates.csv"
PROBLEMS_FILE = "skipped_rows.csv"
TEST_FILE = "test.csv"
STAMP_FILE = "assemble.json"
DATASET_COLUMN = "dataset"  # the SourceSpec name (``source`` stays the reader kind)
GROUP = "group"  # duplicate groups merged with patients
RESIZE_ONLY = {"crop": False, "framing": None, "circle": False, "clahe": False, "ben_graham": False}


@dataclass
class SourceSpec:
    """One source of labelled images as a config lists it (``data: sources:``)."""

    name: str
    csv: str
    images: str
    reader: str = "aptos"  # aptos | eyepacs | idrid | messidor | generic
    role: str = "competition"
    ext: str | None = None  # image extension; None: the reader's default
    preprocessed: bool = False  # already cropped/filtered: resize only
    # preprocessed copies that are Ben-filtered: "ben" makes inference bring natural-colour test photographs to
    # that look first (PreprocessConfig.natural), so the models grade a clinic's own photographs
    natural: str = "as_is"
    preprocess: dict[str, Any] = field(default_factory=dict)  # overrides of the model's preprocessing
    weight: float = 1.0  # relative sampling weight of this source's rows
    holdout: int = 0  # competition only: rows held back as a local test set
    max_rows: int | None = None  # a stratified subsample (quick recipes); None: all rows
    rows: int | None = None  # expected rows, for --plan on a machine without the files (a Kaggle config)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"source {self.name!r}: role {self.role!r}; expected one of {ROLES}")
        if self.reader.lower() not in sources.LOADERS:
            raise ValueError(f"source {self.name!r}: unknown reader {self.reader!r}; "
                             f"expected one of {sorted(sources.LOADERS)}")
        if not self.weight > 0:
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")
        if self.holdout and self.role != "competition":
            raise ValueError(f"source {self.name!r}: only the competition source can hold images out")
        if not self.name or any(c in self.name for c in "/\\: "):
            raise ValueError(f"source name {self.name!r} must be non-empty, without '/', ':' or spaces")
        if self.natural != "as_is" and not self.preprocessed:
            raise ValueError(f"source {self.name!r}: 'natural: {self.natural}' is for 'preprocessed: true' copies")
        if self.preprocessed and self.preprocess:
            raise ValueError(f"source {self.name!r}: 'preprocessed: true' (resize only) excludes 'preprocess'")
        PreprocessConfig.from_dict({k: v for k, v in self.preprocess.items()})  # unknown keys fail here

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSpec:
        return io.dataclass_from_dict(cls, data)

    def recipe(self, base: dict[str, Any]) -> PreprocessConfig:
        """This source's preprocessing for a model whose recipe is ``base``."""
        own = {**RESIZE_ONLY, "natural": self.natural} if self.preprocessed else self.preprocess
        return PreprocessConfig.from_dict({**base, **own})


def parse_sources(data: dict[str, Any]) -> list[SourceSpec]:
    """``data:`` of a chain config: a ``sources`` list, or the single-source form (source/csv/images/holdout)."""
    if "sources" in data:
        extra = sorted(set(data) - {"sources"})
        if extra:
            raise ValueError(f"data: {extra} next to 'sources'; put them inside a source")
        specs = [SourceSpec.from_dict(dict(s)) for s in data["sources"]]
    else:
        io.check_keys("data key(s)", data, {"source", "csv", "images", "holdout", "ext", "rows", "sources"})
        missing = [k for k in ("csv", "images") if k not in data]
        if missing:
            raise ValueError(f"data: missing {missing}")
        kind = data.get("source", "aptos")
        specs = [SourceSpec(name=kind, reader=kind, csv=data["csv"], images=data["images"],
                            holdout=int(data.get("holdout", 0)), ext=data.get("ext"), rows=data.get("rows"))]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"data: source names must be unique, got {names}")
    n_comp = sum(s.role == "competition" for s in specs)
    if n_comp != 1:
        raise ValueError(f"data: exactly one source must have role 'competition' (its folds are scored), "
                         f"found {n_comp}")
    return specs


def competition(specs: list[SourceSpec]) -> SourceSpec:
    return next(s for s in specs if s.role == "competition")


# ------------------------------------------------------------------------------------------------ table


def load_specs(specs: list[SourceSpec], root: str | os.PathLike = ".") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, skipped rows) of every source; external ids become ``<name>:<id>`` so ids stay unique
    whatever they are combined with, and the competition's ids stay as Kaggle spells them."""
    tables, reports = [], []
    for spec in specs:
        if not Path(_path(spec.csv, root)).is_file():
            raise FileNotFoundError(f"source {spec.name!r}: csv {spec.csv} does not exist")
        kw = {} if spec.ext is None else {"ext": spec.ext}
        table, report = sources.load_source(spec.reader, _path(spec.csv, root), _path(spec.images, root),
                                            on_error="skip", return_report=True, **kw)
        if table.empty:
            raise labels.SourceError(f"source {spec.name!r} ({spec.csv}) has no usable row; "
                                      f"{len(report)} row(s) skipped, e.g. {report.head(3).to_dict('records')}")
        if spec.max_rows and len(table) > spec.max_rows:
            table = _subsample(table, spec.max_rows)
        if spec.role == "external":
            table["id"] = spec.name + ":" + table["id"].astype(str)
        tables.append(table.assign(**{DATASET_COLUMN: spec.name, "role": spec.role}))
        reports.append(report.assign(dataset=spec.name))
    table = sources.combine(tables)
    return table, pd.concat(reports, ignore_index=True)


def _path(p: str, root: str | os.PathLike) -> str:
    return str(Path(p) if Path(p).is_absolute() else Path(root) / p)


def _subsample(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """A grade-stratified subsample that keeps the file's order (deterministic)."""
    rng = np.random.default_rng(0)
    share = n / len(table)
    keep = []
    for _, rows in table.groupby("grade", sort=True):
        k = max(1, int(round(len(rows) * share)))
        keep.extend(rng.choice(rows.index.to_numpy(), size=min(k, len(rows)), replace=False).tolist())
    return table.loc[sorted(keep)].reset_index(drop=True)


def _groups(table: pd.DataFrame) -> np.ndarray:
    """Duplicate groups merged with patients (within one dataset): connected components of both relations."""
    keys = [table[folds.GROUP_COLUMN].astype(str)]
    if "patient" in table.columns:
        has = table["patient"].notna()
        keys.append((table[DATASET_COLUMN].astype(str) + "/" + table["patient"].astype(str)).where(has))
    pairs = []
    for key in keys:
        for idx in pd.Series(np.arange(len(table))).groupby(key.to_numpy(), dropna=True).agg(list):
            pairs += [(idx[0], j) for j in idx[1:]]
    return folds.groups_from_pairs(len(table), pd.DataFrame(pairs, columns=["i", "j"], dtype="int64"))


def drop_cross_duplicates(table: pd.DataFrame, group_col: str = folds.GROUP_COLUMN
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped): external rows that share a duplicate group with a competition row go, so no
    validation (or held-out) image reaches training through external data. ``dropped`` names the match."""
    comp = table["role"] == "competition"
    comp_groups = table.loc[comp].groupby(group_col)["id"].agg(lambda s: ", ".join(map(str, s)))
    hit = (~comp) & table[group_col].isin(comp_groups.index)
    dropped = table.loc[hit, ["id", DATASET_COLUMN, "path", "grade", group_col]].copy()
    dropped["duplicate_of"] = dropped[group_col].map(comp_groups)
    return table.loc[~hit].reset_index(drop=True), dropped.reset_index(drop=True)


def _pretrain_split(table: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Grouped, stratified validation share of the external rows (False everywhere when fraction is 0)."""
    ext = (table["role"] == "external").to_numpy()
    val = np.zeros(len(table), dtype=bool)
    if not fraction or not ext.any():
        return val
    if not 0 < fraction < 0.5:
        raise ValueError(f"pretrain val_fraction must be in (0, 0.5), got {fraction}")
    sub = table.loc[ext]
    n_splits = max(2, int(round(1 / fraction)))
    split = folds.make_folds(sub, n_folds=n_splits, seed=seed, group_col=GROUP)
    val[np.flatnonzero(ext)] = split["fold"].to_numpy() == 0
    return val


_NOT_IN_TABLE = ("preprocess", "preprocessed", "weight", "rows")  # settings the table does not depend on


def _stamp(specs: list[SourceSpec], n_folds: int, seed: int, val_fraction: float) -> str:
    """What the table depends on; a changed label file (size, mtime) rebuilds it."""
    def stat(p: str) -> list[float]:
        st = os.stat(p)
        return [st.st_size, st.st_mtime_ns]

    key = {"specs": [{k: v for k, v in asdict(s).items() if k not in _NOT_IN_TABLE}
                     for s in specs],
           "csv": [stat(s.csv) for s in specs], "n_folds": n_folds, "seed": seed, "val_fraction": val_fraction,
           "version": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_table(specs: list[SourceSpec], table_dir: str | os.PathLike, n_folds: int = 5, seed: int = 0,
                val_fraction: float = 0.0, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """The chain's one table of every source (see the module docstring); reused when already built."""
    out = Path(table_dir)
    stamp = _stamp(specs, n_folds, seed, val_fraction)
    done = out / STAMP_FILE
    if done.is_file() and io.read_json(done).get("stamp") == stamp and (out / TABLE_FILE).is_file():
        return folds.read_folds(out / TABLE_FILE)
    table, skipped = load_specs(specs)
    io.write_csv(out / PROBLEMS_FILE, skipped)
    table = folds.add_duplicate_groups(table, workers=workers, progress=progress)
    table, dropped = drop_cross_duplicates(table)
    io.write_csv(out / DROPPED_FILE, dropped)
    table[GROUP] = _groups(table)
    comp_spec = competition(specs)
    comp = table[table["role"] == "competition"].reset_index(drop=True)
    ext = table[table["role"] == "external"].reset_index(drop=True)
    # duplicate groups alone, exactly as a one-source chain always did, unless patients are known
    gcol = GROUP if "patient" in comp.columns and comp["patient"].notna().any() else folds.GROUP_COLUMN
    if comp_spec.holdout:
        comp, test = folds.holdout_split(comp, comp_spec.holdout, seed=seed, group_col=gcol)
        io.write_csv(out / TEST_FILE, test[["id", "path", "grade"]])
    elif (out / TEST_FILE).exists():
        (out / TEST_FILE).unlink()
    comp = folds.make_folds(comp, n_folds=n_folds, seed=seed, group_col=gcol)
    table = pd.concat([comp, ext.assign(fold=-1)], ignore_index=True)
    table["pretrain_val"] = _pretrain_split(table, val_fraction, seed)
    folds.write_folds(table, out / TABLE_FILE)
    io.write_json(done, {"stamp": stamp, "rows": len(table), "dropped": len(dropped),
                         "by_dataset": table[DATASET_COLUMN].value_counts().sort_index().to_dict()})
    return folds.read_folds(out / TABLE_FILE)


def summary(table: pd.DataFrame, dropped: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows, grade counts and fold role per dataset (the preprocess notebook shows it)."""
    grades = pd.crosstab(table[DATASET_COLUMN], table["grade"]).add_prefix("grade_")
    out = table.groupby(DATASET_COLUMN).agg(role=("role", "first"), rows=("id", "size"),
                                            pretrain_val=("pretrain_val", "sum")).join(grades)
    if dropped is not None and len(dropped):
        out["dropped_duplicates"] = dropped.groupby(DATASET_COLUMN).size().reindex(out.index).fillna(0).astype(int)
    return out


# ------------------------------------------------------------------------------------------------ caches


def build_caches(table: pd.DataFrame, specs: list[SourceSpec], out_dir: str | os.PathLike,
                 base: dict[str, Any], workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Each source through its own recipe into ``out_dir/<name>/``; returns (and writes) the union manifest."""
    out = Path(out_dir)
    manifests = []
    for spec in specs:
        rows = table[table[DATASET_COLUMN] == spec.name]
        if rows.empty:
            continue
        sub = out / spec.name
        man = cache.build_cache(rows.drop(columns=["fold"]), sub, spec.recipe(base), workers=workers,
                                progress=progress)
        print(f"{spec.name}: {cache.summary_line(man, sub)}")
        man["cache_path"] = [f"{spec.name}/{p}" if p else "" for p in man["cache_path"]]
        manifests.append(man)
    union = pd.concat(manifests, ignore_index=True)
    io.write_json(out / cache.CONFIG, competition(specs).recipe(base).to_dict())
    io.write_csv(out / cache.MANIFEST, union)
    ok = set(union.loc[union["status"] == "ok", "id"])
    folds.write_folds(table[table["id"].isin(ok)], out / TABLE_FILE)
    return union


# ------------------------------------------------------------------------------------------------ stages


def stage_table(table: pd.DataFrame, stage: str = "finetune", datasets: list[str] | None = None) -> pd.DataFrame:
    """The rows one training stage sees, with the ``fold`` its Trainer splits on.

    ``pretrain``: external rows only (of ``datasets``, default all), ``fold`` 0 = the pre-training validation
    share, 1 = training; competition rows never appear, so stage 1 cannot see a validation image.
    ``finetune``: the competition rows with their folds, plus the external rows of ``datasets`` (default
    none) as ``fold = -1`` (train in every fold, never validate).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; expected one of {STAGES}")
    if "role" not in table.columns:  # a single-source cache from before multi-source chains
        return table
    ext = table["role"] == "external"
    known = set(table.loc[ext, DATASET_COLUMN])
    unknown = sorted(set(datasets or ()) - known)
    if unknown:
        raise ValueError(f"{stage}: no external rows from dataset(s) {unknown}; external datasets here: "
                         f"{sorted(known)}")
    chosen = ext & (table[DATASET_COLUMN].isin(datasets) if datasets is not None else (stage == "pretrain"))
    if stage == "pretrain":
        rows = table[chosen].copy()
        if rows.empty:
            raise ValueError("pretrain: no external rows to pre-train on; add a source with role: external")
        rows["fold"] = np.where(rows["pretrain_val"].astype(bool), 0, 1)
        return rows.reset_index(drop=True)
    return table[~ext | chosen].reset_index(drop=True)  # external rows carry fold -1 already
