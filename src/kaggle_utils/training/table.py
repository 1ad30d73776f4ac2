"""Which rows a fold trains and validates on: the cache or table, its folds, and the rows' fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from kaggle_utils import io
from kaggle_utils.training.config import TrainConfig


def rows_fingerprint(*tables: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for t in tables:
        h.update(pd.util.hash_pandas_object(t[["id", "grade"]].astype(str), index=False).values.tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def load_table(cfg: TrainConfig, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The labelled table with ``id, grade, fold`` and an image path column.

    A ``table`` passed in that already has a ``fold`` column is taken as is (e.g. load_table's output plus extra
    rows with fold -1, which train in every fold and never validate); otherwise folds come from ``folds_csv``.
    """
    given_folds = table is not None and "fold" in table.columns
    if table is None:
        if cfg.cache_dir:
            from kaggle_utils.data.cache import load_cache

            table = load_cache(cfg.cache_dir)
        elif cfg.table_csv:
            if not Path(cfg.table_csv).is_file():
                raise FileNotFoundError(f"table_csv {cfg.table_csv} not found")
            table = io.read_csv(cfg.table_csv)
            missing = [c for c in ("id", "path", "grade") if c not in table.columns]
            if missing:
                hint = (" (an APTOS train.csv: run `python -m kaggle_utils.data --source aptos --csv train.csv "
                        "--images train_images --out CACHE --folds 5` and set cache_dir/folds_csv instead)"
                        if {"id_code", "diagnosis"} <= set(table.columns) else "")
                raise ValueError(f"table_csv {cfg.table_csv} lacks column(s) {missing}; needs id, path, grade"
                                 f"[, fold]{hint}")
            root = Path(cfg.table_csv).resolve().parent
            table["path"] = [str(p if Path(p).is_absolute() else root / p) for p in table["path"]]
        else:
            raise ValueError("no data: set TrainConfig.cache_dir or table_csv, or pass table= to train_fold")
    table = table.copy()
    missing = [c for c in ("id", "grade") if c not in table.columns]
    if missing:
        raise KeyError(f"training table lacks column(s) {missing}; columns: {list(table.columns)}")
    table["id"] = table["id"].astype(str)
    if cfg.folds_csv and not given_folds:
        from kaggle_utils.data.folds import read_folds

        folds = read_folds(cfg.folds_csv)[["id", "fold"]]
        table = table.drop(columns=["fold"], errors="ignore").merge(folds, on="id", how="left")
        if table["fold"].isna().any():
            ids = table.loc[table["fold"].isna(), "id"].head(5).tolist()
            raise ValueError(f"{cfg.folds_csv} has no fold for ids {ids}...; rebuild the folds file")
    elif "fold" not in table.columns:
        if not cfg.n_folds:
            raise ValueError("table has no 'fold' column: set TrainConfig.folds_csv or n_folds")
        from kaggle_utils.data.folds import GROUP_COLUMN, make_folds

        group = GROUP_COLUMN if GROUP_COLUMN in table.columns else None  # duplicate groups when known
        table = make_folds(table, n_folds=cfg.n_folds, seed=cfg.seed, group_col=group)
    table = table[pd.to_numeric(table["grade"], errors="coerce").notna()].reset_index(drop=True)
    table["fold"] = table["fold"].astype(int)
    return table


def split_fold(table: pd.DataFrame, fold: int, allow_no_val: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) rows; ``allow_no_val``: a run with no validation (pre-training on all external rows)
    keeps its last epoch as best."""
    val = table[table["fold"] == fold].reset_index(drop=True)
    train = table[table["fold"] != fold].reset_index(drop=True)
    if train.empty or (val.empty and not allow_no_val):
        raise ValueError(f"fold {fold} leaves {len(train)} train / {len(val)} validation rows; folds present: "
                         f"{sorted(table['fold'].unique().tolist())}")
    return train, val
