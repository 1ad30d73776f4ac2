"""Label sources (APTOS, EyePACS, IDRiD, Messidor-2, any CSV) -> one table.

Every loader returns a DataFrame with ``id`` (str), ``path`` (str, absolute), ``grade`` (Int64), ``source``
(str), then the CSV's other columns. ``grade`` may be <NA> only when the file has no labels at all (a test
split). Rows are validated so a bad row never reaches training silently:

* ``on_error="raise"`` (default): :class:`SourceError` listing every bad row (CSV line, id, reason).
* ``on_error="skip"``: bad rows are dropped and a one-line summary is warned (:class:`SourceWarning`).

The report (one row per problem: source, row, id, kind, reason) comes back with ``return_report=True``, so the
return type never depends on ``on_error``. :func:`~kaggle_utils.data.labels.validate` runs the same checks on any table.
Reports are not stored in ``DataFrame.attrs``: a DataFrame there breaks ``pd.concat`` of the tables.

The row checks, CSV parsing and image lookup live in :mod:`kaggle_utils.data.labels`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from kaggle_utils import io
from kaggle_utils.data.labels import (
    CORE_COLUMNS,
    MAX_LISTED,
    LoadResult,
    OnError,
    SourceError,
    build_source_table,
    read_label_csv,
    require_columns,
    to_int64,
)


def load_aptos(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    ext: str | None = ".png",
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
) -> LoadResult:
    """APTOS 2019 ``train.csv`` (``id_code,diagnosis``) or ``test.csv`` (``id_code`` only: grades <NA>)."""
    df = read_label_csv(csv, id_col="id_code", str_cols=("id_code", "diagnosis"))
    return build_source_table(df, csv, image_dir, "aptos", "id_code", "diagnosis", None, ext, on_error, return_report)


def load_eyepacs(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    ext: str | None = ".jpeg",
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
) -> LoadResult:
    """Kaggle DR 2015 ``trainLabels.csv`` (``image,level``).

    Adds ``patient`` and ``eye`` parsed from ids like ``10_left``: both eyes of a patient are correlated, so
    folds should group on ``patient`` (``make_folds(..., group_col="patient")``).
    """
    df = read_label_csv(csv, id_col="image", str_cols=("image", "level"))
    parts = df["image"].astype(str).str.rsplit("_", n=1)
    df["patient"] = parts.str[0]
    df["eye"] = parts.str[1].where(parts.str.len() == 2)
    return build_source_table(df, csv, image_dir, "eyepacs", "image", "level", None, ext, on_error, return_report)


def load_idrid(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    ext: str | None = ".jpg",
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
) -> LoadResult:
    """IDRiD disease-grading CSV, official or our shared copy; adds ``dme_risk`` (Int64, 0-2).

    Official: ``Image name,Retinopathy grade,Risk of macular edema `` (trailing space, sometimes empty
    trailing columns/rows). Shared copy: ``id_code,diagnosis,dme_risk``. The format is detected from headers.
    """
    df = read_label_csv(csv, str_cols=None)
    if "Image name" in df.columns:
        id_col, grade_col, dme_col = "Image name", "Retinopathy grade", "Risk of macular edema"
    elif "id_code" in df.columns:
        id_col, grade_col, dme_col = "id_code", "diagnosis", "dme_risk"
    else:
        raise SourceError(
            f"{csv}: not an IDRiD grading CSV (columns {list(df.columns)}); expected 'Image name, Retinopathy "
            "grade, Risk of macular edema' or 'id_code, diagnosis, dme_risk'"
        )
    require_columns(df, csv, [id_col, grade_col])
    if dme_col in df.columns:
        df[dme_col] = to_int64(df[dme_col])
        df = df.rename(columns={dme_col: "dme_risk"})
    return build_source_table(df, csv, image_dir, "idrid", id_col, grade_col, None, ext, on_error, return_report)


def load_messidor(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    ext: str | None = None,
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
) -> LoadResult:
    """Messidor-2 adjudicated grades (``image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable``).

    Ids carry their extension (matched case-insensitively: the files are ``.JPG``/``.png``). Ungradable rows
    are reported (kind ``ungradable``), so they are dropped under ``on_error="skip"``. Adds ``dme`` (Int64).
    ``ext`` is only for copies whose ids lost the extension (e.g. converted to ``.png``).
    """
    df = read_label_csv(csv, id_col="image_id", str_cols=("image_id", "adjudicated_dr_grade"))
    require_columns(df, csv, ["image_id", "adjudicated_dr_grade"])
    problems: dict[Any, list[tuple[str, str]]] = {}
    if "adjudicated_gradable" in df.columns:
        gradable = to_int64(df["adjudicated_gradable"])
        for idx in df.index[(gradable == 0).fillna(False).to_numpy(bool)]:
            problems.setdefault(idx, []).append(("ungradable", "adjudicated_gradable is 0"))
        df["adjudicated_gradable"] = gradable
    if "adjudicated_dme" in df.columns:
        df["adjudicated_dme"] = to_int64(df["adjudicated_dme"])
    df = df.rename(columns={"adjudicated_dme": "dme", "adjudicated_gradable": "gradable"})
    return build_source_table(
        df,
        csv,
        image_dir,
        "messidor",
        "image_id",
        "adjudicated_dr_grade",
        None,
        ext,
        on_error,
        return_report,
        problems=problems,
    )


def load_generic(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    id_col: str,
    grade_col: str | None = None,
    path_col: str | None = None,
    ext: str | None = None,
    source: str = "generic",
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
) -> LoadResult:
    """Any CSV with an id column. The image is ``path_col`` (relative to ``image_dir`` or absolute) if given,
    else ``<id><ext>``; with ``ext=None`` the id is matched against files of any common image extension
    (an id that already names a file, extension included, is used as is). No ``grade_col``: grades <NA>."""
    str_cols = tuple(c for c in (id_col, grade_col, path_col) if c)
    df = read_label_csv(csv, id_col=id_col, str_cols=str_cols)
    require_columns(df, csv, list(str_cols))
    return build_source_table(df, csv, image_dir, source, id_col, grade_col, path_col, ext, on_error, return_report)


LOADERS: dict[str, Callable[..., Any]] = {
    "aptos": load_aptos,
    "eyepacs": load_eyepacs,
    "idrid": load_idrid,
    "messidor": load_messidor,
    "generic": load_generic,
}


def load_source(kind: str, csv: str | os.PathLike, image_dir: str | os.PathLike, **kw: Any) -> LoadResult:
    """Dispatch on ``kind`` (aptos|eyepacs|idrid|messidor|generic), e.g. from a YAML config."""
    try:
        loader = LOADERS[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {sorted(LOADERS)}") from None
    return loader(csv, image_dir, **kw)


def combine(
    tables: Iterable[pd.DataFrame], on_duplicate: Literal["raise", "prefix"] = "raise"
) -> pd.DataFrame:
    """Concatenate source tables: core columns first, then the union of extra columns (missing -> NA).

    Ids must stay unique because they name cached files and fold rows. An id found in two tables raises
    :class:`SourceError` by default; ``on_duplicate="prefix"`` instead prefixes *every* id with
    ``"<source>_"`` (not only the colliding ones, so an image's id never depends on what it was combined
    with). Ids still colliding after that (the same source twice) always raise.
    """
    tables = list(tables)
    if not tables:
        raise ValueError("combine() needs at least one table")
    for i, t in enumerate(tables):
        missing = [c for c in CORE_COLUMNS if c not in t.columns]
        if missing:
            raise ValueError(f"table {i} lacks columns {missing}; build tables with the load_* functions")
    if on_duplicate not in ("raise", "prefix"):
        raise ValueError(f"on_duplicate must be 'raise' or 'prefix', not {on_duplicate!r}")
    if on_duplicate == "prefix":
        tables = [t.assign(id=t["source"].astype(str) + "_" + t["id"].astype(str)) for t in tables]
    out = pd.concat([t.reset_index(drop=True) for t in tables], ignore_index=True, sort=False)
    extras = [c for c in out.columns if c not in CORE_COLUMNS]
    out = out[list(CORE_COLUMNS) + extras]
    out["grade"] = out["grade"].astype("Int64")
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        where = out.loc[dup].groupby("id", sort=True)["source"].agg(lambda s: ", ".join(map(str, s)))
        listed = [f"  id={i!r} in {s}" for i, s in where.head(MAX_LISTED).items()]
        more = len(where) - MAX_LISTED
        raise SourceError(
            f"combine(): {len(where)} id(s) occur in more than one table:\n"
            + "\n".join(listed)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nPass on_duplicate='prefix' (ids become '<source>_<id>') or give the tables distinct sources."
        )
    return out


def test_table(test_csv: str | os.PathLike, test_images: str | os.PathLike | None = None,
               ext: str = ".png", id_col: str = "id_code", allow_empty: bool = False) -> pd.DataFrame:
    """``id, path`` for every row of the test CSV, in its order: a Kaggle ``test.csv`` (``id_code``) plus an
    image folder, or (``test_images=None``) a table that already has ``id, path``. Missing files stay in:
    they fail to load and get a fallback grade, so the submission still covers every id.

    Ids are text exactly as written (``NA``, ``null``, ``nan`` and ``0001`` are ids, not missing values or
    numbers). A repeated or blank id is a :class:`SourceError` naming them, raised here, before hours of
    inference, because a submission needs one row per id. A header-only file is a SourceError too (a wrong
    file, not a Kaggle test set; blending has nothing to fit thresholds against), or with ``allow_empty`` an
    empty table, which :func:`kaggle_utils.inference.predict.infer` turns into header-only prediction files.
    """
    path = Path(test_csv)
    if not path.is_file():
        raise SourceError(f"test CSV not found: {path}")
    try:
        df = io.read_csv(path, text=None, na_filter=False)
    except pd.errors.EmptyDataError:
        raise SourceError(f"{path} is empty (not even a header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot parse CSV ({err})") from err
    df.columns = [str(c).strip() for c in df.columns]
    if test_images is None:
        if not {"id", "path"} <= set(df.columns):
            raise SourceError(f"{path} needs id,path columns (or pass test_images); columns: {list(df.columns)}")
        col = "id"
    elif id_col not in df.columns:
        raise SourceError(f"{path} has no {id_col!r} column; columns: {list(df.columns)}")
    else:
        col = id_col
    ids = df[col].astype(str).str.strip()
    blank = [int(i) + 2 for i in np.flatnonzero((ids == "").to_numpy())]
    if blank:
        raise SourceError(f"{path}: {len(blank)} row(s) without an {col!r}, at CSV line(s) {blank[:MAX_LISTED]}")
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):
        counts = repeated.value_counts(sort=False)
        listed = ", ".join(f"{i!r} x{n}" for i, n in list(counts.items())[:MAX_LISTED])
        more = f" and {len(counts) - MAX_LISTED} more" if len(counts) > MAX_LISTED else ""
        raise SourceError(f"{path}: {len(counts)} id(s) repeat ({listed}{more}); a submission needs one row "
                          "per id: remove the repeats")
    if ids.empty and not allow_empty:
        raise SourceError(f"{path} lists no test images (only a header row); nothing to predict or submit")
    if test_images is None:
        return df.assign(id=ids).reset_index(drop=True)
    wrong = extension_mismatch(ids, test_images, ext)
    if wrong:
        raise SourceError(wrong)
    return pd.DataFrame({"id": ids, "path": [str(Path(test_images) / f"{i}{ext}") for i in ids]},
                        dtype=object)


def extension_mismatch(ids: Iterable[str], test_images: str | os.PathLike, ext: str) -> str | None:
    """A message when no test id has an ``ext`` file in ``test_images`` but some have a file with another
    extension (a config saying ``.png`` over ``.jpeg`` images): without it every image would "fail to load"
    and the submission would be all fallback grades. None when the extension fits or nothing is there."""
    folder = Path(test_images)
    if not folder.is_dir():
        return None
    suffixes: dict[str, list[str]] = {}
    for name in os.listdir(folder):
        stem, suffix = os.path.splitext(name)
        suffixes.setdefault(stem, []).append(suffix)
    ids = list(ids)
    found = [s for i in ids for s in suffixes.get(i, ())]
    if not found or ext in found:
        return None
    other = max(set(found), key=found.count)
    return (f"test images: none of the {len(ids)} test ids has a {ext} file in {folder}, but "
            f"{found.count(other)} have a {other} file: set the test extension to {other!r} (the config's "
            f"'test: {{ext: {other}}}', or test_ext)")
