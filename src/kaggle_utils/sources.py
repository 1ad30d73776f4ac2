"""Label sources (APTOS, EyePACS, IDRiD, Messidor-2, any CSV) -> one table.

Every loader returns a DataFrame with ``id`` (str), ``path`` (str, absolute), ``grade`` (Int64), ``source``
(str), then the CSV's other columns. ``grade`` may be <NA> only when the file has no labels at all (a test
split). Rows are validated so a bad row never reaches training silently:

* ``on_error="raise"`` (default): :class:`SourceError` listing every bad row (CSV line, id, reason).
* ``on_error="skip"``: bad rows are dropped and a one-line summary is warned (:class:`SourceWarning`).

The report (one row per problem: source, row, id, kind, reason) comes back with ``return_report=True``, so the
return type never depends on ``on_error``. :func:`validate` runs the same checks on any table.
Reports are not stored in ``DataFrame.attrs``: a DataFrame there breaks ``pd.concat`` of the tables.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

CORE_COLUMNS = ("id", "path", "grade", "source")
REPORT_COLUMNS = ("source", "row", "id", "kind", "reason")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_LISTED = 20  # bad rows spelled out in a SourceError; the rest are counted

OnError = Literal["raise", "skip"]
# A table, or (table, report) when return_report=True.
LoadResult = pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]


class SourceError(ValueError):
    """A label file or image folder that cannot be used as is; ``.report`` holds the offending rows."""

    def __init__(self, message: str, report: pd.DataFrame | None = None):
        super().__init__(message)
        self.report = report if report is not None else _empty_report()


class SourceWarning(UserWarning):
    """Rows were dropped under ``on_error="skip"``."""


# --------------------------------------------------------------------------------------------- loaders


def load_aptos(
    csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    ext: str | None = ".png",
    *,
    on_error: OnError = "raise",
    return_report: bool = False,
) -> LoadResult:
    """APTOS 2019 ``train.csv`` (``id_code,diagnosis``) or ``test.csv`` (``id_code`` only: grades <NA>)."""
    df = _read_csv(csv, id_col="id_code", str_cols=("id_code", "diagnosis"))
    return _build(df, csv, image_dir, "aptos", "id_code", "diagnosis", None, ext, on_error, return_report)


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
    df = _read_csv(csv, id_col="image", str_cols=("image", "level"))
    parts = df["image"].astype(str).str.rsplit("_", n=1)
    df["patient"] = parts.str[0]
    df["eye"] = parts.str[1].where(parts.str.len() == 2)
    return _build(df, csv, image_dir, "eyepacs", "image", "level", None, ext, on_error, return_report)


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
    df = _read_csv(csv, str_cols=None)
    if "Image name" in df.columns:
        id_col, grade_col, dme_col = "Image name", "Retinopathy grade", "Risk of macular edema"
    elif "id_code" in df.columns:
        id_col, grade_col, dme_col = "id_code", "diagnosis", "dme_risk"
    else:
        raise SourceError(
            f"{csv}: not an IDRiD grading CSV (columns {list(df.columns)}); expected 'Image name, Retinopathy "
            "grade, Risk of macular edema' or 'id_code, diagnosis, dme_risk'"
        )
    _require(df, csv, [id_col, grade_col])
    if dme_col in df.columns:
        df[dme_col] = _to_int64(df[dme_col])
        df = df.rename(columns={dme_col: "dme_risk"})
    return _build(df, csv, image_dir, "idrid", id_col, grade_col, None, ext, on_error, return_report)


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
    df = _read_csv(csv, id_col="image_id", str_cols=("image_id", "adjudicated_dr_grade"))
    _require(df, csv, ["image_id", "adjudicated_dr_grade"])
    problems: dict[Any, list[tuple[str, str]]] = {}
    if "adjudicated_gradable" in df.columns:
        gradable = _to_int64(df["adjudicated_gradable"])
        for idx in df.index[(gradable == 0).fillna(False).to_numpy(bool)]:
            problems.setdefault(idx, []).append(("ungradable", "adjudicated_gradable is 0"))
        df["adjudicated_gradable"] = gradable
    if "adjudicated_dme" in df.columns:
        df["adjudicated_dme"] = _to_int64(df["adjudicated_dme"])
    df = df.rename(columns={"adjudicated_dme": "dme", "adjudicated_gradable": "gradable"})
    return _build(
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
    df = _read_csv(csv, id_col=id_col, str_cols=str_cols)
    _require(df, csv, list(str_cols))
    return _build(df, csv, image_dir, source, id_col, grade_col, path_col, ext, on_error, return_report)


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


# ------------------------------------------------------------------------------------------ validation


def validate(
    table: pd.DataFrame, on_error: OnError = "raise", *, what: str = "table"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check any table (empty ids, missing images, grades not integers 0-4, duplicate ids) -> (table, report).

    Report ``row`` values are the table's index labels (the loaders use CSV line numbers). The returned
    table has ``grade`` as Int64.
    """
    return _finish(table, _check(table, {}), on_error, what)


def _check(
    table: pd.DataFrame, problems: dict[Any, list[tuple[str, str]]], skip_path: Iterable[Any] = ()
) -> dict[Any, list[tuple[str, str]]]:
    """Add the generic problems to ``problems`` (index label -> [(kind, reason)]); rows in ``skip_path`` have
    had their image problem reported already."""
    missing = [c for c in CORE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; build it with a load_* function")
    problems = {k: list(v) for k, v in problems.items()}
    skip_path = set(skip_path)

    def add(idx: Any, kind: str, reason: str) -> None:
        problems.setdefault(idx, []).append((kind, reason))

    ids = table["id"]
    blank_id = (ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy(bool)
    for idx, blank, p in zip(table.index, blank_id, table["path"], strict=True):
        if blank:
            add(idx, "missing_id", "empty id")
        elif idx not in skip_path and not (isinstance(p, str) and os.path.isfile(p)):
            add(idx, "missing_image", f"image not found: {p}")

    grade = table["grade"]
    if grade.notna().any():  # a labelled table: every row needs a grade
        numeric = pd.to_numeric(grade, errors="coerce")
        bad = (grade.notna() & ~numeric.isin([0, 1, 2, 3, 4])).to_numpy(bool)
        for idx, is_bad, is_na in zip(table.index, bad, grade.isna().to_numpy(bool), strict=True):
            if is_bad:
                add(idx, "bad_grade", f"grade {grade[idx]!r} is not an integer 0-4")
            elif is_na and not any(k in ("bad_grade", "ungradable") for k, _ in problems.get(idx, [])):
                add(idx, "missing_grade", "empty grade in a labelled table")

    dup = ids.duplicated(keep=False).to_numpy(bool) & ~blank_id
    for _, grp in table.loc[dup].groupby("id", sort=False):
        grades = sorted({str(g) for g in grp["grade"].dropna()})
        if len(grades) > 1:
            for idx in grp.index:
                add(
                    idx,
                    "duplicate_id",
                    f"id repeated with conflicting grades {grades} (rows {list(grp.index)})",
                )
        else:
            for idx in grp.index[1:]:
                add(idx, "duplicate_id", f"id repeated (first at row {grp.index[0]})")
    return problems


def _finish(
    table: pd.DataFrame,
    problems: dict[Any, list[tuple[str, str]]],
    on_error: OnError,
    what: str,
    stacklevel: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raise, or drop + warn; never silent."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    report = _report(table, problems)
    if not report.empty:
        if on_error == "raise":
            raise SourceError(_format_error(report, what, len(table)), report)
        bad_rows = report["row"].unique()
        kinds = report.drop_duplicates(["row", "kind"])["kind"].value_counts()
        warnings.warn(
            f"{what}: skipped {len(bad_rows)} of {len(table)} rows "
            f"({', '.join(f'{k}: {n}' for k, n in kinds.items())}); pass return_report=True for the list",
            SourceWarning,
            stacklevel=stacklevel,
        )
        table = table.drop(index=bad_rows)
    table = table.copy()
    table["grade"] = pd.to_numeric(table["grade"], errors="coerce").astype("Int64")
    return table, report


def _report(table: pd.DataFrame, problems: dict[Any, list[tuple[str, str]]]) -> pd.DataFrame:
    order = {idx: i for i, idx in enumerate(table.index)}
    rows = [
        (
            table.at[idx, "source"] if "source" in table.columns else None,
            idx,
            table.at[idx, "id"],
            kind,
            reason,
        )
        for idx in sorted(problems, key=lambda i: order.get(i, -1))
        for kind, reason in problems[idx]
    ]
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS)) if rows else _empty_report()


def _empty_report() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})


def _format_error(report: pd.DataFrame, what: str, n_rows: int) -> str:
    n_bad = report["row"].nunique()
    lines = [f"  row {r.row} id={r.id!r}: {r.reason}" for r in report.head(MAX_LISTED).itertuples()]
    more = len(report) - MAX_LISTED
    return (
        f"{what}: {n_bad} bad row(s) of {n_rows} ({len(report)} problem(s)):\n"
        + "\n".join(lines)
        + (f"\n  ... and {more} more problem(s)" if more > 0 else "")
        + "\nFix the CSV or the image folder, or pass on_error='skip' to drop these rows."
    )


# ------------------------------------------------------------------------------------------- internals


def _read_csv(
    csv: str | os.PathLike, id_col: str | None = None, str_cols: Iterable[str] | None = ()
) -> pd.DataFrame:
    """Read with ids/grades/paths as text (hex ids like '12e4' must not become floats), strip header spaces,
    drop all-empty columns and rows (the official IDRiD file has both); index = CSV line number."""
    path = Path(csv).expanduser()
    if not path.is_file():
        raise SourceError(f"label file not found: {path}")
    dtype: Any = str if str_cols is None else {c: str for c in str_cols}
    try:
        df = pd.read_csv(path, dtype=dtype, skipinitialspace=True, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{path}: cannot parse CSV ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    df = df.dropna(axis=1, how="all").dropna(axis=0, how="all")
    df = df.loc[:, [not c.startswith("Unnamed:") or df[c].notna().any() for c in df.columns]]
    df.index = df.index + 2  # header is line 1
    if id_col is not None:
        _require(df, path, [id_col])
    for c in df.columns:
        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]):
            df[c] = df[c].str.strip()
    return df


def _require(df: pd.DataFrame, csv: Any, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SourceError(f"{csv}: missing column(s) {missing}; found {list(df.columns)}")


def _to_int64(values: pd.Series) -> pd.Series:
    """Lenient numeric -> Int64 for side columns (dme, gradable); non-integers become <NA>."""
    num = pd.to_numeric(values, errors="coerce")
    num = num.where(np.isfinite(num) & (num % 1 == 0))
    return num.astype("Int64")


def _parse_grades(values: pd.Series | None, index: pd.Index) -> tuple[pd.Series, dict[Any, list]]:
    """Strict: '2' and '2.0' are grade 2; '2.5', '7', 'x' are reported, never rounded or coerced."""
    out = pd.Series(pd.NA, index=index, dtype="Int64")
    problems: dict[Any, list[tuple[str, str]]] = {}
    if values is None:
        return out, problems
    text = values.astype("string").str.strip()
    blank = text.isna() | (text == "")
    num = pd.to_numeric(text.where(~blank), errors="coerce").astype("Float64")
    ok = num.isin([0, 1, 2, 3, 4]).fillna(False) & ~blank
    for idx in index[(~ok & ~blank).to_numpy(bool)]:
        problems[idx] = [("bad_grade", f"grade {values[idx]!r} is not an integer 0-4")]
    out[ok.to_numpy(bool)] = num[ok].astype("Int64")
    return out, problems


class _ImageIndex:
    """One listing of ``image_dir``: 88k EyePACS rows cost one ``listdir``; case/extension mismatches resolve."""

    def __init__(self, image_dir: str | os.PathLike):
        self.dir = Path(os.path.abspath(Path(image_dir).expanduser()))  # absolute; symlinks kept
        if not self.dir.is_dir():
            raise SourceError(f"image folder not found: {self.dir}")
        names = sorted(os.listdir(self.dir))
        self.exact = set(names)
        self.lower: dict[str, str] = {}
        self.stems: dict[str, list[str]] = {}
        for n in names:
            self.lower.setdefault(n.lower(), n)
            stem, suffix = os.path.splitext(n)
            if suffix.lower() in IMAGE_EXTS:
                self.stems.setdefault(stem.lower(), []).append(n)

    def _find(self, name: str) -> str | None:
        if name in self.exact:
            return name
        return self.lower.get(name.lower())

    def resolve(self, name: str, ext: str | None) -> tuple[str, tuple[str, str] | None]:
        """(absolute path, problem or None); the path is the expected location when the file is missing."""
        if ext:
            ext = ext if ext.startswith(".") else "." + ext
            hit = self._find(name + ext) or self._find(name)
            return str(self.dir / (hit or name + ext)), None
        hit = self._find(name) if os.path.splitext(name)[1].lower() in IMAGE_EXTS else None
        if hit:
            return str(self.dir / hit), None
        cands = self.stems.get(name.lower(), [])
        if len(cands) == 1:
            return str(self.dir / cands[0]), None
        if len(cands) > 1:
            return str(self.dir / name), ("ambiguous_image", f"several images match: {', '.join(cands)}")
        return str(self.dir / name), ("missing_image", f"no image named {name}.* in {self.dir}")


def _build(
    df: pd.DataFrame,
    csv: Any,
    image_dir: str | os.PathLike,
    source: str,
    id_col: str,
    grade_col: str | None,
    path_col: str | None,
    ext: str | None,
    on_error: OnError,
    return_report: bool,
    problems: dict[Any, list[tuple[str, str]]] | None = None,
) -> LoadResult:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    problems = dict(problems or {})
    index = _ImageIndex(image_dir)
    ids = df[id_col].astype("string").str.strip().fillna("")
    grade, grade_problems = _parse_grades(df[grade_col] if grade_col in df.columns else None, df.index)
    for idx, p in grade_problems.items():
        problems.setdefault(idx, []).extend(p)

    paths = []
    for idx in df.index:
        if path_col is not None:
            rel = df.at[idx, path_col]
            p = str(rel) if isinstance(rel, str) and rel else ""
            paths.append(os.path.normpath(index.dir / p) if p else "")
            if not p:
                problems.setdefault(idx, []).append(("missing_image", f"empty {path_col!r}"))
            continue
        path, problem = index.resolve(ids[idx], ext) if ids[idx] else ("", None)
        paths.append(path)
        if problem:
            problems.setdefault(idx, []).append(problem)

    used = {id_col, grade_col, path_col} - {None}
    extras = df.drop(columns=[c for c in df.columns if c in used])
    extras = extras.rename(columns={c: f"csv_{c}" for c in extras.columns if c in CORE_COLUMNS})
    table = pd.concat(
        [
            pd.DataFrame(
                {"id": ids.astype(str), "path": paths, "grade": grade, "source": source}, index=df.index
            ),
            extras,
        ],
        axis=1,
    )
    skip_path = [i for i, ps in problems.items() if any(k.endswith("_image") for k, _ in ps)]
    problems = _check(table, problems, skip_path)
    table, report = _finish(table, problems, on_error, f"{source} labels {csv}", stacklevel=4)
    table = table.reset_index(drop=True)
    return (table, report) if return_report else table


def test_table(test_csv: str | os.PathLike, test_images: str | os.PathLike | None = None,
               ext: str = ".png", id_col: str = "id_code", allow_empty: bool = False) -> pd.DataFrame:
    """``id, path`` for every row of the test CSV, in its order: a Kaggle ``test.csv`` (``id_code``) plus an
    image folder, or (``test_images=None``) a table that already has ``id, path``. Missing files stay in:
    they fail to load and get a fallback grade, so the submission still covers every id.

    Ids are text exactly as written (``NA``, ``null``, ``nan`` and ``0001`` are ids, not missing values or
    numbers). A repeated or blank id is a :class:`SourceError` naming them, raised here, before hours of
    inference, because a submission needs one row per id. A header-only file is a SourceError too (a wrong
    file, not a Kaggle test set; blending has nothing to fit thresholds against), or with ``allow_empty`` an
    empty table, which :func:`kaggle_utils.infer.infer` turns into header-only prediction files.
    """
    path = Path(test_csv)
    if not path.is_file():
        raise SourceError(f"test CSV not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
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
    return pd.DataFrame({"id": ids, "path": [str(Path(test_images) / f"{i}{ext}") for i in ids]},
                        dtype=object)
